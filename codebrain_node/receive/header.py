"""What a received dataset is filed under: its UIDs and the few attributes the database keeps, read cheaply.

Everything needed lives in groups 0008-0020, ahead of the pixel data, so nothing past group 0020 is read and
nothing is decoded. The common case (explicit or implicit VR little endian, defined lengths, a single-byte or
UTF-8 character set) is read by :func:`scan_header`, a direct walk over the element headers costing a few
microseconds, where building a pydicom Dataset cost most of the receiver's CPU per instance after pynetdicom
itself. Anything else (big endian, deflate, an undefined-length sequence before group 0028, ISO 2022 character
sets, bytes that do not look like DICOM) goes to pydicom, which stays the reference.

Statuses (PS3.4 B.2.3): a dataset without a readable SOP Class UID (every valid instance carries it near the
start) cannot be understood (0xC000); a readable one lacking Study/Series/SOP Instance UID, or whose UIDs differ
from the C-STORE request, does not match its SOP class (0xA900).
"""

from __future__ import annotations

import math
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: The attributes read on receipt (keyword → tag); all lie in groups 0008-0020.
HEADER_TAGS: dict[str, int] = {
    keyword: int(Tag(keyword))
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "SyntheticData",
        "StudyDate",
        "AccessionNumber",
        "Modality",
        "StudyDescription",
        "SeriesDescription",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "InstanceNumber",
        "FrameOfReferenceUID",
    )
}
_KEYWORD_OF = {tag: keyword for keyword, tag in HEADER_TAGS.items()}
_LAST_TAG = max(HEADER_TAGS.values())

#: Explicit VRs with a 4-byte length after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VR = re.compile(rb"^[A-Z]{2}$")
#: Character sets a plain codec decodes; anything else (ISO 2022 escapes) goes to pydicom.
_CODECS = {"": "latin-1", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG, _SHORT, _LONG = struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<I")

Header = dict[str, str | None]


class HeaderError(ValueError):
    """The dataset cannot be filed: unreadable, or a required UID missing or invalid."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def is_valid_uid(value: object) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): also what makes it safe as a file name."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


UNDEFINED_LENGTH = 0xFFFFFFFF


class _Unwalkable(Exception):
    """The element headers cannot be walked here (an invalid VR): pydicom must decide."""


class _Truncated(Exception):
    """An element header or value runs past the end of the received bytes."""


def _walkable(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or _is_compressed_le(
        transfer_syntax_uid
    )


def _elements(dataset: bytes, explicit: bool) -> Iterator[tuple[int, int, int]]:
    """``(tag, value start, value length)`` of each top-level little-endian element, in order (PS3.5 7.1).

    An undefined length (a sequence, encapsulated pixel data) is yielded as ``UNDEFINED_LENGTH`` and ends the walk;
    raises :class:`_Truncated` when a header or a value runs past the end, :class:`_Unwalkable` on an invalid VR.
    """
    position, end = 0, len(dataset)
    unpack_tag, unpack_short, unpack_long = _TAG.unpack_from, _SHORT.unpack_from, _LONG.unpack_from
    while position < end:
        if position + 8 > end:
            raise _Truncated("dataset ends inside an element header")
        group, element = unpack_tag(dataset, position)
        tag = (group << 16) | element
        if explicit:
            vr = dataset[position + 4 : position + 6]
            if not _VR.match(vr):
                raise _Unwalkable
            if vr in _LONG_VRS:
                if position + 12 > end:
                    raise _Truncated("dataset ends inside an element header")
                (length,) = unpack_long(dataset, position + 8)
                start = position + 12
            else:
                (length,) = unpack_short(dataset, position + 6)
                start = position + 8
        else:
            (length,) = unpack_long(dataset, position + 4)
            start = position + 8
        if length == UNDEFINED_LENGTH:
            yield tag, start, length
            return
        if start + length > end:
            raise _Truncated(f"element ({group:04X},{element:04X}) runs past the end of the dataset")
        yield tag, start, length
        position = start + length


def scan_header(dataset: bytes, transfer_syntax_uid: str) -> Header | None:
    """The wanted attributes as text, read straight from the element headers; None when pydicom must decide."""
    if not _walkable(transfer_syntax_uid):
        return None
    raw: dict[int, bytes] = {}
    try:
        for tag, start, length in _elements(dataset, transfer_syntax_uid != ImplicitVRLittleEndian):
            if tag > _LAST_TAG:
                break
            if length == UNDEFINED_LENGTH:
                return None  # a sequence to walk before the wanted attributes end: pydicom's job
            if tag in _KEYWORD_OF:
                raw[tag] = dataset[start : start + length]
    except (_Unwalkable, _Truncated):
        return None
    charset = raw.get(HEADER_TAGS["SpecificCharacterSet"], b"").decode("ascii", "replace").strip(" \0")
    codec = _CODECS.get(charset.split("\\")[-1].strip() if charset else "")
    if codec is None or "\\" in charset:
        return None
    header: Header = {}
    for tag, value in raw.items():
        text = value.decode(codec, "replace").strip(" \0")
        header[_KEYWORD_OF[tag]] = text or None
    return header


_PIXEL_DATA = 0x7FE00010
_IMAGE_PIXEL_US = {0x00280002: "samples", 0x00280010: "rows", 0x00280011: "columns", 0x00280100: "bits"}
_NUMBER_OF_FRAMES = 0x00280008


def incomplete_reason(dataset: bytes, transfer_syntax_uid: str) -> str | None:
    """Why the received bytes cannot be a whole instance, or None when they look whole.

    A sender that read a cut-off file (a full disk, an interrupted copy) sends what it has; such an instance,
    once acknowledged, would fail the whole study later when its pixels are read. Two checks on the element
    headers only (microseconds, nothing decoded): a top-level element whose declared length runs past the end,
    and native pixel data shorter than Rows x Columns x Samples per Pixel x Bits Allocated / 8 x frames. An
    undefined-length element (a sequence, encapsulated pixel data) or a syntax it does not walk ends the check.
    """
    if not _walkable(transfer_syntax_uid):
        return None
    native = not _is_compressed_le(transfer_syntax_uid)
    image: dict[str, int] = {}
    frames = 1
    try:
        for tag, start, length in _elements(dataset, transfer_syntax_uid != ImplicitVRLittleEndian):
            if tag in _IMAGE_PIXEL_US and length == 2:
                (image[_IMAGE_PIXEL_US[tag]],) = _SHORT.unpack_from(dataset, start)
            elif tag == _NUMBER_OF_FRAMES and length != UNDEFINED_LENGTH:
                text = dataset[start : start + length].decode("ascii", "replace").strip(" \0")
                frames = int(text) if text.isdigit() and int(text) > 0 else 1
            elif tag == _PIXEL_DATA and native and len(image) == 4 and length != UNDEFINED_LENGTH:
                expected = image["rows"] * image["columns"] * image["samples"] * image["bits"] * frames // 8
                if length < expected:
                    return f"pixel data has {length} bytes, its image attributes need {expected}"
    except _Truncated as truncated:
        return str(truncated)
    except _Unwalkable:
        return None
    return None


_SEQUENCE_DELIMITER, _ITEM, _ITEM_DELIMITER = 0xFFFEE0DD, 0xFFFEE000, 0xFFFEE00D
#: How deep nested sequences may go before the check gives up (and leaves the instance to the engine).
_MAX_NESTING = 32


def _past_sequence(dataset: bytes, position: int, explicit: bool) -> int:
    """The offset just past the delimiter of the undefined-length sequence whose value starts at ``position``
    (PS3.5 7.5): items and nested sequences walked by their headers, nothing decoded. Raises :class:`_Truncated`
    or :class:`_Unwalkable` (not a sequence, or nested deeper than ``_MAX_NESTING``)."""
    end, inside = len(dataset), ["sequence"]
    while inside:
        if position + 8 > end:
            raise _Truncated("dataset ends inside a sequence")
        group, element = _TAG.unpack_from(dataset, position)
        tag = (group << 16) | element
        if inside[-1] == "sequence":
            (length,) = _LONG.unpack_from(dataset, position + 4)
            position += 8
            if tag == _SEQUENCE_DELIMITER:
                inside.pop()
            elif tag != _ITEM:
                raise _Unwalkable
            elif length == UNDEFINED_LENGTH:
                inside.append("item")
            else:
                position += length
            continue
        if tag == _ITEM_DELIMITER:
            position += 8
            inside.pop()
            continue
        start, length = _element_header(dataset, position, explicit)
        if length == UNDEFINED_LENGTH:
            if len(inside) >= 2 * _MAX_NESTING:
                raise _Unwalkable
            inside.append("sequence")
            position = start
        else:
            position = start + length
    return position


def _element_header(dataset: bytes, position: int, explicit: bool) -> tuple[int, int]:
    """``(value start, value length)`` of the element whose header is at ``position``."""
    if position + 8 > len(dataset):
        raise _Truncated("dataset ends inside an element header")
    if not explicit:
        return position + 8, _LONG.unpack_from(dataset, position + 4)[0]
    vr = dataset[position + 4 : position + 6]
    if not _VR.match(vr):
        raise _Unwalkable
    if vr in _LONG_VRS:
        if position + 12 > len(dataset):
            raise _Truncated("dataset ends inside an element header")
        return position + 12, _LONG.unpack_from(dataset, position + 8)[0]
    return position + 8, _SHORT.unpack_from(dataset, position + 6)[0]


def _numbers(value: bytes, count: int) -> bool:
    """Whether a DS value holds ``count`` finite numbers (what the engine places a slice with)."""
    parts = value.decode("ascii", "replace").strip(" \0").split("\\")
    try:
        return len(parts) == count and all(math.isfinite(float(part)) for part in parts)
    except ValueError:
        return False


_IMAGE_POSITION, _IMAGE_ORIENTATION, _BITS_ALLOCATED = 0x00200032, 0x00200037, 0x00280100


def unusable_reason(dataset: bytes, transfer_syntax_uid: str) -> tuple[int, str] | None:
    """Why an image the engine could never use is refused at receipt, with the status to answer, or None.

    One walk over the top-level element headers (undefined-length sequences stepped over by their delimiters,
    nothing decoded): native pixel data of undefined length cannot be understood (0xC000, PS3.5 A.4 allows it
    only encapsulated); no Pixel Data, Bits Allocated other than 8, 16 or 32, or an Image Position / Orientation
    (Patient) that is not three / six numbers does not match the SOP class (0xA900). A syntax it does not walk
    (deflate, big endian), a walk it cannot finish, or geometry absent rather than garbled refuses nothing: the
    engine then leaves such a series out with the reason.
    """
    if not _walkable(transfer_syntax_uid):
        return None
    explicit = transfer_syntax_uid != ImplicitVRLittleEndian
    native = not _is_compressed_le(transfer_syntax_uid)
    seen: dict[int, bytes] = {}
    position, end = 0, len(dataset)
    try:
        while position < end:
            start, length = _element_header(dataset, position, explicit)
            group, element = _TAG.unpack_from(dataset, position)
            tag = (group << 16) | element
            if tag == _PIXEL_DATA:
                if length == UNDEFINED_LENGTH and native:
                    return CANNOT_UNDERSTAND, "native pixel data of undefined length"
                seen[tag] = b""
                break  # nothing after the pixel data matters here
            if length == UNDEFINED_LENGTH:
                seen.setdefault(tag, b"")
                position = _past_sequence(dataset, start, explicit)
                continue
            if tag in (_IMAGE_POSITION, _IMAGE_ORIENTATION, _BITS_ALLOCATED):
                seen[tag] = dataset[start : start + length]
            position = start + length
    except (_Truncated, _Unwalkable):
        return None  # incomplete_reason answers truncation; an unwalkable dataset is pydicom's and the engine's
    bits = seen.get(_BITS_ALLOCATED)
    if bits is not None and len(bits) == 2 and _SHORT.unpack(bits)[0] not in (8, 16, 32):
        return DATASET_DOES_NOT_MATCH_SOP_CLASS, f"Bits Allocated {_SHORT.unpack(bits)[0]} is not 8, 16 or 32"
    if _PIXEL_DATA not in seen:
        return DATASET_DOES_NOT_MATCH_SOP_CLASS, "no Pixel Data"
    for tag, name, count in ((_IMAGE_POSITION, "Position", 3), (_IMAGE_ORIENTATION, "Orientation", 6)):
        value = seen.get(tag)
        if value is not None and not _numbers(value, count):
            return DATASET_DOES_NOT_MATCH_SOP_CLASS, f"Image {name} (Patient) is not {count} numbers"
    return None


@dataclass(frozen=True)
class InstanceLimits:
    """What one received instance may cost the node (``dicom.max_inflated_mb``, ``max_sequence_depth``,
    ``max_element_mb``). Beyond them it is refused (PS3.4 B.2.3; PS3.7 C, status classes): 0xA700 "Refused: Out
    of Resources" for a dataset that inflates past the bound or an element longer than allowed (what it would take
    to hold), 0xC000 "Error: Cannot understand" for sequences nested deeper than we parse."""

    max_inflated_bytes: int = 64 * 1024 * 1024
    max_sequence_depth: int = 16
    max_element_bytes: int = 512 * 1024 * 1024


#: How much a deflated dataset is inflated at a time while its size is bounded.
_INFLATE_CHUNK = 1 << 20


def inflate_bounded(dataset: bytes, limit: int) -> bytes:
    """A Deflated Explicit VR Little Endian dataset (PS3.5 A.5: raw deflate, no zlib header) inflated, stopping as
    soon as the output would pass ``limit`` bytes: a 400 KB deflate bomb costs ``limit``, not the hundreds of MB it
    inflates to. Raises :class:`HeaderError` 0xA700 past the limit, 0xC000 for bytes that are not deflate."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    pending = dataset
    try:
        while True:
            part = inflater.decompress(pending, min(_INFLATE_CHUNK, limit + 1 - size))
            size += len(part)
            parts.append(part)
            if size > limit:
                raise HeaderError(OUT_OF_RESOURCES, f"deflated dataset inflates past {limit} bytes")
            pending = inflater.unconsumed_tail
            if not pending:
                break
        tail = inflater.flush()
    except zlib.error:
        raise HeaderError(CANNOT_UNDERSTAND, "deflated dataset is not valid deflate data") from None
    if size + len(tail) > limit:
        raise HeaderError(OUT_OF_RESOURCES, f"deflated dataset inflates past {limit} bytes")
    parts.append(tail)
    return b"".join(parts)


_ITEM_TAG_BYTES = b"\xfe\xff\x00\xe0"


def _is_implicit_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def cost_reason(dataset: bytes, transfer_syntax_uid: str, limits: InstanceLimits) -> tuple[int, str] | None:
    """Why an instance costs more than ``limits`` allow, with the status to answer, or None.

    Walks every element header, nested sequences and items included (defined and undefined lengths, PS3.5 7.5),
    without decoding a value, before pydicom ever sees the dataset: a 3,000-deep nesting is refused after
    ``max_sequence_depth`` levels instead of costing seconds of CPU in pydicom's recursive reader (on receipt and
    again at every read of its series). A syntax it does not walk (big endian) or a walk it cannot finish (a
    truncation, an invalid VR: :func:`incomplete_reason`'s and pydicom's business) refuses nothing.
    """
    if not _walkable(transfer_syntax_uid):  # deflated: called on its inflated bytes, as explicit little endian
        return None
    explicit = transfer_syntax_uid != ImplicitVRLittleEndian
    position, end, depth = 0, len(dataset), 0
    #: open containers: (is a sequence, end offset or -1 for undefined length)
    stack: list[tuple[bool, int]] = []
    try:
        while True:
            while stack and stack[-1][1] != -1 and position >= stack[-1][1]:
                if stack.pop()[0]:
                    depth -= 1
            if position >= end:
                return None  # whole, or cut inside a container: incomplete_reason's business
            if position + 8 > end:
                raise _Truncated("dataset ends inside an element header")
            group, element = _TAG.unpack_from(dataset, position)
            tag = (group << 16) | element
            if stack and stack[-1][0]:  # inside a sequence: items and its delimiter
                (length,) = _LONG.unpack_from(dataset, position + 4)
                position += 8
                if tag == _SEQUENCE_DELIMITER:
                    stack.pop()
                    depth -= 1
                elif tag != _ITEM:
                    raise _Unwalkable
                else:
                    stack.append((False, -1 if length == UNDEFINED_LENGTH else position + length))
                continue
            if tag == _ITEM_DELIMITER and stack:
                position += 8
                stack.pop()
                continue
            start, length = _element_header(dataset, position, explicit)
            if tag == _PIXEL_DATA and length == UNDEFINED_LENGTH:  # encapsulated: fragments, not datasets
                position = _past_fragments(dataset, start)
                continue
            sequence = length == UNDEFINED_LENGTH or (
                dataset[position + 4 : position + 6] == b"SQ"
                if explicit
                else dataset[start : start + 4] == _ITEM_TAG_BYTES and _is_implicit_sequence(tag)
            )
            if sequence:
                depth += 1
                if depth > limits.max_sequence_depth:
                    return CANNOT_UNDERSTAND, f"sequences nested deeper than {limits.max_sequence_depth} levels"
                stack.append((True, -1 if length == UNDEFINED_LENGTH else start + length))
                position = start
                continue
            if length > limits.max_element_bytes:
                return OUT_OF_RESOURCES, f"element ({group:04X},{element:04X}) of {length} bytes"
            position = start + length
    except (_Truncated, _Unwalkable):
        return None


def _past_fragments(dataset: bytes, position: int) -> int:
    """The offset past the sequence delimiter of encapsulated pixel data whose items start at ``position``."""
    end = len(dataset)
    while position + 8 <= end:
        group, element = _TAG.unpack_from(dataset, position)
        (length,) = _LONG.unpack_from(dataset, position + 4)
        position += 8
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            return position
        if tag != _ITEM or length == UNDEFINED_LENGTH:
            raise _Unwalkable
        position += length
    raise _Truncated("dataset ends inside encapsulated pixel data")


def _is_compressed_le(transfer_syntax_uid: str) -> bool:
    """Encapsulated syntaxes encode the dataset in explicit VR little endian; only the pixel data differs."""
    uid = UID(transfer_syntax_uid)
    return uid.is_compressed and uid != DeflatedExplicitVRLittleEndian


def _past_group_0020(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag.group > 0x0020


_QUIET_PYDICOM = threading.Lock()


def _from_pydicom(parse: Callable[[], Dataset]) -> Header:
    """Read with pydicom, its value validation off: on garbage it logs the offending raw bytes, which may hold
    patient data. (The setting is global; the lock keeps save/restore of it consistent between threads.)"""
    with _QUIET_PYDICOM:
        previous = pydicom_config.settings.reading_validation_mode
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            dataset = parse()
            header: Header = {}
            for keyword in HEADER_TAGS:
                header[keyword] = _text_of(dataset, keyword)
        except Exception as exc:  # pydicom raises a wide range on garbage; none of it must reach the association
            raise HeaderError(CANNOT_UNDERSTAND, f"unreadable dataset ({type(exc).__name__})") from None
        finally:
            pydicom_config.settings.reading_validation_mode = previous
    return header


def _text_of(dataset: Dataset, keyword: str) -> str | None:
    """One attribute as text; a value pydicom cannot convert (an Integer String past a float's range) reads as its
    raw bytes, as the fast scan reads it, so the same instance files alike on receipt and at recovery."""
    try:
        value = dataset.get(keyword)
        text = "" if value is None else str(value)
    except Exception:
        element = dataset.get_item(keyword)
        raw_value = getattr(element, "value", None)
        text = raw_value.decode("latin-1", "replace") if isinstance(raw_value, bytes) else ""
    return text.strip(" \0") or None


def read_dataset_header(dataset: bytes, transfer_syntax_uid: str) -> Header:
    """The header of a dataset as received (no File Meta): fast scan, else pydicom. Raises HeaderError."""
    fast = scan_header(dataset, transfer_syntax_uid)
    if fast is not None:
        return fast

    def parse() -> Dataset:
        stream = dataset
        if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:  # the receiver passes it inflated, bounded
            stream = inflate_bounded(dataset, InstanceLimits().max_inflated_bytes)
        return read_dataset(
            BytesIO(stream),
            is_implicit_VR=transfer_syntax_uid == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
            stop_when=_past_group_0020,
            specific_tags=list(HEADER_TAGS.values()),
        )

    return _from_pydicom(parse)


def read_file_header(path: Path) -> tuple[Header, str | None]:
    """The header of a Part 10 file and its transfer syntax (crash recovery). Raises HeaderError."""
    holder: dict[str, str | None] = {}

    def parse() -> Dataset:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        meta = getattr(dataset, "file_meta", None)
        holder["ts"] = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
        return dataset

    header = _from_pydicom(parse)
    return header, holder.get("ts")


def filing_uids(header: Mapping[str, str | None]) -> dict[str, str]:
    """Study, Series, SOP Instance and SOP Class UIDs, checked; raises HeaderError with the status to answer."""
    if not is_valid_uid(header.get("SOPClassUID")):
        raise HeaderError(CANNOT_UNDERSTAND, "no readable SOP Class UID")
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = header.get(keyword)
        if value is None:
            raise HeaderError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing")
        if not is_valid_uid(value):
            raise HeaderError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is not a valid UID")
        uids[keyword] = value
    return uids


def integer(header: Mapping[str, str | None], keyword: str) -> int | None:
    """IS values ("12", " 3.0") as int; None when absent or not a finite number ("1e400" overflows a float to
    infinity: an instance must not be refused, or fail later, for a number the node only files)."""
    value = header.get(keyword)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None
