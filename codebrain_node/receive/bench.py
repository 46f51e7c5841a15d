"""``bench ingest``: C-STORE instances per second into our SCP, DCMTK ``storescp`` and Orthanc, same files, same run.

The sender is DCMTK ``storescu`` (``TCP_NODELAY=1``), first over one association, then over several in parallel
(the files split evenly among ``associations`` storescu processes). Each receiver writes to a fresh folder on the
same filesystem; ``storescp`` runs with ``--fork`` in the parallel case, so both sides can use several
associations at once.

What each side promises differs, so two DCMTK figures are given: plain ``storescp`` (the reference of the
issue) writes without fsync; ``storescp`` with ``--exec-on-reception "sync FILE" --exec-sync`` fsyncs each file
before its C-STORE-RSP, as our spool does (ours also fsyncs the directory). CPU milliseconds per instance are
reported too: on a shared machine they vary less than wall-clock rates.

Orthanc (the Debian package, ``/usr/sbin/Orthanc``: the PACS a site would otherwise run) gets a throw-away
configuration in the work folder: its storage and SQLite index there, a free DICOM port, no HTTP server, no
authentication, no storage compression. Its durability is its default, written out in the configuration so the
figure says what it measures: ``"SyncStorageArea": true`` (the default since Orthanc 1.7.4, per its
Configuration.json: "fsync() is called after each write to the storage area"), so each stored file is fsynced,
and the instance is then indexed in SQLite, before the C-STORE-RSP. Its CPU is read from ``/proc/<pid>/stat``
around the sending only (start-up and shut-down excluded).

The durable-write floor is the spool's own write (temp file, fdatasync, rename, directory fsync) of the same
bytes with no network at all, one writer per association: no receiver that keeps the "durable before success"
promise can beat it on one association, because the sender waits for each C-STORE-RSP. Its ratio to storescp
is the ceiling any such receiver could report on this disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from codebrain_node.durable import write_durably

STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
ORTHANC = Path("/usr/sbin/Orthanc")
SYNC = Path("/usr/bin/sync")
BENCH_CALLING_AE = "STORESCU"
BENCH_CALLED_AE = "CODEBRAIN"


def _bench_instance(
    study_uid: str, series_uid: str, index: int, rows: int = 256, columns: int = 256, seed: int = 0
) -> Dataset:
    """One small synthetic MR Image Storage instance (int16 noise); no patient data beyond a dummy ID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientName = "BENCH^PHANTOM"
    ds.PatientID = "BENCH"
    ds.StudyDate = "20260101"
    ds.StudyDescription = "ingest bench"
    ds.SeriesDescription = "T1 bench"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    pixels = np.random.default_rng(seed + index).integers(0, 4096, size=(rows, columns), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def _write_bench_series(folder: Path, count: int, rows: int = 256, columns: int = 256) -> list[Path]:
    """``count`` instances of one new study/series as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    frame_of_reference = generate_uid()
    paths = []
    for index in range(count):
        dataset = _bench_instance(study_uid, series_uid, index, rows, columns)
        dataset.FrameOfReferenceUID = frame_of_reference
        path = folder / f"mr{index:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    """A free loopback port (the ingest and end-to-end benchmarks start their receivers on one)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def send_parallel(files: Sequence[Path], port: int, called_ae: str, associations: int) -> float:
    """Send ``files`` split over ``associations`` concurrent storescu processes; seconds until all are done."""
    chunks = [list(files[i::associations]) for i in range(associations)]
    chunks = [chunk for chunk in chunks if chunk]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [str(STORESCU), "-aet", BENCH_CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port), *map(str, chunk)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dcmtk_env(),
        )
        for chunk in chunks
    ]
    failures = []
    for process in processes:
        _, error = process.communicate(timeout=600)
        if process.returncode != 0:
            failures.append(error.decode(errors="replace").strip().splitlines()[-1:] or ["?"])
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0][0]}")
    return elapsed


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def _run_storescp(folder: Path, port: int, fork: bool, fsync: bool = False) -> subprocess.Popen[bytes]:
    command = [str(STORESCP), "-aet", BENCH_CALLED_AE, "-od", str(folder)]
    if fork:
        command.append("--fork")
    if fsync:  # coreutils `sync FILE` fsyncs that file, run before the C-STORE-RSP goes back
        command += ["--exec-on-reception", f"{SYNC} #p/#f", "--exec-sync"]
    command.append(str(port))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env())
    _wait_listening(port)
    return process


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def _time_storescp(files: Sequence[Path], work: Path, associations: int, fsync: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds of storescp and its forked children)."""
    folder = Path(tempfile.mkdtemp(prefix="storescp-", dir=work))
    port = free_port()
    process = _run_storescp(folder, port, fork=associations > 1, fsync=fsync)
    try:
        elapsed = send_parallel(files, port, BENCH_CALLED_AE, associations)
    finally:
        process.terminate()
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0
    stored = _count_files(folder)
    if stored != len(files):
        raise RuntimeError(f"storescp stored {stored} of {len(files)} files")
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed, usage.ru_utime + usage.ru_stime


#: What the Orthanc figure promises, printed with it (see the module docstring).
ORTHANC_DURABILITY = (
    "Orthanc SyncStorageArea=true (its default since 1.7.4): fsync of each stored file, then its SQLite index, "
    "before the C-STORE-RSP"
)


def orthanc_config(folder: Path, dicom_port: int, ae_title: str = BENCH_CALLED_AE) -> dict[str, Any]:
    """A minimal Orthanc configuration: storage and index under ``folder``, DICOM on ``dicom_port`` (loopback
    only by the sender's choice), no HTTP server, no authentication, files stored as sent and fsynced."""
    return {
        "Name": "codebrain-bench-ingest",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "HttpServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "SyncStorageArea": True,
        "Plugins": [],
    }


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (``/proc/<pid>/stat`` fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_orthanc(files: Sequence[Path], work: Path, associations: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of Orthanc while the files arrived)."""
    folder = Path(tempfile.mkdtemp(prefix="orthanc-", dir=work))
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, port), indent=2))
    with (folder / "orthanc.log").open("wb") as log_file:
        # its DICOM server is DCMTK's: without TCP_NODELAY=1 each C-STORE-RSP waits out Nagle (about 20/s)
        process = subprocess.Popen(
            [str(ORTHANC), str(config)], stdout=log_file, stderr=subprocess.STDOUT, cwd=folder, env=dcmtk_env()
        )
    try:
        try:
            _wait_listening(port, timeout_s=30.0)
        except RuntimeError:
            raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-1000:]}") from None
        cpu_start = _process_cpu_s(process.pid)
        elapsed = send_parallel(files, port, BENCH_CALLED_AE, associations)
        cpu = _process_cpu_s(process.pid) - cpu_start
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    stored = _count_files(folder / "storage")
    if stored != len(files):
        raise RuntimeError(f"Orthanc stored {stored} of {len(files)} files")
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed, cpu


def _time_ours(files: Sequence[Path], work: Path, associations: int, tcp_nodelay: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, where our SCP runs). ``tcp_nodelay=False``: pynetdicom's own
    server class, Nagle on, for the before/after figure."""
    from pynetdicom.transport import ThreadedAssociationServer

    from codebrain_node.config import DicomSettings
    from codebrain_node.receive.scp import NoDelayAssociationServer, Receiver
    from codebrain_node.receive.spool import Spool

    data_dir = Path(tempfile.mkdtemp(prefix="codebrain-", dir=work))
    dicom = DicomSettings(
        ae_title=BENCH_CALLED_AE,
        bind_address="127.0.0.1",
        port=free_port(),
        allowed_callers=[BENCH_CALLING_AE],
        max_associations=max(associations, 1) + 2,
        max_associations_per_peer=max(associations, 1) + 2,  # every sender is 127.0.0.1
        min_free_disk_mb=0,
    )
    received: list[Any] = []
    server_class = NoDelayAssociationServer if tcp_nodelay else ThreadedAssociationServer
    receiver = Receiver(dicom, Spool(data_dir), received.append, server_class=server_class).start()
    cpu_start = time.process_time()
    try:
        elapsed = send_parallel(files, receiver.port, BENCH_CALLED_AE, associations)
        cpu = time.process_time() - cpu_start
    finally:
        receiver.stop()
    if len(received) != len(files):
        raise RuntimeError(f"our SCP stored {len(received)} of {len(files)} files")
    shutil.rmtree(data_dir, ignore_errors=True)
    return elapsed, cpu


def _time_ours_processes(files: Sequence[Path], work: Path, associations: int, processes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the receiver processes while the files arrived): our SCP as ``serve`` runs it
    with ``dicom.receiver_processes = processes`` (``receive/processes.py``), spool only, no recorder (as
    :func:`_time_ours`); what was stored is read from the processes' metrics."""
    from codebrain_node.config import Settings
    from codebrain_node.metrics import ingest_totals
    from codebrain_node.receive.processes import ReceiverProcesses

    data_dir = Path(tempfile.mkdtemp(prefix="codebrain-processes-", dir=work))
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(data_dir)},
            "logging": {"level": "WARNING"},
            "dicom": {
                "ae_title": BENCH_CALLED_AE,
                "bind_address": "127.0.0.1",
                "port": 0,
                "allowed_callers": [BENCH_CALLING_AE],
                "max_associations": max(associations, 1) + 2,
                "max_associations_per_peer": max(associations, 1) + 2,
                "min_free_disk_mb": 0,
                "receiver_processes": processes,
            },
        }
    )
    receivers = ReceiverProcesses(settings, processes, record=False).start()
    try:
        pids = receivers.pids
        cpu_start = sum(_process_cpu_s(pid) for pid in pids)
        elapsed = send_parallel(files, receivers.port, BENCH_CALLED_AE, associations)
        cpu = sum(_process_cpu_s(pid) for pid in pids) - cpu_start
        stored = ingest_totals(receivers.metrics_dir).get("codebrain_ingest_instances_total{outcome=stored}", 0)
    finally:
        receivers.stop()
    if stored != len(files):
        raise RuntimeError(f"our {processes} receiver processes stored {stored:.0f} of {len(files)} files")
    shutil.rmtree(data_dir, ignore_errors=True)
    return elapsed, cpu


def _time_pynetdicom_baseline(files: Sequence[Path], work: Path, associations: int) -> tuple[float, float]:
    """The "before" figure: pynetdicom as its documentation writes a Storage SCP (TCP_NODELAY off, standard
    logging handlers, 16 KiB PDUs, ``event.dataset`` decoded to read the UIDs, ``event.encoded_dataset()``
    written), with the same durable write as ours so only the receive path differs."""
    from pynetdicom import AE, _config, evt

    from codebrain_node.receive.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES
    from codebrain_node.receive.spool import Spool

    spool = Spool(Path(tempfile.mkdtemp(prefix="baseline-", dir=work)))
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset  # decodes the whole dataset, as the pynetdicom examples do
        final = spool.path_for(dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
        write_durably(final, event.encoded_dataset(), tmp_dir=spool.tmp)
        stored.append(dataset.SOPInstanceUID)
        return 0x0000

    previous_level = _config.LOG_HANDLER_LEVEL
    _config.LOG_HANDLER_LEVEL = "standard"
    try:
        ae = AE(ae_title=BENCH_CALLED_AE)
        for storage_class in STORAGE_CLASSES:
            ae.add_supported_context(storage_class, list(TRANSFER_SYNTAXES))
        ae.maximum_associations = associations + 2
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    finally:
        _config.LOG_HANDLER_LEVEL = previous_level
    cpu_start = time.process_time()
    try:
        elapsed = send_parallel(files, int(server.server_address[1]), BENCH_CALLED_AE, associations)
        cpu = time.process_time() - cpu_start
    finally:
        ae.shutdown()
    if len(stored) != len(files):
        raise RuntimeError(f"baseline SCP stored {len(stored)} of {len(files)} files")
    shutil.rmtree(spool.data_dir, ignore_errors=True)
    return elapsed, cpu


def _time_durable_floor(files: Sequence[Path], work: Path, associations: int) -> float:
    """Wall seconds for the spool's durable write of every file's bytes, ``associations`` writers in parallel."""
    from codebrain_node.receive.spool import Spool

    spool = Spool(Path(tempfile.mkdtemp(prefix="floor-", dir=work)))
    contents = [path.read_bytes() for path in files]
    series = spool.incoming / "study" / "series"
    series.mkdir(parents=True)

    def write(index: int) -> None:
        write_durably(series / f"{index}.dcm", contents[index], tmp_dir=spool.tmp)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=associations) as pool:
        list(pool.map(write, range(len(contents))))
    elapsed = time.perf_counter() - start
    shutil.rmtree(spool.data_dir, ignore_errors=True)
    return elapsed


def bench_ingest(
    n_instances: int = 500,
    associations: int = 4,
    *,
    rows: int = 256,
    columns: int = 256,
    work_dir: Path | None = None,
    compare_without_nodelay: bool = True,
    compare_baseline: bool = True,
    receiver_processes: Sequence[int] = (1, 2),
) -> dict[str, Any]:
    """Instances/s for our SCP, storescp (with and without fsync) and Orthanc, over 1 and ``associations``
    associations, and the ratios of ours to each; ``ratios`` gathers the two the target is set on (ours /
    storescp fsyncing, ours / Orthanc) with our CPU per instance.

    Our SCP runs in this process (the recorder is not involved: it works off the association threads, and the
    database is not what is measured). ``compare_without_nodelay`` adds our figures with Nagle left on,
    ``compare_baseline`` those of a plain pynetdicom SCP written as its documentation shows (the "before").

    ``receiver_processes``: on the parallel run, ours also as ``serve`` runs it with that many receiver processes
    on the one port (``dicom.receiver_processes``), each figure with its ratios and the CPU of all the processes."""
    for tool in (STORESCU, STORESCP):
        if not tool.exists():
            raise RuntimeError(f"{tool} not found (install DCMTK)")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=work_dir))
    try:
        files = _write_bench_series(work / "files", n_instances, rows, columns)
        size = sum(path.stat().st_size for path in files)
        result: dict[str, Any] = {
            "instances": n_instances,
            "bytes_per_instance": size // max(n_instances, 1),
            "associations": associations,
            "runs": {},
        }
        plans = [1, associations] if associations > 1 else [1]
        for count in plans:
            theirs, theirs_cpu = _time_storescp(files, work, count)
            ours, ours_cpu = _time_ours(files, work, count, tcp_nodelay=True)
            run = {
                "storescp_per_s": round(n_instances / theirs, 1),
                "ours_per_s": round(n_instances / ours, 1),
                "ratio": round(theirs / ours, 3),
                "storescp_cpu_ms_per_instance": round(1000 * theirs_cpu / n_instances, 3),
                "ours_cpu_ms_per_instance": round(1000 * ours_cpu / n_instances, 3),
            }
            durable = pacs = None
            if SYNC.exists():
                durable, _ = _time_storescp(files, work, count, fsync=True)
                run["storescp_fsync_per_s"] = round(n_instances / durable, 1)
                run["ratio_vs_storescp_fsync"] = round(durable / ours, 3)
            if ORTHANC.exists():
                pacs, pacs_cpu = _time_orthanc(files, work, count)
                run["orthanc_per_s"] = round(n_instances / pacs, 1)
                run["orthanc_cpu_ms_per_instance"] = round(1000 * pacs_cpu / n_instances, 3)
                run["ratio_vs_orthanc"] = round(pacs / ours, 3)
            floor = _time_durable_floor(files, work, count)
            run["durable_write_only_per_s"] = round(n_instances / floor, 1)
            run["ratio_ceiling_with_durable_write"] = round(theirs / floor, 3)
            for processes in receiver_processes if count > 1 else ():
                spread, spread_cpu = _time_ours_processes(files, work, count, processes)
                name = f"{processes}_process{'es' if processes > 1 else ''}"
                run[f"ours_{name}_per_s"] = round(n_instances / spread, 1)
                run[f"ours_{name}_cpu_ms_per_instance"] = round(1000 * spread_cpu / n_instances, 3)
                if durable is not None:
                    run[f"ratio_{name}_vs_storescp_fsync"] = round(durable / spread, 3)
                if pacs is not None:
                    run[f"ratio_{name}_vs_orthanc"] = round(pacs / spread, 3)
            if compare_without_nodelay:
                plain, _ = _time_ours(files, work, count, tcp_nodelay=False)
                run["ours_without_nodelay_per_s"] = round(n_instances / plain, 1)
            if compare_baseline:
                before, before_cpu = _time_pynetdicom_baseline(files, work, count)
                run["pynetdicom_baseline_per_s"] = round(n_instances / before, 1)
                run["pynetdicom_baseline_cpu_ms_per_instance"] = round(1000 * before_cpu / n_instances, 3)
            result["runs"][f"{count}_association{'s' if count > 1 else ''}"] = run
        # the target (#18): ours / each receiver that makes the same promise, >= 1.0 on 1 and N associations
        result["ratios"] = {
            name: {
                "vs_storescp_fsync": run.get("ratio_vs_storescp_fsync"),
                "vs_orthanc": run.get("ratio_vs_orthanc"),
                "ours_cpu_ms_per_instance": run["ours_cpu_ms_per_instance"],
                **{
                    key: value
                    for key, value in run.items()
                    if "process" in key and (key.startswith("ratio_") or key.endswith("_cpu_ms_per_instance"))
                },
            }
            for name, run in result["runs"].items()
        }
        result["orthanc_durability"] = ORTHANC_DURABILITY if ORTHANC.exists() else f"{ORTHANC} not installed"
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
