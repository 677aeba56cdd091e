"""Shared fixtures: the repo paths, the offline CIFAR copy (skipped cleanly when absent), the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def cifar_npz(config, tmp_path_factory, name: str) -> Path:
    """The real data set unpacked from ../shared/data once, into pytest's cache folder
    (.pytest_cache, ignored by git), keyed by the packed file's size and time: every later session
    and every pytest-xdist worker reads it from there (unpacking takes about 12 s), under a lock.
    With the cache off (-p no:cacheprovider) it goes to the session's temporary root instead."""
    import fcntl

    script = SHARED_DATA / "unpack_cifar.py"
    pack = SHARED_DATA / f"{name}.pack.npz"
    if not pack.is_file():
        pytest.skip(f"real {name} not available (no ../shared/data)")
    if getattr(config, "cache", None) is not None:
        root = config.cache.mkdir("cifar")
    else:  # the session's root, above each pytest-xdist worker's own folder
        root = tmp_path_factory.getbasetemp()
        root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    stat = pack.stat()
    out = root / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            part = root / f"{name}.part.npz"
            subprocess.run([sys.executable, str(script), name, str(part)], check=True)
            part.rename(out)
    return out


@pytest.fixture(scope="session")
def cifar10_npz(pytestconfig, tmp_path_factory) -> Path:
    return cifar_npz(pytestconfig, tmp_path_factory, "cifar10")


def free_port() -> int:
    """A TCP port free on the loopback now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(fn, args: tuple, nprocs: int = 2, join: bool = True):
    """torch.multiprocessing.spawn (fn(rank, *args); a rank's error is raised here), but the ranks
    are forked: each starts from this process's imports instead of importing torch, Hydra and the
    test module again (about 5 s of CPU a rank). Safe for these tests: every rank sets one torch
    thread first (as DataLoader's forked workers do) and the parent holds no process group."""
    import torch.multiprocessing as mp

    return mp.start_processes(fn, args=args, nprocs=nprocs, join=join, start_method="fork")


def run_cli(*overrides: str, cwd: Path, timeout: float = 600, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m isda_exp OVERRIDES...` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "isda_exp", *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"isda_exp failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until predicate() holds while `proc` still runs (it must not end first)."""
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended early ({proc.returncode}): {proc.communicate()}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs 2 workers on 2 cores) each worker computes on one
    thread, as the CLI runs the tests start do (OMP_NUM_THREADS=1): no oversubscribed cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort: each file's tests stay in order), so pytest-xdist hands
    out the files that hold the long tests first and the many short ones fill the workers' ends,
    instead of a long test starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def cli_here(tmp_path, monkeypatch, capsys):
    """`python -m isda_exp ARGS` run in this process from tmp_path, as run_cli's result: the same
    entry (cli.main: the command's checks, then Hydra), without starting an interpreter (torch
    alone takes seconds to import). For what is not about the process boundary; the root logger
    gets its handlers back afterwards (Hydra's job logging replaces them). As run_cli, a non-zero
    exit fails the test unless check=False."""
    import logging

    from isda_exp.cli.train import main

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        handlers, level = root.handlers[:], root.level
        monkeypatch.setattr(sys, "argv", ["isda_exp", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        finally:
            for h in root.handlers:
                if h not in handlers:
                    h.close()
            root.handlers[:] = handlers
            root.setLevel(level)
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"isda_exp failed ({code}):\n{out}\n{err}")
        return subprocess.CompletedProcess(list(args), code, out, err)
    return call
