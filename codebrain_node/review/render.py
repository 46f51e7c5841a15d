"""Slices of stored DICOM series rendered to PNG on the server, so the browser needs no DICOM viewer.

A series is ordered along its slice normal (``n = row × column`` of ImageOrientationPatient, position
``d = n · ImagePositionPatient``). Two series of a study are shown "on the same slice" by asking for the slice of
one that lies nearest to a point of the other: distance ``|n_i · (p - IPP_i)|`` from the point ``p`` to slice
plane ``i``. Grey values are modality values (RescaleSlope/Intercept applied) mapped through the window
``[level - width/2, level + width/2]`` to 0..255.

Confidence convention (engine ↔ review): a synthetic series may carry ``confidence.npy`` in the folder of its
instances (``synthetic/<StudyUID>/<SeriesUID>/confidence.npy``): float ``[Z, H, W]`` in [0, 1], where
``confidence[k]`` belongs to the instance with InstanceNumber ``k + 1`` and ``H, W`` are its Rows, Columns.
It is drawn as a red (unsure) → yellow → green (sure) colour map PNG laid over the synthetic slice, more opaque
where the model is less sure.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import pixel_array

from codebrain_node.imaging.series_io import frame_headers
from codebrain_node.write.synthetic_series import CONFIDENCE_FILE


class RenderError(RuntimeError):
    """The slice cannot be rendered (missing file, unsupported pixel data); the message says which."""


@dataclass(frozen=True)
class SliceRef:
    path: Path
    instance_number: int | None
    position: tuple[float, float, float] | None
    normal: tuple[float, float, float] | None
    location: float
    frame: int | None = None  # 1-based frame of a multi-frame instance (Enhanced MR); None: a single-frame file
    rescale: tuple[float, float] = (1.0, 0.0)  # the slice's (frame's) Rescale Slope and Intercept


@dataclass(frozen=True)
class SeriesGeometry:
    slices: tuple[SliceRef, ...]
    default_level: float
    default_width: float

    def nearest_to(self, point: tuple[float, float, float]) -> int:
        """Index of the slice whose plane lies nearest to ``point`` (patient coordinates, mm)."""
        best, best_distance = 0, float("inf")
        target = np.asarray(point, dtype=float)
        for index, ref in enumerate(self.slices):
            if ref.position is None or ref.normal is None:
                continue
            distance = abs(float(np.dot(np.asarray(ref.normal), target - np.asarray(ref.position))))
            if distance < best_distance:
                best, best_distance = index, distance
        return best


def _geometry_of(ds: pydicom.Dataset) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is None or orientation is None or len(orientation) != 6:
        return None, None
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, column)
    return tuple(float(v) for v in position), tuple(float(v) for v in normal)  # type: ignore[return-value]


def read_slice(ref: SliceRef) -> np.ndarray:
    """One slice's modality values as float32 [H, W]: a single-frame file, or one frame of a multi-frame file read
    alone; the rescale comes from the header read for the geometry."""
    try:
        pixels = pixel_array(ref.path, index=(ref.frame or 1) - 1)  # reads and decodes only that frame
    except FileNotFoundError:
        raise RenderError(f"instance file {ref.path.name} is missing") from None
    except Exception as exc:  # pydicom raises many kinds for unsupported transfer syntaxes
        raise RenderError(f"cannot decode {ref.path.name}: {type(exc).__name__}") from None
    if pixels.ndim != 2:
        raise RenderError(f"{ref.path.name}: only greyscale images are shown")
    slope, intercept = ref.rescale
    return pixels.astype(np.float32) * slope + intercept


def _auto_window(pixels: np.ndarray) -> tuple[float, float]:
    """Level/width from the 0.5th percentile of all pixels (background) to the 99.5th of the foreground."""
    low = float(np.percentile(pixels, 0.5))
    foreground = pixels[pixels > low]
    high = float(np.percentile(foreground, 99.5)) if foreground.size else low + 1.0
    width = max(high - low, 1.0)
    return low + width / 2, width


def load_geometry(paths: list[Path]) -> SeriesGeometry:
    """Order a series' instances along their normal and pick a default window from the middle slice."""
    if not paths:
        raise RenderError("the series has no instances")
    refs = []
    for path in paths:
        try:
            instance = pydicom.dcmread(path, stop_before_pixels=True)
        except FileNotFoundError:
            raise RenderError(f"instance file {path.name} is missing") from None
        for ds in frame_headers(instance):  # one per frame of an Enhanced MR instance
            position, normal = _geometry_of(ds)
            number = ds.get("InstanceNumber")
            number = int(number) if number not in (None, "") else None
            location = float(np.dot(position, normal)) if position and normal else float(number or 0)
            frame = int(ds.ReferencedFrameNumber) if "ReferencedFrameNumber" in ds else None
            rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
            refs.append(SliceRef(path, number, position, normal, location, frame, rescale))
    refs.sort(key=lambda ref: (ref.location, ref.instance_number or 0, ref.frame or 0))
    middle = read_slice(refs[len(refs) // 2])
    level, width = _auto_window(middle)
    return SeriesGeometry(tuple(refs), level, width)


class GeometryCache:
    """Series geometries by (series id, instance count): reading every header once per series, not per slice."""

    def __init__(self, capacity: int = 64) -> None:
        self._items: OrderedDict[tuple[int, int], SeriesGeometry] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def get(self, series_id: int, paths: list[Path]) -> SeriesGeometry:
        key = (series_id, len(paths))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        geometry = load_geometry(paths)
        with self._lock:
            self._items[key] = geometry
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return geometry


def window_to_png(pixels: np.ndarray, level: float, width: float) -> bytes:
    """Greyscale PNG of ``pixels`` through the window (level, width)."""
    width = max(float(width), 1e-3)
    low = level - width / 2
    scaled = np.clip((pixels - low) / width, 0.0, 1.0) * 255.0
    return _png(Image.fromarray(scaled.round().astype(np.uint8)))


def confidence_path(series_folder: Path) -> Path:
    return series_folder / CONFIDENCE_FILE


def load_confidence(series_folder: Path) -> np.ndarray | None:
    """The [Z, H, W] confidence map beside a synthetic series, memory-mapped; None when the engine gave none."""
    path = confidence_path(series_folder)
    if not path.is_file():
        return None
    volume = np.load(path, mmap_mode="r", allow_pickle=False)
    if volume.ndim != 3:
        raise RenderError(f"{CONFIDENCE_FILE} must be [Z, H, W], got shape {volume.shape}")
    return volume


def confidence_slice(volume: np.ndarray, ref: SliceRef, index: int, shape: tuple[int, int]) -> np.ndarray:
    """The confidence of one displayed slice (by InstanceNumber, else by order), resized to its pixels."""
    number = ref.instance_number
    z = number - 1 if number is not None and 0 < number <= volume.shape[0] else min(index, volume.shape[0] - 1)
    plane = np.clip(np.nan_to_num(np.asarray(volume[z], dtype=np.float32), nan=0.0), 0.0, 1.0)
    if plane.shape != shape:
        image = Image.fromarray(plane).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        plane = np.asarray(image, dtype=np.float32)
    return plane


def confidence_to_png(confidence: np.ndarray, opacity: float = 0.6) -> bytes:
    """RGBA colour map: red where the model is unsure, through yellow, to green where it is sure.

    Opacity grows with doubt (``alpha = opacity * (1 - confidence)``): what the model is sure of stays clear, so
    the eye goes to the regions a radiologist should check against the inputs.
    """
    c = np.clip(confidence, 0.0, 1.0)
    red = np.where(c < 0.5, 1.0, 2.0 * (1.0 - c))
    green = np.where(c < 0.5, 2.0 * c, 1.0)
    blue = np.zeros_like(c)
    alpha = float(np.clip(opacity, 0.0, 1.0)) * (1.0 - c)
    rgba = (np.stack([red, green, blue, alpha], axis=-1) * 255.0).round().astype(np.uint8)
    return _png(Image.fromarray(rgba))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
