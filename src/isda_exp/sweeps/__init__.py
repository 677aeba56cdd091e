"""Sweeps of runs: what a sweep would launch and its cost (plan.py), and the hold-out search of a
hyper-parameter (search.py)."""
