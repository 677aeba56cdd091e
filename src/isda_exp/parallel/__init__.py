"""Where a run computes and how it spreads over processes: the device (device.py), which launch
started this process (launch.py, no torch), the ranks of one run under DDP (distributed.py) and
BatchNorm over them on CPUs (sync_batchnorm.py). Names load on first use, so asking `launch`
whether there are ranks to join imports no torch."""
import importlib

_EXPORTS = {"environment": "launch", "resolve_device": "device", "device_name": "device",
            "world": "distributed", "rank": "distributed", "is_main": "distributed",
            "sync_batchnorm": "sync_batchnorm"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
