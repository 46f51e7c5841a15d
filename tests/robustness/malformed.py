"""A seeded generator of malformed MR instances, as a careless or hostile sender would send them (#16).

Every case of the issue's defect list (huge Series Number, 10,000-character Patient Name and the other header values
that break a column, garbled Image Position, no Pixel Data, undefined-length native Pixel Data, Bits Allocated 7, a
deflate bomb, a 3,000-deep nesting, a SOP Instance UID re-used in another series, the same UID with other content),
then truncations at random offsets and random byte flips in the header, drawn from ``seed``: the same seed gives the
same bytes, so a failure found in CI can be sent again. Each case is the dataset's bytes as they go on the wire (no
File Meta) in its transfer syntax; :func:`part10` makes the file pynetdicom sends unparsed."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage, generate_uid

from codebrain_node.receive.spool import encode_file_header
from tests.dicom_fixtures import make_mr_instance
from tests.robustness.conftest import EXPLICIT, HOSTILE_HEADERS, wire_bytes
from tests.robustness.test_bad_slices import BAD_SLICES
from tests.robustness.test_instance_cost import deep_nesting, deflate_bomb

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


@dataclass(frozen=True)
class Malformed:
    """One instance to send: ``expected`` is the one status the node must answer, or None where any proper answer
    does (a failure status, or Success with the instance then recorded or quarantined)."""

    name: str
    sop_instance_uid: str
    data: bytes
    syntax: str = EXPLICIT
    expected: int | None = None
    #: Success, yet not recorded under this instance's own content: the node keeps the first copy of the UID.
    duplicate_of_earlier: bool = False


def _instance(study: str | None = None, series: str | None = None, index: int = 0, seed: int = 0) -> pydicom.Dataset:
    return make_mr_instance(study or generate_uid(), series or generate_uid(), index, rows=8, columns=8, seed=seed)


def part10(case: Malformed, folder: Path) -> Path:
    """``case`` as a Part 10 file whose dataset bytes pynetdicom sends as they are (``STORE_SEND_CHUNKED_DATASET``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.sop_instance_uid}.dcm"
    path.write_bytes(encode_file_header(str(MRImageStorage), case.sop_instance_uid, case.syntax, "") + case.data)
    return path


def defect_list_cases() -> list[Malformed]:
    """The issue's cases, each with the answer the fixes promise (header values: Success, kept safely)."""
    cases = []
    for name, spoil in HOSTILE_HEADERS.items():
        dataset = _instance()
        spoil(dataset)
        cases.append(Malformed(f"header: {name}", str(dataset.SOPInstanceUID), wire_bytes(dataset), expected=0x0000))
    for name, (spoil, status) in BAD_SLICES.items():
        dataset = _instance(index=6)  # its position '0.0\\0.0\\6.0' occurs once in the bytes
        cases.append(
            Malformed(
                f"slice: {name}", str(dataset.SOPInstanceUID), spoil(wire_bytes(dataset), dataset), expected=status
            )
        )
    sop, bomb = deflate_bomb()
    cases.append(Malformed("deflate bomb", sop, bomb, DeflatedExplicitVRLittleEndian, expected=0xA700))
    sop, nested = deep_nesting()
    cases.append(Malformed("3,000-deep nested sequence", sop, nested, expected=0xC000))

    study, series = generate_uid(), generate_uid()
    original = _instance(study, series)
    uid = str(original.SOPInstanceUID)
    changed = _instance(study, series, seed=7)  # other pixels, same UID
    changed.SOPInstanceUID = uid
    elsewhere = _instance(study)  # another series, same UID
    elsewhere.SOPInstanceUID = uid
    cases += [
        Malformed("original of a re-used UID", uid, wire_bytes(original), expected=0x0000),
        Malformed(
            "same SOP Instance UID, different content",
            uid,
            wire_bytes(changed),
            expected=0x0000,
            duplicate_of_earlier=True,
        ),
        Malformed(
            "SOP Instance UID re-used in another series",
            uid,
            wire_bytes(elsewhere),
            expected=0xC000,
            duplicate_of_earlier=True,
        ),
    ]
    return cases


def random_cases(seed: int, truncations: int = 8, flips: int = 8) -> list[Malformed]:
    """Truncations at random offsets of the dataset and 1-4 random byte flips before its Pixel Data (the header)."""
    rng = np.random.default_rng(seed)
    cases = []
    for number in range(truncations):
        dataset = _instance(seed=number)
        data = wire_bytes(dataset)
        cut = int(rng.integers(1, len(data)))
        cases.append(Malformed(f"truncated at byte {cut} of {len(data)}", str(dataset.SOPInstanceUID), data[:cut]))
    for _number in range(flips):
        dataset = _instance()
        data = bytearray(wire_bytes(dataset))
        header_end = bytes(data).index(PIXEL_DATA_TAG)
        where = sorted(int(at) for at in rng.choice(header_end, size=int(rng.integers(1, 5)), replace=False))
        for at in where:
            data[at] ^= int(rng.integers(1, 256))
        cases.append(Malformed(f"bytes flipped at {where}", str(dataset.SOPInstanceUID), bytes(data)))
    return cases


def generate(seed: int, truncations: int = 8, flips: int = 8) -> list[Malformed]:
    """The whole campaign's inputs, in the order they are sent (a re-used UID's original first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the very values the cases are made of
        return [*defect_list_cases(), *random_cases(seed, truncations, flips)]
