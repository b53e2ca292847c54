"""Evaluation of frozen encoders: feature extraction and probes."""
