"""`codebrain-node phantom` writes a BraTS-layout case the training loaders read back."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from codebrain_node.cli import app
from codebrain_node.contrasts import Contrast
from training.datasets import find_cases


def test_phantom_command_writes_a_loadable_nifti_case(tmp_path: Path) -> None:
    args = ["phantom", "--out", str(tmp_path), "--contrasts", "T1,PD,FLAIR", "--format", "nifti"]
    result = CliRunner().invoke(app, [*args, "--seed", "5", "--resolution", "4", "--no-lesion", "--field", "1.5"])
    assert result.exit_code == 0, result.output
    (case,) = find_cases(tmp_path)
    assert set(case.paths) == {Contrast.T1, Contrast.PD, Contrast.FLAIR}
    meta = json.loads(next(tmp_path.rglob("*-sequences.json")).read_text())
    assert meta["seed"] == 5 and meta["sequences"]["FLAIR"]["field_strength"] == 1.5


def test_phantom_command_rejects_an_unknown_format(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["phantom", "--out", str(tmp_path), "--format", "png"])
    assert result.exit_code != 0
