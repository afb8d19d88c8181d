"""Studies: the trial engine and the studies of notebooks 05-09; 01's with/without comparison."""
