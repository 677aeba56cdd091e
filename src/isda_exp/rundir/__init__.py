"""The run directory, a contract the report and explain build on: its files, written atomically
(files.py), the lock held by the process training it (lock.py) and the run's identity: its label
and science config (identity.py)."""
