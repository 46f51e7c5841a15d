"""End-to-end helpers and fixtures (re-exported by conftest.py): a tiny random-init checkpoint, small phantom studies,
DCMTK senders, an Orthanc PACS.

Everything runs on 127.0.0.1 with free ports; every wait has a deadline. A test whose outside tool (Orthanc,
DCMTK, dciodvfy, PostgreSQL) is missing skips with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
import SimpleITK as sitk
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import DestinationSettings, DicomDestinationSettings, Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import (
    AuditEvent,
    Export,
    ExportKind,
    ExportStatus,
    Job,
    JobStatus,
    Series,
    Study,
    StudyState,
)
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import SeriesLayout, write_dicom_study
from codebrain_node.resources import model_config_file
from tests.dicom_fixtures import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
ECHOSCU = Path("/usr/bin/echoscu")
DCIODVFY = Path("/usr/bin/dciodvfy")
#: Debian's orthanc-dicomweb: QIDO-RS, WADO-RS and STOW-RS under /dicom-web/.
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

SCANNER_AE = "STORESCU"
NODE_AE = "CODEBRAIN"
PACS_AE = "ORTHANC"
#: The model's contrasts: the phantom study acquires T1, T2 and FLAIR, so the node synthesises T1Gd and PD.
MODEL_CONTRASTS = ["T1", "T1Gd", "T2", "PD", "FLAIR"]
ACQUIRED = [Contrast.T1, Contrast.T2, Contrast.FLAIR]
TARGETS = ["PD", "T1Gd"]
#: The small config, narrowed until a CPU runs a 256² slice in milliseconds (random weights: the pipeline is
#: under test, not the images).
TINY_OVERRIDES = {
    "contrasts": MODEL_CONTRASTS,
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    # as the shipped weights: no confidence output, so no confidence map (a Parametric Map series beside each
    # synthetic series; tests/write/test_parametric_map.py runs a node with it on)
    "confidence": False,
    "name": "test-random",
}
#: Axial slices kept from the 4 mm phantom: few slices keep every job at a second or two on a CPU.
SLAB_SLICES = 10


def require(path: Path, what: str) -> None:
    if not path.exists():
        pytest.skip(f"{what} ({path}) is not installed")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout_s`` (and what
    ``explain`` says then: a timeout on a loaded CI machine is otherwise a riddle)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


def study_story(factory: sessionmaker[Session], study_uid: str) -> str:
    """A study's state, jobs, exports and audit trail, one line each (for a timed-out test's message)."""
    with factory() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            return "study not on record"
        lines = [f"state {StudyState(study.state).value}, last received {study.last_received_at}"]
        for job in session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)):
            lines.append(
                f"job {job.id} {JobStatus(job.status).value} inputs {sorted(job.inputs)} targets {job.targets} "
                f"created {job.created_at} error {job.error}"
            )
        exports = select(Export, Series).join(Series).where(Series.study_id == study.id).order_by(Export.id)
        for export, series in session.execute(exports):
            lines.append(
                f"export {export.id} {ExportKind(export.kind).value} {series.contrast} #{series.series_number} "
                f"superseded {series.superseded_at is not None}: {ExportStatus(export.status).value} "
                f"attempts {export.attempts} next {export.next_attempt_at} error {export.last_error}"
            )
        events = select(AuditEvent).where(AuditEvent.study_id == study.id).order_by(AuditEvent.id)
        lines += [f"{event.at} {event.actor} {event.action} {event.details}" for event in session.scalars(events)]
        return "\n".join(lines)


# --- model and phantom ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init inference checkpoint of the small config, narrowed (no trained weights are needed)."""
    base = ModelConfig.from_toml(model_config_file("small")).to_dict()
    cfg = ModelConfig.from_dict({**base, **TINY_OVERRIDES})
    path = tmp_path_factory.mktemp("weights") / "test-random.safetensors"
    torch_seeded = CodeBrain(cfg).eval()
    return save_inference_checkpoint(torch_seeded, path, {"model_name": "test-random", "model_version": "0"})


@pytest.fixture(scope="session")
def phantom_volumes() -> dict[Contrast, sitk.Image]:
    """One 4 mm phantom case (T1, T2, FLAIR), whole head (58 axial slices)."""
    return dict(make_phantom_case(ACQUIRED, seed=11, resolution_mm=4.0).images)


@pytest.fixture(scope="session")
def phantom_images(phantom_volumes: dict[Contrast, sitk.Image]) -> dict[Contrast, sitk.Image]:
    """The phantom cut to a slab of axial slices around the lesion level: a job of a second or two on a CPU."""
    images = {}
    for contrast, image in phantom_volumes.items():
        start = image.GetSize()[2] // 2 - SLAB_SLICES // 2
        images[contrast] = image[:, :, start : start + SLAB_SLICES]
    return images


@pytest.fixture(scope="session")
def make_study(
    phantom_images: dict[Contrast, sitk.Image],
    phantom_volumes: dict[Contrast, sitk.Image],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """``make_study(seed, layouts=None, whole_head=False)`` → a DICOM study folder; each seed is another patient
    and Study Instance UID. ``whole_head`` writes all 58 slices (a job long enough to be interrupted)."""
    made: dict[tuple[int, str, bool], Path] = {}

    def make(seed: int, layouts: dict[Contrast, SeriesLayout] | None = None, whole_head: bool = False) -> Path:
        key = (seed, repr(sorted((c.value, v) for c, v in (layouts or {}).items())), whole_head)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"study-{seed}")
            images = phantom_volumes if whole_head else phantom_images
            made[key] = write_dicom_study(images, folder, seed=seed, layouts=layouts)
        return made[key]

    return make


def study_uid_of(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def series_files(folder: Path, contrast_prefix: str) -> list[Path]:
    """Files of the series folder whose name starts with ``contrast_prefix`` (101_ T1, 201_ T2, 301_ FLAIR)."""
    (series_dir,) = [d for d in folder.iterdir() if d.is_dir() and d.name.startswith(contrast_prefix)]
    return sorted(series_dir.glob("*.dcm"))


# --- node -----------------------------------------------------------------------------------------------------


def node_settings(
    data_dir: Path, weights: Path, destinations: list[DestinationSettings], **overrides: dict[str, Any]
) -> Settings:
    """Settings of a fast node on loopback: short quiet period and checks, tiny backoff, no review app."""
    values: dict[str, Any] = {
        "paths": {"data_dir": str(data_dir)},
        "dicom": {
            "ae_title": NODE_AE,
            "bind_address": "127.0.0.1",
            "port": 0,
            "allowed_callers": [SCANNER_AE],
            "min_free_disk_mb": 0,
            "acse_timeout_s": 10,
            "dimse_timeout_s": 20,
            "network_timeout_s": 20,
        },
        "routing": {"quiet_period_s": 1.5, "check_interval_s": 0.5},
        "export": {
            "policy": "auto",
            "calling_ae_title": NODE_AE,
            "backoff_initial_s": 0.5,
            "backoff_max_s": 1.0,
            "max_attempts": 40,
            "destinations": [d.model_dump(mode="json") for d in destinations],
        },
        "model": {"weights": str(weights), "device": "cpu", "batch_size": 16},
        "engine": {"workers": 1, "poll_interval_s": 0.3},
        "review": {"enabled": False},
    }
    for section, changes in overrides.items():
        values.setdefault(section, {}).update(changes)
    return Settings.model_validate(values)


def study_state(factory: sessionmaker[Session], study_uid: str) -> str | None:
    with factory() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        return str(StudyState(study.state).value) if study else None


# --- DCMTK ----------------------------------------------------------------------------------------------------


def storescu(
    port: int, paths: list[Path], *, called_ae: str = NODE_AE, calling_ae: str = SCANNER_AE, extra: list[str] = ()
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu (by full path: pynetdicom installs a ``storescu`` script of its own) over one association."""
    require(STORESCU, "DCMTK storescu")
    command = [str(STORESCU), "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *[str(p) for p in paths]], capture_output=True, text=True, timeout=120, env=dcmtk_env(), check=False
    )


def echoscu(port: int, calling_ae: str, called_ae: str = NODE_AE) -> subprocess.CompletedProcess[str]:
    require(ECHOSCU, "DCMTK echoscu")
    command = [str(ECHOSCU), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=dcmtk_env(), check=False)


def wait_for_dicom_port(port: int, calling_ae: str = SCANNER_AE, timeout_s: float = 60.0) -> None:
    wait_for(lambda: echoscu(port, calling_ae).returncode == 0, timeout_s, f"a C-ECHO answer on port {port}", 0.3)


class StoreSCP:
    """DCMTK storescp as a PACS: every received instance in its own uniquely named file (duplicates show)."""

    def __init__(
        self,
        folder: Path,
        port: int,
        ae_title: str = "PACS",
        options: Sequence[str] = (),
        ready: Callable[[StoreSCP], None] | None = None,
    ) -> None:
        """``options`` go to storescp before the port (its TLS mode, say); ``ready`` waits until it listens (by
        default a C-ECHO, which a TLS-only storescp cannot answer)."""
        require(STORESCP, "DCMTK storescp")
        self.folder, self.port, self.ae_title = folder, port, ae_title
        folder.mkdir(parents=True, exist_ok=True)
        command = [str(STORESCP), "-aet", ae_title, "-od", str(folder), "--unique-filenames", *options, str(port)]
        self.process = subprocess.Popen(command, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if ready is None:
            wait_for_dicom_port(port, "PROBE", timeout_s=20)
        else:
            ready(self)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --- Orthanc --------------------------------------------------------------------------------------------------


class Orthanc:
    """A throw-away Orthanc (Debian package) on loopback: its own storage, index and free ports; no plugins but
    DICOMweb when ``dicomweb`` (at :attr:`dicomweb_url`). ``users`` (name: password) turn HTTP Basic authentication
    on, for DICOMweb and the REST API alike; this helper's own requests go as the first of them."""

    def __init__(self, folder: Path, *, dicomweb: bool = False, users: Mapping[str, str] | None = None) -> None:
        require(ORTHANC, "Orthanc")
        if dicomweb:
            require(ORTHANC_DICOMWEB, "Orthanc's DICOMweb plugin (Debian orthanc-dicomweb)")
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {
            "Name": "codebrain-e2e",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": PACS_AE,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {"node": [NODE_AE, "127.0.0.1", 104]},
            "Plugins": [str(ORTHANC_DICOMWEB)] if dicomweb else [],
            "StorageCompression": False,
        }
        if dicomweb:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
        if users:
            config["RegisteredUsers"] = dict(users)
        self._headers: dict[str, str] = {}
        if users:
            name, password = next(iter(users.items()))
            self._headers["Authorization"] = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = folder / "orthanc.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT, cwd=folder
        )
        try:
            wait_for(self._up, 30, "Orthanc's REST API", 0.2)
        except AssertionError:
            self.stop()
            raise AssertionError(f"Orthanc did not start: {self.log_path.read_text()[-2000:]}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            return bool(self.get("/system"))
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def get_bytes(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=self._headers)
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def send(self, method: str, path: str, body: Any) -> Any:
        """A JSON request to the REST API (POST to start a job, PUT to change a modality), its JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", **self._headers},
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            answer = response.read()
        return json.loads(answer) if answer.strip() else None

    def declare_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        """Add or change a DicomModalities entry at run time (a node's port is known only once it listens):
        where Orthanc sends C-STOREs and, as Storage Commitment SCP, the N-EVENT-REPORT for that AE title."""
        self.send("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": host, "Port": port})

    def series(self) -> list[dict[str, Any]]:
        """Every series Orthanc holds, with its main tags and instance ids."""
        return [self.get(f"/series/{series_id}") for series_id in self.get("/series")]

    def synthetic_series(self, study_uid: str) -> list[dict[str, Any]]:
        found = []
        for series in self.series():
            study = self.get(f"/studies/{series['ParentStudy']}")
            same_study = study["MainDicomTags"].get("StudyInstanceUID") == study_uid
            if same_study and "SYNTHETIC" in series["MainDicomTags"].get("SeriesDescription", ""):
                found.append(series)
        return found

    def complete_synthetic(self, study_uid: str, targets: list[str], instances: int) -> list[dict[str, Any]] | None:
        """The synthetic series of ``study_uid`` once one per target has all its ``instances``, else None."""
        found = self.synthetic_series(study_uid)
        if len(found) < len(targets) or any(len(s["Instances"]) < instances for s in found):
            return None
        return found

    def datasets(self, series: dict[str, Any], folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
        """Download every instance of ``series`` (the stored Part 10 file, byte for byte)."""
        folder.mkdir(parents=True, exist_ok=True)
        result = []
        for instance_id in series["Instances"]:
            path = folder / f"{instance_id}.dcm"
            path.write_bytes(self.get_bytes(f"/instances/{instance_id}/file"))
            result.append((path, pydicom.dcmread(path)))
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for a module's tests (each starts in about a second and stops in three), for tests that only add
    to what it holds."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


def orthanc_destination(server: Orthanc) -> DicomDestinationSettings:
    return DicomDestinationSettings(name="orthanc", ae_title=PACS_AE, host="127.0.0.1", port=server.dicom_port)


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
