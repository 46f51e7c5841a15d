"""Real and phantom cases → 2-D axial slice datasets, split by subject, cached as ``.npy``.

Layouts understood by :func:`find_cases` (searched recursively under ``data_dir``):

- **BraTS 2023**: ``<case>/<case>-t1n.nii.gz`` (``t1c``, ``t2w``, ``t2f``; the phantom adds ``-pd``) and the plain
  ``<case>/t1n.nii.gz`` layout of ``../shared/data``;
- **IXI**: ``IXI<id>-<site>-<n>-T1.nii.gz`` / ``-T2`` / ``-PD``; T2 and PD are rigidly registered onto T1;
- **generic**: a mapping file ``cases.csv`` (columns ``subject,contrast,path``) or ``cases.toml``
  (``[<subject>]`` tables of ``<contrast> = "<path>"``) in ``data_dir``; paths are relative to the file and may
  name NIfTI files or DICOM series folders.

Every volume goes through :func:`codebrain_node.imaging.preprocess.prepare_study`, the same code the node serves
with; a case whose series do not share one grid is registered onto its reference (T1 when present).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import re
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from codebrain_node.contrasts import BRATS_FILE_NAMES, Contrast
from codebrain_node.imaging.preprocess import choose_reference, foreground_mask, prepare_study, same_grid
from codebrain_node.imaging.series_io import read_series
from codebrain_node.resources import named_config_file

log = logging.getLogger(__name__)

_BRATS_STEMS = {**BRATS_FILE_NAMES, "pd": Contrast.PD}
_BRATS_RE = re.compile(r"^(?:(?P<case>.+)-)?(?P<stem>t1n|t1c|t2w|t2f|pd)\.nii(?:\.gz)?$", re.IGNORECASE)
_IXI_RE = re.compile(r"^(?P<subject>IXI\d+-[A-Za-z]+-\d+)-(?P<kind>T1|T2|PD)\.nii(?:\.gz)?$")
MAPPING_FILES = ("cases.csv", "cases.toml")


@dataclass(frozen=True)
class Case:
    """One subject's series, by contrast; ``register`` asks for rigid registration onto the reference."""

    subject: str
    paths: dict[Contrast, Path]
    register: bool = False


@dataclass
class DatasetSplits:
    """Train/validation/test datasets whose subjects never overlap."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset


# --- finding cases --------------------------------------------------------------------------------------------


def _mapping_cases(mapping: Path) -> list[Case]:
    entries: dict[str, dict[Contrast, Path]] = {}
    if mapping.suffix == ".csv":
        with mapping.open(newline="") as handle:
            for row in csv.DictReader(handle):
                subject = row["subject"].strip()
                entries.setdefault(subject, {})[Contrast.parse(row["contrast"])] = mapping.parent / row["path"].strip()
    else:
        table = tomllib.loads(mapping.read_text())
        for subject, contrasts in table.items():
            entries[subject] = {Contrast.parse(k): mapping.parent / str(v) for k, v in contrasts.items()}
    return [Case(subject, paths, register=True) for subject, paths in entries.items()]


def _nifti_files(root: Path) -> list[Path]:
    """Every NIfTI under ``root``, following symbolic links (datasets are often assembled from links)."""
    found = []
    for folder, _dirs, files in os.walk(root, followlinks=True):
        found += [Path(folder) / name for name in files if ".nii" in name]
    return sorted(found)


def find_cases(data_dir: Path | str) -> list[Case]:
    """All cases under ``data_dir`` in any known layout, sorted by subject."""
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"data directory {root} does not exist")
    cases: dict[str, Case] = {}
    for name in MAPPING_FILES:
        if (root / name).is_file():
            for case in _mapping_cases(root / name):
                cases[case.subject] = case
    brats: dict[Path, dict[Contrast, Path]] = {}
    ixi: dict[str, dict[Contrast, Path]] = {}
    for path in _nifti_files(root):
        if match := _IXI_RE.match(path.name):  # first: IXI's "-PD" would also read as a BraTS-style "-pd"
            ixi.setdefault(match["subject"], {})[Contrast.parse(match["kind"])] = path
        elif match := _BRATS_RE.match(path.name):
            brats.setdefault(path.parent, {})[_BRATS_STEMS[match["stem"].lower()]] = path
    for folder, paths in brats.items():
        subject = folder.name if folder != root else root.name
        cases.setdefault(subject, Case(subject, paths))
    for subject, paths in ixi.items():
        cases.setdefault(subject, Case(subject, paths, register=True))
    return [cases[s] for s in sorted(cases)]


# --- slices ---------------------------------------------------------------------------------------------------


def _cache_key(case: Case, contrasts: Sequence[Contrast], size: int, brain_extraction: str = "off") -> str:
    parts = [case.subject, str(size), *[str(c) for c in contrasts]]
    if brain_extraction != "off":  # caches made before the option keep their keys
        parts.append(f"brain_extraction={brain_extraction}")
    for contrast in contrasts:
        path = case.paths[contrast]
        stat = path.stat()
        parts += [str(path.resolve()), str(stat.st_mtime_ns), str(stat.st_size)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def prepare_case(
    case: Case, contrasts: Sequence[Contrast], size: int = 256, brain_extraction: str = "off"
) -> tuple[np.ndarray, np.ndarray]:
    """Read and prepare one case: float32 [N, Z, size, size] in [0, 1] (order = ``contrasts``) and bool mask [Z,H,W].

    ``brain_extraction`` as the node's ``engine.brain_extraction``: ``"deepbet"`` for skull-on training cases (a
    skull-stripped case is its own brain either way, so the default ``"off"`` gives the same windows on them).
    """
    volumes = {c: read_series(case.paths[c]) for c in contrasts}
    reference = choose_reference(contrasts)
    register = case.register or any(not same_grid(v, volumes[reference]) for v in volumes.values())
    prepared = prepare_study(volumes, reference, size=size, register=register, brain_extraction=brain_extraction)
    arrays = np.stack([prepared.array(c) for c in contrasts])
    return arrays, prepared.brain_mask


def load_case(
    case: Case,
    contrasts: Sequence[Contrast],
    size: int = 256,
    cache_dir: Path | None = None,
    brain_extraction: str = "off",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`prepare_case`, through a per-case ``.npy`` cache (float16 volumes, memory-mapped) when ``cache_dir``."""
    if cache_dir is None:
        arrays, mask = prepare_case(case, contrasts, size, brain_extraction)
        return arrays.astype(np.float16), mask
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(case, contrasts, size, brain_extraction)
    image_file, mask_file = cache_dir / f"{key}-image.npy", cache_dir / f"{key}-mask.npy"
    if not (image_file.exists() and mask_file.exists()):
        arrays, mask = prepare_case(case, contrasts, size, brain_extraction)
        # per-process names: runs started side by side (a model and its baseline) may fill one cache at once
        tmp_image, tmp_mask = (path.with_suffix(f".{os.getpid()}.tmp.npy") for path in (image_file, mask_file))
        np.save(tmp_image, arrays.astype(np.float16))
        np.save(tmp_mask, mask)
        tmp_image.replace(image_file)
        tmp_mask.replace(mask_file)
    return np.load(image_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")


def brain_slices(mask: np.ndarray, min_fraction: float = 0.01) -> list[int]:
    """Indices of axial slices whose foreground covers at least ``min_fraction`` of the slice."""
    per_slice = mask.reshape(mask.shape[0], -1).mean(axis=1)
    return [int(z) for z in np.nonzero(per_slice >= min_fraction)[0]]


@dataclass
class _Volume:
    subject: str
    arrays: np.ndarray  # float16 [N, Z, H, W]
    mask: np.ndarray  # bool [Z, H, W]


@dataclass
class SliceDataset(Dataset):
    """2-D axial slices with brain content from prepared volumes."""

    volumes: list[_Volume]
    min_brain_fraction: float = 0.01
    index: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.index = [
            (v, z) for v, volume in enumerate(self.volumes) for z in brain_slices(volume.mask, self.min_brain_fraction)
        ]

    @property
    def subjects(self) -> list[str]:
        return [v.subject for v in self.volumes]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, object]:
        v, z = self.index[item]
        volume = self.volumes[v]
        sample: dict[str, object] = {
            "image": torch.from_numpy(np.array(volume.arrays[:, z], dtype=np.float32)),
            "brain_mask": torch.from_numpy(np.array(volume.mask[z], dtype=bool)),
            "subject": volume.subject,
            "slice_index": z,
        }
        return sample


def split_subjects(
    subjects: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Shuffle subjects with ``seed`` and cut them into train/val/test; train always keeps at least one."""
    order = sorted(subjects)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = min(round(n * test_fraction), max(n - 1, 0))
    n_val = min(round(n * val_fraction), max(n - 1 - n_test, 0))
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


@dataclass(frozen=True)
class SubjectSplit:
    """How cases become train/val/test slices; stored in every checkpoint so evaluation re-uses training's split.

    ``assignment`` names the subjects of each split (from a committed split file, see :func:`read_split_file`);
    without it, ``seed`` shuffles the subjects and the fractions cut them.
    """

    size: int
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    assignment: dict[str, list[str]] | None = None
    brain_extraction: str = "off"  # the data config's: evaluation prepares cases as training did

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None, default_size: int) -> SubjectSplit:
        """The split a checkpoint recorded (``data_split``); the defaults for checkpoints that recorded none."""
        stored = json.loads(text or "{}")
        return cls(
            size=int(stored.get("size", default_size)),
            val_fraction=float(stored.get("val_fraction", 0.1)),
            test_fraction=float(stored.get("test_fraction", 0.1)),
            seed=int(stored.get("seed", 0)),
            assignment=stored.get("assignment"),
            brain_extraction=str(stored.get("brain_extraction", "off")),
        )


def read_split_file(spec: str | Path) -> dict[str, list[str]]:
    """A committed subject split: a shipped name (``configs/splits/NAME.toml``) or a TOML path with the lists
    ``train``, ``val`` and ``test`` (subject = case folder name). A subject in two lists is an error."""
    path = named_config_file("splits", spec)
    table = tomllib.loads(path.read_text())
    unknown = sorted(set(table) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected train, val, test")
    assignment = {key: [str(name) for name in table.get(key, [])] for key in ("train", "val", "test")}
    seen: dict[str, str] = {}
    for key, names in assignment.items():
        for name in names:
            if name in seen:
                raise ValueError(f"{path}: {name} is in both {seen[name]} and {key}")
            seen[name] = key
    if not assignment["train"]:
        raise ValueError(f"{path}: the train list is empty")
    return assignment


def datasets_for_model(
    data_dir: Path | str, model_cfg: Any, split: SubjectSplit, cache_dir: Path | str | None = None
) -> DatasetSplits:
    """The slices a model of ``model_cfg`` trains and is evaluated on (its contrasts)."""
    return build_datasets(
        data_dir,
        [Contrast(c) for c in model_cfg.contrasts],
        size=split.size,
        val_fraction=split.val_fraction,
        test_fraction=split.test_fraction,
        seed=split.seed,
        cache_dir=cache_dir,
        assignment=split.assignment,
        brain_extraction=split.brain_extraction,
    )


def build_datasets(
    data_dir: Path | str,
    contrasts: Sequence[Contrast],
    *,
    size: int = 256,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: Path | str | None = None,
    subjects: Sequence[str] | None = None,
    min_brain_fraction: float = 0.01,
    assignment: Mapping[str, Sequence[str]] | None = None,
    brain_extraction: str = "off",
) -> DatasetSplits:
    """Slice datasets for ``contrasts`` from every case under ``data_dir``, split by subject (never by slice).

    ``assignment`` (``{"train": [...], "val": [...], "test": [...]}``, a committed split file) names each subject's
    split; cases it does not name are left out. Without it, subjects are shuffled with ``seed`` and cut by fraction.
    """
    contrasts = [Contrast.parse(str(c)) for c in contrasts]
    if assignment is not None:
        subjects = [name for names in assignment.values() for name in names]
    usable: list[Case] = []
    for case in find_cases(data_dir):
        if subjects is not None and case.subject not in subjects:
            continue
        missing = [str(c) for c in contrasts if c not in case.paths]
        if missing:
            warnings.warn(f"skipping {case.subject}: lacks {', '.join(missing)}", stacklevel=2)
            continue
        usable.append(case)
    if not usable:
        raise ValueError(f"no case under {data_dir} has all of {', '.join(map(str, contrasts))}")
    if assignment is not None:
        missing = sorted(set(subjects or []) - {case.subject for case in usable})
        if missing:
            raise ValueError(f"the split names cases that {data_dir} lacks (or that lack a contrast): {missing}")
        train_s, val_s, test_s = (list(assignment.get(key, [])) for key in ("train", "val", "test"))
    else:
        train_s, val_s, test_s = split_subjects([c.subject for c in usable], val_fraction, test_fraction, seed)
    cache = Path(cache_dir) if cache_dir is not None else None
    loaded = {}
    for case in usable:
        arrays, mask = load_case(case, contrasts, size, cache, brain_extraction)
        loaded[case.subject] = _Volume(case.subject, arrays, mask)
        log.info("prepared %s: %d slices", case.subject, arrays.shape[1])

    def dataset(names: list[str]) -> SliceDataset:
        return SliceDataset([loaded[s] for s in sorted(names)], min_brain_fraction)

    return DatasetSplits(dataset(train_s), dataset(val_s), dataset(test_s))


def intensity_samples(
    case: Case, contrasts: Sequence[Contrast], size: int = 256, limit: int = 200_000, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Intensities of one case as stored (inside each file's own foreground mask, so a background of small
    non-zero values does not count) and as the model sees them (inside the brain mask after
    :func:`prepare_case`), each subsampled to at most ``limit`` values: for the figure that shows the normalisation
    makes sites comparable."""
    rng = np.random.default_rng(seed)

    def sample(values: np.ndarray) -> np.ndarray:
        return values if values.size <= limit else rng.choice(values, limit, replace=False)

    raw = {}
    for contrast in contrasts:
        volume = sitk.GetArrayFromImage(read_series(case.paths[contrast])).astype(np.float32)
        raw[str(contrast)] = sample(volume[foreground_mask(volume)])
    arrays, mask = prepare_case(case, contrasts, size)
    normalised = {str(c): sample(arrays[i][mask]) for i, c in enumerate(contrasts)}
    return raw, normalised
