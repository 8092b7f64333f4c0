"""Helpers shared by the detection and robustness suites: distributed set-up, result files, synthetic data."""
