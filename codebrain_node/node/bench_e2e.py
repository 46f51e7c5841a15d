"""``codebrain-node bench e2e``: seconds from the last instance received to the synthetic series acknowledged by PACS.

A phantom study (T1, T2, FLAIR) is sent by DCMTK ``storescu`` to a real node (receiver, recorder, scheduler,
engine thread, exporter) whose PACS is DCMTK ``storescp`` on loopback. Every timestamp comes from the node's own
database, on one clock: the study's last received instance, its audit trail (stable, imputing, written) and the
moment the last export was acknowledged. The quiet period is part of the figure (DICOM has no end-of-study
message), so it is printed beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
import SimpleITK as sitk
from sqlalchemy import func, select

from codebrain_node.config import DicomDestinationSettings, Settings, local_node_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import AuditEvent, Export, Job, Series, Study, StudyState, as_utc
from codebrain_node.engine.weights import LoadedModel, load_model
from codebrain_node.node.serve import Node
from codebrain_node.phantom.case import PHANTOM_FILE_STEMS, make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from codebrain_node.receive.bench import free_port
from codebrain_node.resources import model_config_file

STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
ECHOSCU = Path("/usr/bin/echoscu")
SCANNER_AE = "STORESCU"
PACS_AE = "BENCHPACS"
DONE = {StudyState.EXPORTED, StudyState.FAILED, StudyState.DEAD_LETTER, StudyState.IGNORED}


@dataclass
class E2EResult:
    """One study's path through the node, in seconds after its last instance was received."""

    slices: int
    targets: list[str]
    quiet_period_s: float
    stable_s: float
    claimed_s: float
    written_s: float
    acknowledged_s: float
    job_timings: dict[str, float]
    device: str


def random_init_model(config: str, folder: Path, device: str) -> LoadedModel:
    """A random-init checkpoint of ``configs/model/<config>.toml`` (or a TOML path): timings without trained weights."""
    from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint

    path = model_config_file(config)
    network = CodeBrain(ModelConfig.from_toml(path)).eval()
    checkpoint = save_inference_checkpoint(
        network, folder / "random-init.safetensors", {"model_name": f"random-{path.stem}", "model_version": "0"}
    )
    return load_model(checkpoint, device)


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def _start_storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(STORESCP), "-aet", PACS_AE, "-od", str(folder), str(port)]
    process = subprocess.Popen(command, env=_dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        echo = [str(ECHOSCU), "-aet", "PROBE", "-aec", PACS_AE, "127.0.0.1", str(port)]
        if subprocess.run(echo, env=_dcmtk_env(), capture_output=True, timeout=10, check=False).returncode == 0:
            return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("storescp did not start")


def _bench_settings(settings: Settings, data_dir: Path, pacs_port: int, quiet_period_s: float) -> Settings:
    pacs = DicomDestinationSettings(name="pacs", ae_title=PACS_AE, host="127.0.0.1", port=pacs_port)
    local = local_node_settings(settings, data_dir, pacs, quiet_period_s=quiet_period_s, callers=[SCANNER_AE])
    local.routing.check_interval_s = 0.1
    local.engine.poll_interval_s = 0.1
    return local


def _since(moment: datetime | None, start: datetime) -> float:
    return (as_utc(moment) - start).total_seconds() if moment is not None else float("nan")


def _result(node: Node, study_uid: str, quiet_period_s: float, device: str) -> E2EResult:
    with node.factory() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        start = as_utc(study.last_received_at)

        def first(action: str) -> datetime | None:
            query = select(func.min(AuditEvent.at)).where(AuditEvent.study_id == study.id, AuditEvent.action == action)
            return session.scalar(query)

        acknowledged = session.scalar(select(func.max(Export.sent_at)).join(Series).where(Series.study_id == study.id))
        job = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc())).first()
        reference_slices = max(len(s.instances) for s in study.series if not s.is_synthetic)
        return E2EResult(
            slices=reference_slices,
            targets=list(job.targets) if job else [],
            quiet_period_s=quiet_period_s,
            stable_s=_since(first("state:stable"), start),
            claimed_s=_since(first("state:imputing"), start),
            written_s=_since(first("state:written"), start),
            acknowledged_s=_since(acknowledged, start),
            job_timings=dict(job.timings or {}) if job else {},
            device=device,
        )


def bench_e2e(
    settings: Settings,
    *,
    model: LoadedModel | None = None,
    resolution_mm: float = 2.0,
    quiet_period_s: float = 2.0,
    repeats: int = 2,
    timeout_s: float = 1800.0,
    inputs: Sequence[Contrast] = (Contrast.T1, Contrast.T2, Contrast.FLAIR),
    images: Mapping[Contrast, sitk.Image] | None = None,
    progress: Callable[[str], None] = print,
) -> list[E2EResult]:
    """Send ``repeats`` phantom studies one after the other and time each through the node to the PACS.

    ``inputs``: the contrasts the scanner sends (the node synthesises the rest its routing asks for).
    ``images`` (co-registered volumes by contrast) replaces the phantom simulation, e.g. in tests.
    """
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not tool.exists():
            raise RuntimeError(f"bench e2e needs DCMTK ({tool} is missing)")
    model = model or load_model(settings.model.weights, settings.model.device, settings.model.precision)
    work = Path(tempfile.mkdtemp(prefix="codebrain-bench-e2e-"))
    results = []
    try:
        if images is None:
            names = ", ".join(c.value for c in inputs)
            progress(f"simulating a {resolution_mm:g} mm phantom study ({names}) ...")
            images = make_phantom_case(list(inputs), seed=1, resolution_mm=resolution_mm).images
        pacs_port = free_port()
        pacs = _start_storescp(work / "pacs", pacs_port)
        local = _bench_settings(settings, work / "node", pacs_port, quiet_period_s)
        node = Node(local, engine_mode="thread", model=model, review=False).start()
        try:
            for repeat in range(repeats):
                scanner = write_dicom_study(images, work / f"scanner-{repeat}", seed=1000 + repeat)
                study_uid = str(pydicom.dcmread(next(scanner.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
                command = [str(STORESCU), "-aet", SCANNER_AE, "-aec", local.dicom.ae_title, "127.0.0.1"]
                command += [str(node.port), "--scan-directories", "--recurse", str(scanner)]
                sent = subprocess.run(command, env=_dcmtk_env(), capture_output=True, text=True, check=False)
                if sent.returncode != 0:
                    raise RuntimeError(f"storescu failed: {sent.stderr.strip()[:300]}")
                state = _wait(node, study_uid, timeout_s)
                if state is not StudyState.EXPORTED:
                    raise RuntimeError(f"the study ended {state.value}, not exported")
                results.append(_result(node, study_uid, quiet_period_s, str(model.device)))
                progress(format_e2e([results[-1]], header=repeat == 0))
        finally:
            node.stop()
            pacs.terminate()
            pacs.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def read_case(folder: Path, contrasts: Sequence[Contrast]) -> dict[Contrast, sitk.Image]:
    """The volumes of a BraTS-layout case (``<case>-t1n.nii.gz`` or ``t1n.nii.gz`` …), e.g. a real 155-slice one."""
    images = {}
    for contrast in contrasts:
        stem = PHANTOM_FILE_STEMS[contrast]
        matches = sorted(Path(folder).glob(f"*{stem}.nii*"))
        if not matches:
            raise FileNotFoundError(f"{folder} has no {stem}.nii.gz for {contrast.value}")
        images[contrast] = sitk.ReadImage(str(matches[0]), sitk.sitkFloat32)
    return images


def _wait(node: Node, study_uid: str, timeout_s: float) -> StudyState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with node.factory() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
            if study is not None and StudyState(study.state) in DONE:
                return StudyState(study.state)
        time.sleep(0.05)
    raise TimeoutError(f"the study did not finish within {timeout_s:.0f} s")


def format_e2e(results: list[E2EResult], header: bool = True) -> str:
    """A small table: when each stage was reached, in seconds after the last instance was received."""
    lines = []
    if header:
        lines.append(
            f"{'slices':>6} {'targets':<12} {'device':<6} {'quiet':>6} {'stable':>7} {'claimed':>8} "
            f"{'written':>8} {'PACS ack':>9} | {'load':>5} {'prep':>5} {'model':>6} {'write':>6}"
        )
    for r in results:
        t = r.job_timings
        lines.append(
            f"{r.slices:>6} {','.join(r.targets):<12} {r.device:<6} {r.quiet_period_s:>6.1f} {r.stable_s:>7.2f} "
            f"{r.claimed_s:>8.2f} {r.written_s:>8.2f} {r.acknowledged_s:>9.2f} | {t.get('load_s', 0):>5.2f} "
            f"{t.get('preprocess_s', 0):>5.2f} {t.get('model_s', 0):>6.2f} {t.get('write_s', 0):>6.2f}"
        )
    return "\n".join(lines)
