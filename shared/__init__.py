"""Helpers for the image-classification notebooks: data, augmentation, models, training,
evaluation, ensembles, plots and the batch runner. See the README for the data flow."""

__version__ = "0.1.0"
