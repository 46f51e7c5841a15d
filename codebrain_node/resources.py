"""Where the files the program reads at run time are: inside the installed package, never beside a checkout.

``configs/``, ``weights/`` and ``alembic/`` sit at the top of the repository and ship in the wheel (pyproject's
``package-dir``) as ``codebrain_node.configs``, ``codebrain_node.weights`` and ``codebrain_node_migrations``;
an editable install maps the same names onto the checkout's folders. A file the user names (``--config``,
``model.weights``, ``routing.rules_file``) always takes precedence over these defaults.

The migrations are a namespace package of their own (no ``__init__.py``): a regular package called ``alembic`` at
the top of a checkout would shadow the Alembic library whenever the checkout is on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

CONFIGS_PACKAGE = "codebrain_node.configs"
WEIGHTS_PACKAGE = "codebrain_node.weights"
MIGRATIONS_PACKAGE = "codebrain_node_migrations"


def _on_disk(package: str) -> Path:
    """The folder of a shipped resource package; the node needs real paths (Alembic, SimpleITK, safetensors)."""
    root = files(package)
    if not isinstance(root, Path):
        raise RuntimeError(f"{package} is not installed as plain files (zipped installs are not supported)")
    return root


def configs_dir() -> Path:
    return _on_disk(CONFIGS_PACKAGE)


def config_file(*parts: str) -> Path:
    """A shipped configuration file, e.g. ``config_file("node.toml")`` or ``config_file("train", "tiny.toml")``."""
    return configs_dir().joinpath(*parts)


def weights_dir() -> Path:
    return _on_disk(WEIGHTS_PACKAGE)


def migrations_dir() -> Path:
    """Alembic's script folder (env.py, versions/).

    Found through the import system rather than ``importlib.resources.files``: on Python 3.11 the latter cannot
    open an editable install's namespace package (its search path holds a non-folder placeholder).
    """
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "env.py").is_file():
            return Path(location)
    raise RuntimeError(f"the database migrations ({MIGRATIONS_PACKAGE}) are missing: reinstall codebrain-node")


def named_config_file(folder: str, spec: str | Path) -> Path:
    """The one lookup of a shipped config by name (``model``/``small``, ``train``/``default``) or a TOML's path."""
    path = Path(spec)
    shipped = configs_dir() / folder / f"{spec}.toml"
    if not path.suffix and shipped.is_file():
        return shipped
    if path.is_file():
        return path
    known = sorted(p.stem for p in (configs_dir() / folder).glob("*.toml"))
    raise FileNotFoundError(f"{folder} config {str(spec)!r} not found (a TOML file or one of {known})")


def model_config_file(spec: str | Path) -> Path:
    """A model architecture: a shipped name (``small``, ``paper``…) or a TOML file's path."""
    return named_config_file("model", spec)


def train_config_file(spec: str | Path) -> Path:
    """A training recipe: a shipped name (``default``, ``cpu_brats``…) or a TOML file's path."""
    return named_config_file("train", spec)
