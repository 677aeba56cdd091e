"""The command line of one run: `python -m isda_exp` / `isda-train` (train.py)."""
