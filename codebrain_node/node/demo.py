"""``codebrain-node demo``: the whole node on one machine, with nothing to set up.

A phantom "scanner" study (T1, T2, FLAIR; no post-contrast T1) is sent by C-STORE over one association to a real
node — receiver, recorder, stable-study scheduler, queue, engine, writer, exporter — whose PACS is a local folder.
The node waits for the association's release before the quiet period even starts, so the study is one job however
slow the machine is. The demo waits for the study's final state (settled, nothing open, queued or unsent), then
reports and draws only the current synthetic series (a superseded one is never shown as a result).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from codebrain_node.config import FolderDestinationSettings, Settings, local_node_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.associations import holds_of
from codebrain_node.db.models import Export, ExportStatus, Job, JobStatus, Series, Study, StudyState
from codebrain_node.db.superseding import current_synthetic
from codebrain_node.engine.weights import load_model
from codebrain_node.imaging.series_io import read_dicom_files
from codebrain_node.node.serve import Node
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study

matplotlib.use("Agg")
import matplotlib.pyplot as plt

log = logging.getLogger(__name__)

DEMO_CALLER = "DEMOSCANNER"
SETTLED = {StudyState.EXPORTED, StudyState.FAILED, StudyState.DEAD_LETTER, StudyState.IGNORED}
#: Jobs that ran (a withdrawn one never did).
RAN = (JobStatus.DONE, JobStatus.FAILED, JobStatus.RUNNING)


@dataclass
class DemoResult:
    folder: Path
    pacs: Path
    contact_sheet: Path
    state: str
    #: Series description → its folder in the PACS, for the current synthetic series only.
    synthetic: dict[str, Path]
    seconds: float
    #: Jobs that ran for the study (one, unless the machine split it) and synthetic series superseded.
    jobs: int = 0
    superseded: int = 0


def run_demo(
    settings: Settings,
    folder: Path | None = None,
    *,
    acquired: tuple[Contrast, ...] = (Contrast.T1, Contrast.T2, Contrast.FLAIR),
    resolution_mm: float = 1.0,
    timeout_s: float = 1800.0,
    progress: Callable[[str], None] = print,
) -> DemoResult:
    """Make a study, send it through a node, wait for the synthetic series, draw the contact sheet."""
    started = time.perf_counter()
    folder = Path(folder or settings.paths.data_dir / "demo")
    if folder.exists():
        shutil.rmtree(folder)
    scanner, pacs = folder / "scanner", folder / "pacs"
    model = load_model(settings.model.weights, settings.model.device, settings.model.precision)
    progress(f"model {model.name} {model.version} ({', '.join(model.contrasts)}) on {model.device}")

    progress("simulating a phantom study (MNI152 anatomy, glioma-like lesion) ...")
    case = make_phantom_case(list(acquired), seed=7, anatomy="mni", resolution_mm=resolution_mm)
    write_dicom_study(case.images, scanner, seed=7)
    files = sorted(p for p in scanner.rglob("*.dcm"))

    local = _demo_settings(settings, folder / "node", pacs)
    node = Node(local, engine_mode="thread", model=model, review=False).start()
    try:
        progress(f"node {local.dicom.ae_title} listening on 127.0.0.1:{node.port}; sending {len(files)} instances")
        _send(files, node.port, local.dicom.ae_title)
        if node.receive is not None:
            node.receive.recorder.flush(timeout=60)  # the release is on record before we look
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        final = _wait_for_final_state(node, study_uid, timeout_s, progress)
    finally:
        node.stop()

    current = {
        description: pacs / study_uid / series_uid
        for description, series_uid in final.current.items()
        if (pacs / study_uid / series_uid).is_dir()
    }
    sheet = contact_sheet(
        {_description(d): sorted(d.glob("*.dcm")) for d in sorted(p for p in scanner.iterdir() if p.is_dir())},
        {name: sorted(d.glob("*.dcm")) for name, d in current.items()},
        folder / "contact_sheet.png",
    )
    return DemoResult(
        folder, pacs, sheet, final.state, current, time.perf_counter() - started, final.jobs, final.superseded
    )


def _demo_settings(settings: Settings, data_dir: Path, pacs: Path) -> Settings:
    folder_pacs = FolderDestinationSettings(name="pacs", path=pacs)
    local = local_node_settings(settings, data_dir, folder_pacs, quiet_period_s=2.0, callers=[DEMO_CALLER])
    local.routing.check_interval_s = 0.5
    return local


def _send(files: list[Path], port: int, called_ae: str) -> None:
    """The scanner's side: one association, every instance, stop at the first refusal."""
    ae = AE(ae_title=DEMO_CALLER)
    ae.add_requested_context(MRImageStorage)
    association = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not association.is_established:
        raise RuntimeError("the demo node refused the association")
    try:
        for path in files:
            status = association.send_c_store(pydicom.dcmread(path))
            if getattr(status, "Status", None) != 0x0000:
                raise RuntimeError(f"the node refused {path.name}")
    finally:
        association.release()


@dataclass
class FinalState:
    state: str
    #: Series description → Series Instance UID of each current synthetic series.
    current: dict[str, str]
    jobs: int
    superseded: int


def _wait_for_final_state(node: Node, study_uid: str, timeout_s: float, progress: Callable[[str], None]) -> FinalState:
    """Wait until the study is settled and nothing about it can still change: no association that delivered it
    open, no job queued or running, no delivery pending; then say what it holds."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        with node.factory() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            state = StudyState(study.state) if study else None
            if state != last and state is not None:
                progress(f"study state: {state.value}")
                last = state
            if study is not None and state in SETTLED and _nothing_in_flight(session, study):
                return _final(session, study)
        time.sleep(0.5)
    raise TimeoutError(f"the study did not finish within {timeout_s:.0f} s (last state: {last})")


def _nothing_in_flight(session: Session, study: Study) -> bool:
    hold = holds_of(session, [study.id]).get(study.id)
    if hold is not None and hold.open:
        return False
    busy_job = session.scalars(
        select(Job.id).where(Job.study_id == study.id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
    ).first()
    pending = session.scalars(
        select(Export.id).join(Series).where(Series.study_id == study.id, Export.status == ExportStatus.PENDING)
    ).first()
    return busy_job is None and pending is None


def _final(session: Session, study: Study) -> FinalState:
    current = {
        s.series_description or s.series_instance_uid: s.series_instance_uid
        for s in current_synthetic(session, study.id)
    }
    jobs = len(session.scalars(select(Job.id).where(Job.study_id == study.id, Job.status.in_(RAN))).all())
    superseded = len(
        session.scalars(
            select(Series.id).where(Series.study_id == study.id, Series.is_synthetic, Series.superseded_at.is_not(None))
        ).all()
    )
    return FinalState(str(StudyState(study.state).value), current, jobs, superseded)


def _description(series_dir: Path) -> str:
    return str(pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True).SeriesDescription)


def contact_sheet(inputs: dict[str, list[Path]], outputs: dict[str, list[Path]], target: Path) -> Path:
    """Three axial levels (rows) of every input and every synthetic series (columns), each windowed alike."""
    columns = [(f"acquired: {name}", paths) for name, paths in inputs.items()]
    columns += [(name, paths) for name, paths in outputs.items()]
    volumes = [(title, _volume(paths)) for title, paths in columns]
    depth = min(volume.shape[0] for _, volume in volumes)
    levels = [int(depth * fraction) for fraction in (0.35, 0.5, 0.65)]
    figure, axes = plt.subplots(len(levels), len(volumes), figsize=(3 * len(volumes), 3 * len(levels)))
    axes = np.atleast_2d(axes)
    for column, (title, volume) in enumerate(volumes):
        low, high = np.percentile(volume, (1, 99.5))
        for row, level in enumerate(levels):
            index = min(round(level * volume.shape[0] / depth), volume.shape[0] - 1)
            axes[row, column].imshow(volume[index], cmap="gray", vmin=low, vmax=high)
            axes[row, column].axis("off")
        axes[0, column].set_title(title, fontsize=9, color="red" if "SYNTHETIC" in title else "black")
    figure.suptitle("codebrain-node demo: acquired inputs (left) and SYNTHETIC outputs (red) — not for diagnosis")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    plt.close(figure)
    return target


def _volume(paths: list[Path]) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(read_dicom_files(paths)).astype(np.float32)
