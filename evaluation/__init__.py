"""Offline evaluation: replay real event logs through the core and score it against baselines."""
