"""Ground floor shared by every suite: distributed set-up, atomic result files, synthetic data."""
