"""`python -m isda_exp`. Ctrl-C before a run's signal handlers are in place (while torch and Hydra
load, or between the jobs of a sweep) ends with one line and status 130, not a traceback."""
import sys

try:
    from .cli import main

    if __name__ == "__main__":
        main()
except KeyboardInterrupt:
    print("error: interrupted; run the same command again (a started run resumes from its last "
          "checkpoint)", file=sys.stderr)
    sys.exit(130)
