"""Running the notebooks: the papermill runner, their order and staleness, the run lock, pruning."""
