"""Where the shared real data lives, and a small phantom for tests that must run without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from codebrain_node.phantom import PhantomCase, make_phantom_case
from codebrain_node.phantom.anatomy import load_mni152


def shared_data() -> Path:
    """``../shared/data`` beside the checkout, or ``$CODEBRAIN_SHARED_DATA``."""
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return Path(os.environ.get("CODEBRAIN_SHARED_DATA", default)).resolve()


@pytest.fixture(scope="session")
def native_dir() -> Path:
    folder = shared_data() / "TCGA-FG-6692-native"
    if not (folder / "t1n.nii.gz").exists():
        pytest.skip(f"shared data absent: {folder} not found (set CODEBRAIN_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def small_case() -> PhantomCase:
    return make_phantom_case(seed=5, anatomy=load_mni152().downsampled(2), resolution_mm=2.0)
