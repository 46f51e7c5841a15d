"""Compressed input, end to end: a small 12-bit MR series (and the same as one Enhanced MR instance) is compressed
by real encoders (DCMTK for JPEG, JPEG-LS and RLE; pylibjpeg-openjpeg for JPEG 2000; OpenJPH for HTJ2K), sent by
DCMTK storescu to the running receiver, stored as sent, and read by the engine's reader exactly like its
uncompressed twin when lossless and close to it when lossy (each lossy codec within a bound that fits what it
does). Each encoder missing skips its case with the reason."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import EnhancedMRImageStorage, MRImageStorage

from codebrain_node.imaging.series_io import read_dicom_series
from codebrain_node.receive.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES
from codebrain_node.receive.service import ReceiveService
from tests.dicom_fixtures import STORESCU, make_mr_instance
from tests.imaging.enhanced_mr import to_enhanced_mr

CALLER = "STORESCU"
DCMCJPEG = Path("/usr/bin/dcmcjpeg")
DCMCJPLS = Path("/usr/bin/dcmcjpls")
DCMCRLE = Path("/usr/bin/dcmcrle")
#: OpenJPH's encoder (Debian openjph-tools): the one HTJ2K encoder at hand (OpenJPEG only decodes HTJ2K).
OJPH_COMPRESS = Path("/usr/bin/ojph_compress")

SLICES, ROWS, COLUMNS = 6, 64, 64
#: JPEG-LS near-lossless as DCMTK encodes it by default: NEAR = 2, so no value may move by more (ISO 14495-1).
JPEG_LS_NEAR = 2

Encoder = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Codec:
    name: str
    syntax: UID
    encode: Encoder
    tool: Path | None
    #: Lossy codecs: the least PSNR (dB, against the twin's value range) allowed, or the largest error of any voxel.
    min_psnr_db: float | None = None
    max_error: float | None = None
    #: DCMTK 3.6.7 (Debian 12) predates the HTJ2K UIDs (3.6.8): its storescu cannot send them, pynetdicom does.
    sender: str = "storescu"


def _dcmtk(tool: Path, *options: str) -> Encoder:
    def encode(source: Path, target: Path) -> None:
        subprocess.run([str(tool), *options, str(source), str(target)], check=True, capture_output=True, timeout=60)

    return encode


def _openjpeg(syntax: UID, **options: object) -> Encoder:
    """pydicom's JPEG 2000 encoder, which is pylibjpeg-openjpeg (a dependency of the node)."""

    def encode(source: Path, target: Path) -> None:
        dataset = pydicom.dcmread(source)
        dataset.compress(syntax, encoding_plugin="pylibjpeg", **options)
        dataset.save_as(target, enforce_file_format=True)

    return encode


def _openjph_lossless(source: Path, target: Path) -> None:
    """HTJ2K lossless (PS3.5 A.4.12): OpenJPH's reversible 5/3 codestream of a 16-bit PGM, encapsulated."""
    dataset = pydicom.dcmread(source)
    pixels = dataset.pixel_array
    pgm = target.with_suffix(".pgm")
    maximum = (1 << int(dataset.BitsStored)) - 1
    pgm.write_bytes(f"P5\n{dataset.Columns} {dataset.Rows}\n{maximum}\n".encode() + pixels.astype(">u2").tobytes())
    codestream = target.with_suffix(".j2c")
    command = [str(OJPH_COMPRESS), "-i", str(pgm), "-o", str(codestream), "-reversible", "true"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    dataset.PixelData = encapsulate([codestream.read_bytes()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    dataset.save_as(target, enforce_file_format=True)


CODECS = [
    Codec("jpeg-lossless", JPEGLossless, _dcmtk(DCMCJPEG, "+el"), DCMCJPEG),
    Codec("jpeg-lossless-sv1", JPEGLosslessSV1, _dcmtk(DCMCJPEG, "+e1"), DCMCJPEG),
    # 8-bit baseline from 12-bit data: DCMTK maps the range to 8 bits and writes the rescale back (+rm), so the
    # error is the 8-bit quantum (range / 255) plus the DCT's (measured 38 dB)
    Codec("jpeg-baseline", JPEGBaseline8Bit, _dcmtk(DCMCJPEG, "+eb", "+rm"), DCMCJPEG, min_psnr_db=35),
    Codec("jpeg-extended", JPEGExtended12Bit, _dcmtk(DCMCJPEG, "+ee"), DCMCJPEG, min_psnr_db=50),  # measured 59 dB
    Codec("jpeg-ls-lossless", JPEGLSLossless, _dcmtk(DCMCJPLS, "+el"), DCMCJPLS),
    Codec("jpeg-ls-near", JPEGLSNearLossless, _dcmtk(DCMCJPLS, "+en"), DCMCJPLS, max_error=JPEG_LS_NEAR),
    Codec("jpeg2000-lossless", JPEG2000Lossless, _openjpeg(JPEG2000Lossless), None),
    # 10:1 takes the noise and some texture (measured 34 dB)
    Codec("jpeg2000-lossy", JPEG2000, _openjpeg(JPEG2000, j2k_cr=[10]), None, min_psnr_db=31),
    Codec("htj2k-lossless", HTJ2KLossless, _openjph_lossless, OJPH_COMPRESS, sender="pynetdicom"),
    Codec("rle", RLELossless, _dcmtk(DCMCRLE), DCMCRLE),
]


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The uncompressed series: 12 bits stored in 16, unsigned (as most MR scanners send), smooth anatomy-like
    structure plus noise, so lossy codecs are neither trivial nor hopeless."""
    folder = tmp_path_factory.mktemp("twin")
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    paths = []
    for index in range(SLICES):
        dataset = make_mr_instance(study, series, index, rows=ROWS, columns=COLUMNS)
        dataset.FrameOfReferenceUID = frame_of_reference
        head = ((x - COLUMNS / 2) ** 2 + (y - ROWS / 2) ** 2) < (0.4 * ROWS) ** 2
        texture = 1200 * np.sin(x / 5.0 + index) * np.cos(y / 7.0)
        noise = np.random.default_rng(index).normal(0, 30, (ROWS, COLUMNS))
        pixels = np.clip(head * (2200 + texture) + noise + 100, 0, 4095).astype(np.uint16)
        dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 12, 11, 0
        dataset.PixelData = pixels.tobytes()
        path = folder / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _copies(twin: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """The twin as a new series (its own Series and SOP Instance UIDs), so each codec's series lies apart."""
    folder.mkdir()
    series_uid = generate_uid()
    paths = []
    for index, source in enumerate(twin):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return series_uid, paths


def _storescu_profile(folder: Path, sop_class: UID, syntax: UID) -> Path:
    """A storescu configuration proposing ``sop_class`` in ``syntax`` (plus the uncompressed fallback), as a PACS
    that holds compressed images does; storescu's own -x options have no JPEG process 14 or HTJ2K choice."""
    config = folder / "storescu.cfg"
    config.write_text(
        f"[[TransferSyntaxes]]\n[Compressed]\nTransferSyntax1 = {syntax}\n"
        "[Uncompressed]\nTransferSyntax1 = LittleEndianExplicit\n"
        f"[[PresentationContexts]]\n[MR]\nPresentationContext1 = {sop_class}\\Compressed\n"
        f"PresentationContext2 = {sop_class}\\Uncompressed\n"
        "[[Profiles]]\n[Codec]\nPresentationContexts = MR\n"
    )
    return config


def _encoded(codec: Codec, plain: list[Path], folder: Path) -> list[Path]:
    folder.mkdir()
    coded = [folder / path.name for path in plain]
    for source, target in zip(plain, coded, strict=True):
        codec.encode(source, target)
        assert pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == codec.syntax
    return coded


def _send(codec: Codec, port: int, paths: list[Path], sop_class: UID, folder: Path) -> None:
    """Over one association, by DCMTK storescu (pynetdicom where storescu cannot: HTJ2K)."""
    if codec.sender == "storescu":
        profile = ["-xf", str(_storescu_profile(folder, sop_class, codec.syntax)), "Codec"]
        peer = ["-aet", CALLER, "-aec", "CODEBRAIN", "127.0.0.1", str(port)]
        command = [str(STORESCU), *profile, *peer, *map(str, paths)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(sop_class, [codec.syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")
    assert assoc.is_established
    try:
        for path in paths:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    finally:
        assoc.release()


def _spooled_as_sent(service: ReceiveService, series_uid: str, count: int, codec: Codec) -> list[Path]:
    """The series' files in the spool, each in the syntax it was sent in: the receiver never transcodes."""
    spooled = sorted(service.spool.incoming.glob(f"*/{series_uid}/*.dcm"))
    assert len(spooled) == count
    for path in spooled:
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == codec.syntax
    return spooled


def _assert_reads_like(codec: Codec, received: sitk.Image, expected: sitk.Image) -> None:
    """Same grid; the same voxels when lossless, within the codec's bound when lossy."""
    assert received.GetSize() == expected.GetSize()
    assert np.allclose(received.GetOrigin(), expected.GetOrigin())
    assert np.allclose(received.GetSpacing(), expected.GetSpacing())
    assert np.allclose(received.GetDirection(), expected.GetDirection())
    values = sitk.GetArrayFromImage(received).astype(np.float64)
    truth = sitk.GetArrayFromImage(expected).astype(np.float64)
    error = values - truth
    if codec.min_psnr_db is None and codec.max_error is None:
        assert np.array_equal(values, truth), f"{codec.name}: lossless, yet {np.count_nonzero(error)} voxels differ"
    if codec.max_error is not None:
        assert np.abs(error).max() <= codec.max_error
    if codec.min_psnr_db is not None:
        rms = float(np.sqrt(np.mean(error**2)))
        assert rms > 0, f"{codec.name}: lossy, yet identical"
        psnr = 20 * np.log10(np.ptp(truth) / rms)
        assert psnr >= codec.min_psnr_db, f"{codec.name}: PSNR {psnr:.1f} dB"


def _require(codec: Codec) -> None:
    if codec.sender == "storescu" and not STORESCU.exists():
        pytest.skip(f"DCMTK storescu ({STORESCU}) is not installed")
    if codec.tool is not None and not codec.tool.exists():
        pytest.skip(f"{codec.name} encoder {codec.tool} is not installed")


def test_the_receiver_offers_every_syntax_tested_here_for_both_mr_classes() -> None:
    """A PACS may send what it holds: every codec below is accepted for MR and Enhanced MR Image Storage."""
    assert set(STORAGE_CLASSES) == {MRImageStorage, EnhancedMRImageStorage}
    for codec in CODECS:
        assert codec.syntax in TRANSFER_SYNTAXES, codec.name


@pytest.mark.parametrize("codec", CODECS, ids=[codec.name for codec in CODECS])
def test_compressed_series_sent_reads_like_its_uncompressed_twin(
    codec: Codec, twin: list[Path], service: ReceiveService, tmp_path: Path
) -> None:
    _require(codec)
    series_uid, plain = _copies(twin, tmp_path / "plain")
    coded = _encoded(codec, plain, tmp_path / "coded")
    _send(codec, service.port, coded, MRImageStorage, tmp_path)
    spooled = _spooled_as_sent(service, series_uid, SLICES, codec)
    _assert_reads_like(codec, read_dicom_series(spooled).image, read_dicom_series(twin).image)


ENHANCED_CODECS = [
    codec for codec in CODECS if codec.name in ("jpeg-lossless-sv1", "jpeg2000-lossless", "jpeg-ls-near")
]


@pytest.mark.parametrize("codec", ENHANCED_CODECS, ids=[codec.name for codec in ENHANCED_CODECS])
def test_compressed_enhanced_mr_sent_reads_like_its_uncompressed_twin(
    codec: Codec, twin: list[Path], service: ReceiveService, tmp_path: Path
) -> None:
    """One multi-frame instance, every frame compressed (the multi-frame path decodes through highdicom)."""
    _require(codec)
    slices = [pydicom.dcmread(path) for path in twin]
    for dataset in slices:  # what the Enhanced MR macros need of a classic slice
        dataset.EchoTime, dataset.RepetitionTime, dataset.ScanningSequence = 10.0, 500.0, "SE"
    enhanced = to_enhanced_mr(slices)
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / "enhanced.dcm"
    enhanced.save_as(plain, enforce_file_format=True)
    coded = _encoded(codec, [plain], tmp_path / "coded")
    _send(codec, service.port, coded, EnhancedMRImageStorage, tmp_path)
    (spooled,) = _spooled_as_sent(service, str(enhanced.SeriesInstanceUID), 1, codec)
    assert int(pydicom.dcmread(spooled, stop_before_pixels=True).NumberOfFrames) == SLICES
    _assert_reads_like(codec, read_dicom_series([spooled]).image, read_dicom_series(twin).image)
