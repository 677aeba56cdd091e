"""isda-exp: reproduce and extend the CIFAR results of Implicit Semantic Data Augmentation."""

__version__ = "0.1.0"


def _quiet_ctrl_c() -> None:
    """`python -m isda_exp...`: Ctrl-C before a run's own handlers are in place (while torch and
    Hydra load, between the jobs of a sweep) ends at once with one line and status 130. Nothing
    is being written then, and an interrupted import would print a long traceback or leave a
    half-imported module that fails later. preempt.catch_signals takes over during a run."""
    import os
    import signal
    import sys

    if sys.argv[:1] != ["-m"] or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # imported by another program, or Ctrl-C is already someone else's

    def stop(signum, frame):
        os.write(2, b"error: interrupted; run the same command again (a started run resumes "
                    b"from its last checkpoint)\n")
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


_quiet_ctrl_c()


def _register_resolvers() -> None:
    """${method_dir:isda_name,model,drop_rate}: the run directory's method part (identity.dir_label)."""
    from omegaconf import OmegaConf

    from .rundir.identity import dir_label

    if not OmegaConf.has_resolver("method_dir"):
        OmegaConf.register_new_resolver("method_dir", dir_label)


_register_resolvers()
