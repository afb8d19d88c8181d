"""Reporting: the figures, model cards and HTML pages of a run, drawn from its results files."""
