"""The wheel carries every package and every file the program reads at run time."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from codebrain_node import resources

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("codebrain_node", "training")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert {"codebrain_node.configs", "codebrain_node.weights", "codebrain_node_migrations"} <= listed


def test_runtime_files_are_found_through_the_package() -> None:
    assert (resources.config_file("node.toml")).is_file()
    assert (resources.config_file("classify.toml")).is_file()
    assert (resources.migrations_dir() / "versions").is_dir()
    assert (resources.weights_dir() / "SHA256SUMS").is_file()
    assert resources.model_config_file("small").name == "small.toml"


def test_an_unknown_model_config_names_the_shipped_ones() -> None:
    with pytest.raises(FileNotFoundError, match=r"one of \[.*'paper'.*'small'"):
        resources.model_config_file("no-such-model")
