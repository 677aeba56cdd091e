"""`python -m isda_exp.report`."""
import sys

from .cli import main

sys.exit(main())
