"""Small, fast phantom cases (2 mm anatomy, 2 mm voxels) shared by the phantom tests."""

from __future__ import annotations

import pytest

from codebrain_node.phantom import PhantomCase, make_phantom_case
from codebrain_node.phantom.anatomy import Anatomy, load_mni152


@pytest.fixture(scope="session")
def coarse_mni() -> Anatomy:
    return load_mni152().downsampled(2)


@pytest.fixture(scope="session")
def small_case(coarse_mni: Anatomy) -> PhantomCase:
    return make_phantom_case(seed=11, anatomy=coarse_mni, resolution_mm=2.0)
