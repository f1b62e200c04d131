"""Sweep configuration schema, Optuna search spaces and built-in sweeps."""
