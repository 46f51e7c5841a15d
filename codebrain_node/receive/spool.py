"""The durable spool: a received instance is on disk, complete and fsynced, before its success status goes back.

Write path for one C-STORE: read the few header attributes we file it under (no pixel decoding: the dataset is
parsed up to group 0020 and no further), write File Meta plus the bytes as the peer sent them into ``tmp/``,
``fdatasync`` the file, ``rename`` it into ``incoming/<Study>/<Series>/<SOP>.dcm`` (atomic on one filesystem), then
``fsync`` the directory so the name itself survives a crash. Only then is the caller told "stored". A crash at any
earlier point leaves at most a file in ``tmp/``, which :meth:`Spool.clean_tmp` removes at start, so a partial file
never appears in ``incoming/``.

A second copy of an SOP Instance UID that is already spooled is answered with success and not written again
(idempotent: the first file is kept); one whose bytes differ from the first's is answered the same, the first kept,
and reported as an :class:`InstanceConflict` (logged, audited by the recorder). The same SOP Instance UID under
another study or series is refused (0xC000) and reported alike: it could never be recorded (a SOP Instance UID is
one row). The spool knows nothing of the network or the database: it returns a
:class:`StoreOutcome` with the DIMSE status to answer and, when something new was stored, the
:class:`ReceivedInstance` the recorder will file in the database.
"""

from __future__ import annotations

import logging
import shutil
import struct
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from codebrain_node.config import DicomSettings
from codebrain_node.durable import write_durably
from codebrain_node.receive.header import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    Header,
    HeaderError,
    InstanceLimits,
    cost_reason,
    filing_uids,
    incomplete_reason,
    inflate_bounded,
    integer,
    read_dataset_header,
    read_file_header,
    unusable_reason,
)

__all__ = ["CANNOT_UNDERSTAND", "DATASET_DOES_NOT_MATCH_SOP_CLASS", "OUT_OF_RESOURCES", "SUCCESS", "HeaderError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """What the database needs to know about one spooled file. Patient fields are stored, never logged."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    path: Path
    size_bytes: int
    instance_number: int | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    frame_of_reference_uid: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    #: Synthetic Data (0008,001C) = YES: recorded, but never reopens a study (the node must not loop on output).
    synthetic: bool = False
    calling_ae_title: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The receiver's key of the association that delivered it (``receive/associations.py``); None when filed
    #: from the spool after a crash or offline.
    association_key: str | None = None


@dataclass(frozen=True)
class InstanceConflict:
    """A SOP Instance UID received again with other content, or under another study or series: the first copy
    is kept; the recorder audits this (``instance:conflict``). No patient data."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    reason: str
    calling_ae_title: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    #: Set when a new file was stored; None for failures and for duplicates.
    instance: ReceivedInstance | None = None
    duplicate: bool = False
    conflict: InstanceConflict | None = None


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta group (PS3.10 7.1), packed directly: building a pydicom
    FileMetaDataset and encoding it cost more CPU per instance than everything else the spool does."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii"), b"\x00"),
            _element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii"), b"\x00"),
            _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" "),
            *((_element(0x0016, b"AE", source_ae.encode("ascii", "replace"), b" "),) if source_ae else ()),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def describe(
    header: Header, path: Path, size_bytes: int, transfer_syntax_uid: str | None, calling_ae_title: str | None
) -> ReceivedInstance:
    """The database's view of one header; raises :class:`HeaderError` if a filing UID is missing or invalid."""
    uids = filing_uids(header)
    return ReceivedInstance(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        path=path,
        size_bytes=size_bytes,
        instance_number=integer(header, "InstanceNumber"),
        modality=header.get("Modality"),
        series_number=integer(header, "SeriesNumber"),
        series_description=header.get("SeriesDescription"),
        frame_of_reference_uid=header.get("FrameOfReferenceUID"),
        patient_name=header.get("PatientName"),
        patient_id=header.get("PatientID"),
        accession_number=header.get("AccessionNumber"),
        study_date=header.get("StudyDate"),
        study_description=header.get("StudyDescription"),
        synthetic=(header.get("SyntheticData") or "").upper() == "YES",
        calling_ae_title=calling_ae_title,
    )


class Spool:
    """``incoming/`` and ``tmp/`` under the data directory; thread-safe (every store uses its own temp name)."""

    def __init__(
        self,
        data_dir: Path,
        min_free_disk_mb: int = 0,
        limits: InstanceLimits | None = None,
        tmp_name: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        #: What one instance may cost (inflated size, nesting depth, element length); beyond, it is refused.
        self.limits = limits or InstanceLimits()
        self.incoming = self.data_dir / "incoming"
        #: ``tmp_name``: a folder of ``tmp/`` of this process's own (one of several receiver processes), so that a
        #: restarted one clears its dead predecessor's partial files and never a live sibling's.
        self.tmp = self.data_dir / "tmp" / tmp_name if tmp_name else self.data_dir / "tmp"
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        #: Where each spooled SOP Instance UID lies (one walk at start, as recovery's): a UID re-used in another
        #: series is found without a search. Nodes sharing the folder see each other's files only at their start;
        #: the recorder keeps such an instance out of the database as well.
        self._held: dict[str, Path] = {path.stem: path for path in self.incoming.glob("*/*/*.dcm")}
        self._held_lock = threading.Lock()

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return self.incoming / study_uid / series_uid / f"{sop_instance_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def has_room(self) -> bool:
        """False below the free-disk watermark: the node then refuses associations and stores."""
        return self.min_free_bytes <= 0 or self.free_bytes() >= self.min_free_bytes

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a spooled file that cannot be filed aside, with its reason in ``<name>.reason.txt`` beside it: kept
        for a person to look at, out of the way of recovery. ``reason`` must hold no patient data."""
        folder = self.data_dir / "quarantine"
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        path.replace(target)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        write_durably(folder / f"{path.name}.reason.txt", (f"{stamp} {reason}\n".encode(),), tmp_dir=self.tmp)
        return target

    def clean_tmp(self) -> int:
        """Remove partial files left by a crash or an aborted association; they were never acknowledged. The
        whole ``tmp/`` spool also clears its processes' folders (called before any of them runs)."""
        removed = 0
        for leftover in self.tmp.rglob("*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("spool: removed %d partial file(s) from tmp/", removed)
        return removed

    def store(
        self,
        dataset: bytes,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae_title: str | None = None,
    ) -> StoreOutcome:
        """File one received dataset (its bytes as sent, in ``transfer_syntax_uid``) durably as a Part 10 file."""
        if not self.has_room():
            log.warning("store refused: free disk below watermark (sop=%s)", sop_instance_uid)
            return StoreOutcome(OUT_OF_RESOURCES)
        try:
            # bounded before anything parses it: a deflate bomb or a 3,000-deep nesting costs the limits, no more
            readable, syntax = dataset, transfer_syntax_uid
            if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
                readable, syntax = inflate_bounded(dataset, self.limits.max_inflated_bytes), ExplicitVRLittleEndian
            costly = cost_reason(readable, syntax, self.limits)
            if costly is not None:
                raise HeaderError(*costly)
            instance = describe(read_dataset_header(readable, syntax), Path(), 0, transfer_syntax_uid, calling_ae_title)
            del readable
        except HeaderError as exc:
            log.warning(
                "store failed 0x%04X: %s (sop=%s, from %s)", exc.status, exc, sop_instance_uid, calling_ae_title
            )
            return StoreOutcome(exc.status)
        incomplete = incomplete_reason(dataset, transfer_syntax_uid)
        if incomplete is not None:
            log.warning("store failed 0xC000: %s (sop=%s, from %s)", incomplete, sop_instance_uid, calling_ae_title)
            return StoreOutcome(CANNOT_UNDERSTAND)
        unusable = unusable_reason(dataset, transfer_syntax_uid)
        if unusable is not None:  # acknowledged, it would fail its whole study later, when its pixels are read
            status, reason = unusable
            log.warning("store failed 0x%04X: %s (sop=%s, from %s)", status, reason, sop_instance_uid, calling_ae_title)
            return StoreOutcome(status)
        if instance.sop_instance_uid != sop_instance_uid or instance.sop_class_uid != sop_class_uid:
            log.warning(
                "store failed 0xA900: dataset UIDs differ from the C-STORE request (sop=%s, from %s)",
                sop_instance_uid,
                calling_ae_title,
            )
            return StoreOutcome(DATASET_DOES_NOT_MATCH_SOP_CLASS)
        final = self.path_for(instance.study_uid, instance.series_uid, instance.sop_instance_uid)
        with self._held_lock:
            held = self._held.get(sop_instance_uid)
        if held is not None and held != final and held.exists():
            reason = "SOP Instance UID already stored in another study or series"
            log.warning("store failed 0xC000: %s (sop=%s, from %s)", reason, sop_instance_uid, calling_ae_title)
            return StoreOutcome(CANNOT_UNDERSTAND, conflict=self._conflict(instance, reason, calling_ae_title))
        if final.exists():
            if _dataset_of(final) == dataset:
                log.debug("duplicate sop=%s: already spooled, answered success", sop_instance_uid)
                return StoreOutcome(SUCCESS, duplicate=True)
            reason = "received again with different content; the first copy is kept"
            log.warning("duplicate sop=%s %s (from %s)", sop_instance_uid, reason, calling_ae_title)
            return StoreOutcome(SUCCESS, duplicate=True, conflict=self._conflict(instance, reason, calling_ae_title))
        file_header = encode_file_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae_title or "")
        try:
            # the partial file lives in tmp/ so a crash leaves nothing half-written under incoming/
            write_durably(final, (file_header, dataset), tmp_dir=self.tmp, mode=0o640)
        except OSError as exc:
            log.error("store failed 0xA700: cannot write (sop=%s): %s", sop_instance_uid, exc.strerror or exc)
            return StoreOutcome(OUT_OF_RESOURCES)
        with self._held_lock:
            self._held[sop_instance_uid] = final
        size = len(file_header) + len(dataset)
        return StoreOutcome(SUCCESS, instance=replace(instance, path=final, size_bytes=size))

    @staticmethod
    def _conflict(instance: ReceivedInstance, reason: str, calling_ae_title: str | None) -> InstanceConflict:
        return InstanceConflict(
            instance.sop_instance_uid, instance.study_uid, instance.series_uid, reason, calling_ae_title
        )


def _dataset_of(path: Path) -> bytes | None:
    """A spooled file's dataset bytes (what follows its File Meta group), as the peer sent them."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    return data[144 + int.from_bytes(data[140:144], "little") :]


def instance_limits(dicom: DicomSettings) -> InstanceLimits:
    """The spool's :class:`InstanceLimits` from ``dicom.max_inflated_mb`` / ``max_sequence_depth`` /
    ``max_element_mb``."""
    mib = 1024 * 1024
    return InstanceLimits(
        max_inflated_bytes=dicom.max_inflated_mb * mib,
        max_sequence_depth=dicom.max_sequence_depth,
        max_element_bytes=dicom.max_element_mb * mib,
    )


def describe_file(path: Path) -> ReceivedInstance:
    """Re-read a spooled file (crash recovery); raises :class:`HeaderError` when it cannot be filed."""
    header, transfer_syntax = read_file_header(path)
    return describe(header, path, path.stat().st_size, transfer_syntax, None)
