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


def test_write_durably_writes_every_byte_when_writev_writes_less(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts go out in one ``os.writev`` where the kernel allows; a short write is carried on from the byte
    where it stopped, so the file is the parts joined (as one ``os.write`` per part wrote it)."""
    import os

    real_writev = os.writev
    calls: list[int] = []

    def short_writev(descriptor: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        return real_writev(descriptor, [bytes(b"".join(buffers))[:7]])  # at most 7 bytes a call

    monkeypatch.setattr(os, "writev", short_writev)
    parts = (b"preamble-", b"", b"DICM", bytearray(b"-dataset-bytes"), memoryview(b"-end"))
    final = tmp_path / "series" / "x.dcm"
    size = write_durably(final, parts, tmp_dir=tmp_path)
    assert final.read_bytes() == b"".join(bytes(p) for p in parts)
    assert size == len(final.read_bytes())
    assert len(calls) > 1


def test_write_durably_makes_a_missing_folder_durably_only_when_the_rename_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``tmp_dir`` the final folder is looked at only if the rename fails for want of it; then it is made
    and its parent fsynced, as before; an existing folder costs no look (and no extra fsync)."""
    from codebrain_node import durable

    synced: list[Path] = []
    real = durable.fsync_directory
    monkeypatch.setattr(durable, "fsync_directory", lambda d: (synced.append(Path(d)), real(d))[1])
    spare = tmp_path / "tmp"
    spare.mkdir()
    first = tmp_path / "incoming" / "study" / "one.dcm"
    write_durably(first, (b"a", b"b"), tmp_dir=spare)
    assert first.read_bytes() == b"ab"
    # the two new folders' parents, then the final folder itself
    assert synced == [tmp_path, tmp_path / "incoming", first.parent]
    synced.clear()
    write_durably(first.parent / "two.dcm", b"c", tmp_dir=spare)
    assert synced == [first.parent]
    assert list(spare.iterdir()) == []


def test_write_durably_when_another_writer_makes_the_folder_between_the_rename_and_the_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first files of one new series folder at once (two associations, two receiver processes): the rename
    of one fails for want of the folder the other is making; it makes it too (idempotently) and succeeds."""
    import os

    from codebrain_node import durable

    real_replace = os.replace
    calls: list[int] = []

    def replace_after_a_sibling_made_the_folder(src: object, dst: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            Path(dst).parent.mkdir(parents=True)  # the sibling's mkdir lands just after our rename failed
            raise FileNotFoundError(2, "No such file or directory")
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "replace", replace_after_a_sibling_made_the_folder)
    spare = tmp_path / "tmp"
    spare.mkdir()
    final = tmp_path / "incoming" / "study" / "series" / "one.dcm"
    write_durably(final, (b"x", b"y"), tmp_dir=spare)
    assert final.read_bytes() == b"xy"
    assert list(spare.iterdir()) == []
