"""``codebrain-node impute``: the node's own pipeline on a folder of DICOM files, with no network.

The files go through the same stages as received instances — spool, record, classify and route, engine,
writer, folder export — in a throw-away node (its own data folder and SQLite database), so an offline result is
exactly what ``serve`` would have sent to PACS.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from codebrain_node.config import FolderDestinationSettings, Settings, local_node_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import Series, Study, utcnow
from codebrain_node.db.session import make_engine, session_factory, upgrade
from codebrain_node.engine.weights import LoadedModel, load_model
from codebrain_node.engine.worker import Engine
from codebrain_node.export.dispatch import run_due_exports
from codebrain_node.receive.recorder import record_batch
from codebrain_node.receive.spool import SUCCESS, Spool
from codebrain_node.route.stable import check_stable_studies

log = logging.getLogger(__name__)


@dataclass
class OfflineResult:
    """What one offline run did, per study."""

    studies: dict[str, str] = field(default_factory=dict)  # study UID → final state
    written: dict[str, list[str]] = field(default_factory=dict)  # study UID → synthetic contrasts
    skipped_files: list[str] = field(default_factory=list)
    output: Path | None = None


def impute_folder(
    settings: Settings,
    input_dir: Path,
    output_dir: Path,
    *,
    synthesize: list[Contrast] | None = None,
    model: LoadedModel | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> OfflineResult:
    """Impute every study found under ``input_dir``; synthetic series land in ``output_dir/<study>/<series>/``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    model = model or load_model(settings.model.weights, settings.model.device, settings.model.precision)
    result = OfflineResult(output=output_dir)
    with tempfile.TemporaryDirectory(prefix="codebrain-impute-") as work:
        local = _offline_settings(settings, Path(work), output_dir, synthesize)
        db = make_engine(local.database_url)
        upgrade(db)
        factory = session_factory(db)
        spool = Spool(local.paths.data_dir)
        instances = []
        for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
            try:
                data = path.read_bytes()
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
                outcome = spool.store(
                    _dataset_bytes(data),
                    sop_class_uid=str(dataset.SOPClassUID),
                    sop_instance_uid=str(dataset.SOPInstanceUID),
                    transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
                )
            except (InvalidDicomError, AttributeError, OSError) as error:
                result.skipped_files.append(f"{path.name}: {type(error).__name__}")
                continue
            if outcome.status != SUCCESS:
                result.skipped_files.append(f"{path.name}: status 0x{outcome.status:04X}")
            elif outcome.instance is not None:
                instances.append(outcome.instance)
        record_batch(factory, instances)
        progress(f"read {len(instances)} instance(s); {len(result.skipped_files)} file(s) skipped")
        check_stable_studies(factory, local, list(model.contrasts), now=utcnow() + timedelta(days=1))
        engine = Engine(local, factory, model=model, name="offline")
        while engine.run_once():
            progress("imputed one study")
        while run_due_exports(factory, local):
            pass
        with factory() as session:
            for study in session.scalars(select(Study)):
                result.studies[study.study_instance_uid] = str(study.state)
                result.written[study.study_instance_uid] = sorted(
                    s.contrast
                    for s in session.scalars(
                        select(Series).where(
                            Series.study_id == study.id, Series.is_synthetic, Series.describes_series_id.is_(None)
                        )
                    )
                    if s.contrast
                )
        db.dispose()
    return result


def _offline_settings(settings: Settings, work: Path, output_dir: Path, synthesize: list[Contrast] | None) -> Settings:
    output = FolderDestinationSettings(name="output", path=output_dir)
    local = local_node_settings(settings, work, output, quiet_period_s=0.0)
    if synthesize:
        local.routing.synthesize = synthesize
    return local


def _dataset_bytes(part10: bytes) -> bytes:
    """A Part 10 file's dataset exactly as a peer would send it: the preamble and File Meta group stripped.

    The File Meta group starts with its own length, (0002,0000) UL, in explicit VR little endian (PS3.10 7.1).
    """
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise InvalidDicomError("not a DICOM Part 10 file with a File Meta group length")
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]
