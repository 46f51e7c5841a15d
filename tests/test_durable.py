"""The one durable write: whole files under their final name, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from codebrain_node.durable import durable_file, make_dirs_durably, write_durably


def test_write_durably_creates_folders_and_joins_parts(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b" / "file.bin"
    size = write_durably(final, (b"head", b"", b"body"))
    assert final.read_bytes() == b"headbody"
    assert size == 8
    assert [p.name for p in final.parent.iterdir()] == ["file.bin"]


def test_write_durably_keeps_the_partial_in_tmp_dir_and_sets_the_mode(tmp_path: Path) -> None:
    spare = tmp_path / "tmp"
    spare.mkdir()
    final = tmp_path / "incoming" / "x.dcm"
    write_durably(final, b"data", tmp_dir=spare, mode=0o600)
    assert final.read_bytes() == b"data"
    assert final.stat().st_mode & 0o777 == 0o600
    assert list(spare.iterdir()) == []


def test_durable_file_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "state.txt"
    with durable_file(final) as handle:
        handle.write(b"first")
    with pytest.raises(RuntimeError), durable_file(final) as handle:
        handle.write(b"half of the second")
        raise RuntimeError("crash mid-write")
    assert final.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]


def test_make_dirs_durably_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y"
    make_dirs_durably(target)
    make_dirs_durably(target)
    assert target.is_dir()
