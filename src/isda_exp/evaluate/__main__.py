"""`python -m isda_exp.evaluate`."""
import sys

from .cli import main

sys.exit(main())
