"""MOSAIC correspondence annotation: proposal, review store, verification."""
