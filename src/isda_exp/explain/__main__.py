"""`python -m isda_exp.explain`."""
import sys

from .cli import main

sys.exit(main())
