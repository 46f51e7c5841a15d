"""The imputation engine: claim a job → load series → preprocess → model → invert → write → hand to export.

A worker is a loop over the database queue (``db/jobs.py``); several workers, on one machine or many sharing
a PostgreSQL queue and a shared data folder, never run one job twice. Everything a job needs is in the database
and on disk, so a worker that dies loses nothing: its lease expires and another worker retries the job.

Each step is one transaction: the claim; the inputs read and any left out audited; and the result — job DONE,
the synthetic series recorded from what the writer reports, the earlier synthetic series of the same contrasts
superseded (a job made again from changed inputs replaces them: a new series number, a description naming the
one it replaces), the study approved or sent to review. If acquired instances arrived while the job ran, the
result goes back to ``receiving`` with the study instead (the scheduler plans it again with the late series, and
nothing of this result is sent before). The exporter picks approved studies up from the database; the engine
never calls it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node import metrics
from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db import jobs
from codebrain_node.db.lifecycle import apply_export_policy, audit, reopen_if_settled, transition
from codebrain_node.db.models import Instance, Job, JobStatus, Series, Study, StudyState, as_utc
from codebrain_node.db.session import transaction
from codebrain_node.db.superseding import current_synthetic, supersede
from codebrain_node.engine.weights import LoadedModel, load_model
from codebrain_node.imaging.preprocess import (
    REFERENCE_PREFERENCE,
    choose_reference,
    prepare_study,
    restore,
    restore_map,
    serving_size,
)
from codebrain_node.imaging.series_io import DicomSeries, UnusableSeriesError, read_dicom_series
from codebrain_node.write.parametric_map import WrittenParametricMap, confidence_series_number, write_confidence_map
from codebrain_node.write.synthetic_series import WrittenSeries, write_synthetic_series

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    written: dict[Contrast, WrittenSeries] = field(default_factory=dict)
    #: The confidence of each written series as a Parametric Map, when the model gives one.
    confidence_maps: dict[Contrast, WrittenParametricMap] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: What the brain extraction did (``engine.brain_extraction``), one line for the job's log and audit; "" when off.
    brain_extraction: str = ""


@dataclass(frozen=True)
class Numbering:
    """Series numbers already used in the study, and the current synthetic series each target replaces."""

    taken: frozenset[int] = frozenset()
    replaces: Mapping[Contrast, int] = field(default_factory=dict)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10000}"


def load_inputs(session: Session, job: Job, data_dir: Path) -> tuple[dict[Contrast, DicomSeries], list[str]]:
    """Read every input series of ``job`` from the spool: the usable ones, and why the others were left out.

    A series that cannot be one volume (:class:`UnusableSeriesError`) is left out and the job goes on with the
    rest, as a radiologist would rather have a result from the good series; with none left the job fails. So is
    one whose files cannot be read for what they hold (a slice the receiver could not check: a garbled position
    in a deflated instance, no pixel data): the same files fail the same way, so retrying cannot help. Only an
    OSError (a shared folder away for a moment) or running out of memory fails the attempt, to be retried.
    """
    inputs: dict[Contrast, DicomSeries] = {}
    skipped: list[str] = []
    for name, series_uid in job.inputs.items():
        series = session.scalars(select(Series).where(Series.series_instance_uid == series_uid)).one()
        try:
            loaded = read_dicom_series([instance.file_in(data_dir) for instance in series.instances])
        except UnusableSeriesError as error:
            skipped.append(f"{name} series #{series.series_number}: {error}")
            continue
        except (OSError, MemoryError):
            raise
        except Exception as error:  # what the files hold, not the moment: the series is left out, never retried
            reason = f"unreadable ({type(error).__name__}: {str(error)[:200]})"
            skipped.append(f"{name} series #{series.series_number}: {reason}")
            continue
        if loaded.missing_slices:
            log.warning(
                "job %s: %s series #%s lacks %d slice(s); interpolated",
                job.id,
                name,
                series.series_number,
                loaded.missing_slices,
            )
        inputs[Contrast(name)] = loaded
    if not inputs:
        raise UnusableSeriesError("; ".join(skipped))
    return inputs, skipped


def run_model(
    model: LoadedModel,
    stacked: np.ndarray,
    available: Sequence[Contrast],
    batch_size: int,
    present: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the network over every slice. ``stacked``: [N_avail, Z, H, W] in [0, 1] in ``available`` order.

    ``present`` (bool [Z]): the slices with head (or brain) in them; the others get no synthetic content (zero,
    as the background the model was trained to draw) and cost no forward pass: a 155-slice BraTS volume has 18
    empty slices. Returns every model contrast [N_model, Z, H, W] and the confidence [Z, H, W] when the model
    gives one (zero on empty slices).
    """
    order = model.contrasts
    _, depth, height, width = stacked.shape
    chosen = np.flatnonzero(present) if present is not None else np.arange(depth)
    output = np.zeros((len(order), depth, height, width), dtype=np.float32)
    for index, contrast in enumerate(available):
        output[order.index(contrast)] = stacked[index]  # available contrasts pass through, as impute() does
    images = torch.zeros((len(chosen), len(order), height, width), dtype=torch.float32)
    mask = torch.zeros((len(chosen), len(order)), dtype=torch.bool)
    for index, contrast in enumerate(available):
        slot = order.index(contrast)
        images[:, slot] = torch.from_numpy(stacked[index][chosen])
        mask[:, slot] = True
    confidence = None
    for start in range(0, len(chosen), batch_size):
        batch = images[start : start + batch_size].to(model.device)
        batch_mask = mask[start : start + batch_size].to(model.device)
        if model.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        result = model.network.impute(batch, batch_mask)
        slices = chosen[start : start + batch_size]
        output[:, slices] = result.images.float().cpu().permute(1, 0, 2, 3).numpy()
        if result.confidence is not None:
            if confidence is None:
                confidence = np.zeros((depth, height, width), dtype=np.float32)
            confidence[slices] = result.confidence[:, 0].float().cpu().numpy()
    return output, confidence


def impute_study(
    inputs: dict[Contrast, DicomSeries],
    targets: Sequence[Contrast],
    model: LoadedModel,
    out_dir: Path,
    batch_size: int,
    image_size: int,
    numbering: Numbering | None = None,
    brain_extraction: str = "off",
) -> JobResult:
    """The pure pipeline of one job (no database): preprocess → model → invert → write, timed per stage. When the
    model gives a confidence, each series gets its confidence map beside it (``confidence.npy`` for the review page,
    and a Parametric Map series for PACS).

    ``numbering``: the study's used series numbers (a new series never takes one) and, per target, the number of
    the earlier synthetic series it replaces. ``brain_extraction`` (``engine.brain_extraction``): ``deepbet``
    gives the model the brain only, and the synthetic series are zero outside it (imaging/preprocess.py).
    """
    numbering = numbering or Numbering()
    result = JobResult()
    clock = time.perf_counter()
    available = [contrast for contrast in REFERENCE_PREFERENCE if contrast in inputs]
    available += [contrast for contrast in inputs if contrast not in available]
    reference = choose_reference(available)
    prepared = prepare_study(
        {c: inputs[c].image for c in available},
        reference,
        size=serving_size(inputs[reference].image, minimum=image_size),
        register=True,
        brain_extraction=brain_extraction,
    )
    if prepared.brain_extraction is not None:
        result.brain_extraction = prepared.brain_extraction.describe()
    stacked = np.stack([prepared.arrays[prepared.contrasts.index(c)] for c in available])
    result.timings["preprocess_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    present = prepared.brain_mask.any(axis=(1, 2))
    output, confidence = run_model(model, stacked, available, batch_size, present)
    result.timings["model_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    order = model.contrasts
    reference_datasets = inputs[reference].headers
    on_reference = inputs[reference].slice_index
    sources = {contrast: inputs[contrast].headers for contrast in available}
    # only the slices of acquired reference images are written (not those interpolated into a gap)
    restored_confidence = None if confidence is None else restore_map(prepared, confidence)[on_reference]
    taken = set(numbering.taken)
    for number, target in enumerate(targets, start=1):
        series_number = _series_number(reference_datasets, number, taken)
        taken.add(series_number)
        restored = restore(prepared, output[order.index(target)])
        pixels = sitk.GetArrayFromImage(restored).astype(np.float32)[on_reference]
        result.written[target] = write_synthetic_series(
            reference=reference_datasets,
            pixels=pixels,
            contrast=target,
            model_name=model.name,
            model_version=model.version,
            sources=sources,
            out_dir=out_dir,
            series_number=series_number,
            confidence=restored_confidence,
            replaces=numbering.replaces.get(target),
        )
        if restored_confidence is not None:
            map_number = confidence_series_number(series_number, taken)
            taken.add(map_number)
            result.confidence_maps[target] = write_confidence_map(
                result.written[target],
                restored_confidence,
                out_dir,
                model_name=model.name,
                model_version=model.version,
                series_number=map_number,
            )
    result.timings["write_s"] = time.perf_counter() - clock
    return result


def _series_number(reference: Sequence[pydicom.Dataset], offset: int, taken: set[int] | None = None) -> int:
    """Synthetic series sort after the reference in viewers: 1000 + 10 x reference number + offset, then + 100
    until the number is not yet used in the study (a replacement never reuses the number of what it replaces)."""
    base = int(getattr(reference[0], "SeriesNumber", 0) or 0)
    number = 1000 + base * 10 + offset
    while taken and number in taken:
        number += 100
    return number


def record_written_series(
    session: Session,
    study: Study,
    written: Mapping[Contrast, WrittenSeries],
    confidence_maps: Mapping[Contrast, WrittenParametricMap] | None = None,
) -> list[Series]:
    """Register the synthetic series so export, review and status see them (they are never model inputs), each
    with its confidence map's series as one that describes it (exported, superseded and withdrawn with it).
    Returns the synthetic series (not the maps)."""
    created = []
    for contrast, series_written in written.items():
        series = Series(
            study=study,
            series_instance_uid=series_written.series_instance_uid,
            modality="MR",
            series_number=series_written.series_number,
            series_description=series_written.series_description,
            frame_of_reference_uid=series_written.frame_of_reference_uid,
            contrast=contrast.value,
            classification_reason="written by this node (Synthetic Data = YES)",
            is_synthetic=True,
        )
        series.instances = [
            Instance(
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                instance_number=instance.instance_number,
                path=str(instance.path),
                size_bytes=instance.size_bytes,
            )
            for instance in series_written.instances
        ]
        session.add(series)
        created.append(series)
        confidence_map = (confidence_maps or {}).get(contrast)
        if confidence_map is not None:
            _record_confidence_map(session, study, series, confidence_map)
    return created


def _record_confidence_map(session: Session, study: Study, series: Series, written: WrittenParametricMap) -> Series:
    session.flush()  # the synthetic series' id, for the map's link to it
    confidence_map = Series(
        study=study,
        series_instance_uid=written.series_instance_uid,
        modality="OT",  # what highdicom writes in a Parametric Map's Modality
        series_number=written.series_number,
        series_description=written.series_description,
        frame_of_reference_uid=written.frame_of_reference_uid,
        contrast=series.contrast,
        classification_reason=f"written by this node: confidence of series #{series.series_number}",
        is_synthetic=True,
        describes_series_id=series.id,
    )
    instance = written.instance
    confidence_map.instances = [
        Instance(
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            instance_number=instance.instance_number,
            path=str(instance.path),
            size_bytes=instance.size_bytes,
        )
    ]
    session.add(confidence_map)
    return confidence_map


def supersede_replaced(session: Session, study: Study, new_series: Sequence[Series], job: Job, actor: str) -> None:
    """The earlier current synthetic series of each contrast a job made again are superseded by the new one."""
    session.flush()
    inputs = ", ".join(sorted(job.inputs or {}))
    by_contrast = {series.contrast: series for series in new_series}
    for series in current_synthetic(session, study.id):
        replacement = by_contrast.get(series.contrast)
        if replacement is None or replacement.id == series.id:
            continue
        reason = f"replaced by series #{replacement.series_number} (inputs {inputs})"
        supersede(session, series, by=replacement, reason=reason, actor=actor)


def acquired_since(session: Session, study: Study, moment: datetime) -> bool:
    """Did an acquired instance of ``study`` arrive after ``moment`` (while its job waited or ran)?"""
    moment = as_utc(moment)
    query = (
        select(Instance.id)
        .join(Series)
        .where(Series.study_id == study.id, Series.is_synthetic.is_(False), Instance.received_at > moment)
        .limit(1)
    )
    return session.scalars(query).first() is not None


def study_numbering(session: Session, study: Study, targets: Sequence[Contrast]) -> Numbering:
    """The numbers the study's series use, and the current synthetic series of each target (what it replaces)."""
    taken = frozenset(
        number
        for number in session.scalars(select(Series.series_number).where(Series.study_id == study.id))
        if number is not None
    )
    wanted = {target.value: target for target in targets}
    replaces = {
        wanted[series.contrast]: series.series_number
        for series in current_synthetic(session, study.id)
        if series.contrast in wanted and series.series_number is not None
    }
    return Numbering(taken=taken, replaces=replaces)


class Engine:
    """One worker. ``run`` loops until ``stop`` is set; ``run_once`` does at most one job (for tests, `impute`)."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        model: LoadedModel | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.name = name or worker_name()
        self._model = model

    @property
    def model(self) -> LoadedModel:
        """Loaded on first use, so a node with an empty queue starts fast."""
        if self._model is None:
            self._model = load_model(
                self.settings.model.weights, self.settings.model.device, self.settings.model.precision
            )
        return self._model

    def run(self, stop: threading.Event) -> None:
        log.info("engine worker %s started", self.name)
        while not stop.is_set():
            with transaction(self.factory) as session:
                jobs.requeue_expired_leases(session, self.settings.engine.lease_timeout_s)
            if not self.run_once():
                stop.wait(self.settings.engine.poll_interval_s)
        log.info("engine worker %s stopped", self.name)

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue is empty."""
        with transaction(self.factory) as session:
            job = jobs.claim_next_job(session, self.name)
            if job is None:
                return False
            job_id, attempt = job.id, job.attempts
        started = time.perf_counter()
        beat = _Heartbeat(self.factory, job_id, interval=max(1.0, self.settings.engine.lease_timeout_s / 4))
        beat.start()
        try:
            result = self._run(job_id)
        except UnusableSeriesError as error:
            log.warning("job %s failed: %s", job_id, error)
            self._fail(job_id, str(error), permanent=True)
            return True
        except Exception as error:  # any failure of one job must not stop the worker
            log.exception("job %s failed on attempt %s", job_id, attempt)
            self._fail(job_id, f"{type(error).__name__}: {error}")
            return True
        finally:
            beat.stop()
        result.timings["total_s"] = time.perf_counter() - started
        try:
            self._record(job_id, result)
        except jobs.LeaseLostError:
            log.warning("job %s: lease lost while running; another worker retries it, this result is dropped", job_id)
            return True
        except Exception as error:
            log.exception("job %s: could not record its result", job_id)
            self._fail(job_id, f"recording failed: {type(error).__name__}: {error}")
            return True
        metrics.observe_job_timings(result.timings)
        log.info(
            "job %s done: %s in %.1f s",
            job_id,
            ", ".join(c.value for c in result.written),
            result.timings["total_s"],
        )
        return True

    def _record(self, job_id: int, result: JobResult) -> None:
        """One transaction: the job DONE, its series recorded, the export policy applied."""
        with transaction(self.factory) as session:
            job = jobs.finish_job(
                session,
                job_id,
                timings=result.timings,
                model_name=f"{self.model.name} {self.model.version}",
                worker_id=self.name,
            )
            study = job.study
            actor = f"engine:{self.name}"
            if result.brain_extraction:
                audit(session, actor, "brain_extraction", study, job_id=job.id, result=result.brain_extraction)
            created = record_written_series(session, study, result.written, result.confidence_maps)
            supersede_replaced(session, study, created, job, actor)
            # Instances that arrived while the job ran were not among its inputs: nothing of this result goes out
            # before the study is planned again with them (the late series may be one of the contrasts made here).
            if acquired_since(session, study, job.created_at):
                transition(session, study, StudyState.RECEIVING, actor, job_id=job.id, reason="instances arrived")
            else:
                apply_export_policy(session, study, self.settings.export.policy)

    def _fail(self, job_id: int, error: str, *, permanent: bool = False) -> None:
        """Record the failure; a study that failed for good while a late series arrived is looked at again (the
        late series may be what it lacked)."""
        with transaction(self.factory) as session:
            status = jobs.fail_job(session, job_id, error, worker_id=self.name, permanent=permanent)
            metrics.JOB_FAILURES.labels(JobStatus(status).value).inc()
            job = session.get(Job, job_id)
            if status is JobStatus.FAILED and job is not None and acquired_since(session, job.study, job.created_at):
                reopen_if_settled(session, job.study, actor=f"engine:{self.name}")

    def _run(self, job_id: int) -> JobResult:
        with transaction(self.factory) as session:
            job = session.get(Job, job_id)
            study_uid = job.study.study_instance_uid
            clock = time.perf_counter()
            inputs, skipped = load_inputs(session, job, self.settings.paths.data_dir)
            targets = [Contrast(name) for name in job.targets]
            numbering = study_numbering(session, job.study, targets)
            recorded = set(session.scalars(select(Series.series_instance_uid).where(Series.study_id == job.study_id)))
            for reason in skipped:
                log.warning("job %s: input left out: %s", job.id, reason)
                audit(session, f"engine:{self.name}", "input_skipped", job.study, job_id=job.id, reason=reason)
        load_s = time.perf_counter() - clock
        out_dir = self.settings.paths.data_dir / "synthetic" / study_uid
        remove_unrecorded_series(out_dir, recorded, job_id)
        result = impute_study(
            inputs,
            targets,
            self.model,
            out_dir,
            batch_size=self.settings.model.batch_size,
            image_size=int(getattr(self.model.network.cfg, "image_size", 256)),
            numbering=numbering,
            brain_extraction=self.settings.engine.brain_extraction,
        )
        if result.brain_extraction:
            log.info("job %s: %s", job_id, result.brain_extraction)
        result.timings["load_s"] = load_s
        return result


def remove_unrecorded_series(out_dir: Path, recorded: set[str], job_id: int) -> list[str]:
    """Delete the series folders under ``out_dir`` that no Series row records: what an attempt killed while it
    wrote (or before it recorded its result) left behind. Run before each attempt, so a retried job never leaves
    its predecessor's files; recorded series (current or superseded) are never touched. Returns the folder names
    (Series Instance UIDs, no patient data)."""
    if not out_dir.is_dir():
        return []
    removed = []
    for folder in sorted(out_dir.iterdir()):
        if folder.is_dir() and folder.name not in recorded:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.warning(
            "job %s: removed %d unrecorded synthetic series folder(s) of an interrupted attempt: %s",
            job_id,
            len(removed),
            ", ".join(removed),
        )
    return removed


class _Heartbeat:
    """Tells the queue this worker is alive while a long job runs, so its lease does not expire."""

    def __init__(self, factory: sessionmaker[Session], job_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(factory, job_id, interval), daemon=True)

    def _beat(self, factory: sessionmaker[Session], job_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            with transaction(factory) as session:
                jobs.heartbeat(session, job_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
