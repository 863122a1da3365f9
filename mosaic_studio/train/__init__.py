"""MOSAIC training: synthetic data, trainer, evaluation."""
