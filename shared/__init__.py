"""Helpers for the image-classification notebooks: data, augmentation, models, training,
evaluation, ensembles, plots and the batch runner. The tree and its layers: docs/development.md."""

__version__ = "0.1.0"
