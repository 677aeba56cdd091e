"""Where the package finds its Hydra configs: the one lookup every entry point, the model zoo's
figures and the scripts share. Imports no Hydra app; asking registers the configs' own resolver
(the run directory's method part), so whoever composes the configs can resolve them."""
from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """configs/ ships inside the wheel (isda_exp/configs); an editable install uses the repo's."""
    from .rundir.identity import register_resolvers

    register_resolvers()
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"isda_exp configs not found beside {here}; reinstall the package")


def config_file(group: str, name: str) -> Path:
    """configs/<group>/<name>.yaml; FileNotFoundError naming the path when there is none."""
    path = Path(config_dir()) / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {group} config {name}.yaml: {path} does not exist")
    return path
