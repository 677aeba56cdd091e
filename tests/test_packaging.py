"""A non-editable install carries the configs: the wheel alone runs the CLI from any directory."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_without_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("isda_exp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    repo_configs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert sorted(n.removeprefix("isda_exp/") for n in names if n.endswith(".yaml")) == repo_configs
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import isda_exp.cli.train as c; print(c.__file__); print(c.config_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(target)) for p in where), where
    proc = subprocess.run([sys.executable, "-m", "isda_exp", "model=wrn28_10", "--cfg", "job"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=True)
    assert "drop_rate: 0.3" in proc.stdout and "epochs: 240" in proc.stdout
    rm = subprocess.run([sys.executable, "-m", "isda_exp.models", "--help"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert rm.returncode == 0


def test_every_config_folder_is_a_listed_package():
    """An unlisted configs/ folder makes setuptools warn at install and may drop it from wheels."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"isda_exp." + ".".join(("configs", *p.relative_to(ROOT / "configs").parts))
               for p in (ROOT / "configs").rglob("*") if p.is_dir()} | {"isda_exp.configs"}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages"
