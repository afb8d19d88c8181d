"""Evaluation: predict and score an experiment, calibration, test-time augmentation,
ensembles, explanations and conclusions."""
