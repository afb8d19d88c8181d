"""Serving a finished experiment: predictions for new images, export to other formats."""
