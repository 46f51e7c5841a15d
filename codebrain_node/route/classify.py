"""Which contrast is this series? T1, T1Gd, T2, PD, FLAIR or "other", from DICOM headers only.

The decision is a documented rule table (``configs/classify.toml``, replaceable by ``routing.classify_rules``):
hard guards first (never an input: non-MR, Synthetic Data = YES, DERIVED, LOCALIZER, our own output, too few
slices), then exclusion names, then ordered rules on SeriesDescription/ProtocolName and on the physics in the
headers (ScanningSequence, MRAcquisitionType, TR/TE/TI), then the contrast-agent promotion T1 → T1Gd. Every
result carries the reason (which rule matched), stored in ``Series.classification_reason``.

Only headers are read (``stop_before_pixels``), of a few instances of each series, so classifying a study costs
milliseconds however large it is.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import frame_headers
from codebrain_node.resources import config_file

DEFAULT_RULES_FILE = config_file("classify.toml")

#: Headers read per series: first, middle and last instance (a flag set on some images only is still seen).
SAMPLED_INSTANCES = 3

OTHER = "other"


@dataclass(frozen=True)
class SeriesHeaders:
    """What classification and input selection need from a series, read from a few of its instances."""

    modality: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_types: tuple[tuple[str, ...], ...] = ()
    synthetic: bool = False
    scanning_sequence: frozenset[str] = frozenset()
    acquisition_type: str = ""
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    contrast_agent: str = ""
    series_number: int | None = None
    slice_thickness_mm: float | None = None
    acquisition_time: str = ""
    n_slices: int = 0

    @property
    def names(self) -> str:
        """The text name rules search: both names, lower-cased, ``_`` as a space so ``\\b`` works."""
        text = f"{self.series_description} | {self.protocol_name}".lower()
        return text.replace("_", " ")

    @classmethod
    def from_datasets(cls, datasets: Sequence[pydicom.Dataset], n_instances: int | None = None) -> SeriesHeaders:
        """Combine sampled headers: flags (synthetic, DERIVED, LOCALIZER, agent) count if any instance has them."""
        if not datasets:
            return cls()
        first = datasets[0]
        frames = max(_int(first.get("NumberOfFrames")) or 1, 1)
        count = n_instances if n_instances is not None else len(datasets)
        agents = [str(ds.get("ContrastBolusAgent", "") or "").strip() for ds in datasets]
        return cls(
            modality=str(first.get("Modality", "") or "").upper(),
            series_description=str(first.get("SeriesDescription", "") or ""),
            protocol_name=str(first.get("ProtocolName", "") or ""),
            image_types=tuple(_multi(ds.get("ImageType")) for ds in datasets),
            synthetic=any(str(ds.get("SyntheticData", "") or "").strip().upper() == "YES" for ds in datasets),
            scanning_sequence=frozenset(_multi(first.get("ScanningSequence"))),
            acquisition_type=str(first.get("MRAcquisitionType", "") or "").upper(),
            repetition_time_ms=_float(first.get("RepetitionTime")),
            echo_time_ms=_float(first.get("EchoTime")),
            inversion_time_ms=_float(first.get("InversionTime")),
            contrast_agent=next((agent for agent in agents if agent), ""),
            series_number=_int(first.get("SeriesNumber")),
            slice_thickness_mm=_float(first.get("SliceThickness")),
            acquisition_time=str(first.get("AcquisitionTime", "") or first.get("SeriesTime", "") or ""),
            n_slices=count * frames,
        )


@dataclass(frozen=True)
class Classification:
    """A series' contrast (None: "other", never an input) and the rule that decided it."""

    contrast: Contrast | None
    reason: str
    headers: SeriesHeaders = field(default_factory=SeriesHeaders)

    @property
    def label(self) -> str:
        """What ``Series.contrast`` stores: the contrast's value or ``"other"``."""
        return self.contrast.value if self.contrast is not None else OTHER

    @property
    def usable(self) -> bool:
        return self.contrast is not None


@dataclass(frozen=True)
class Rule:
    """One row of the table; every condition given must hold."""

    name: str
    contrast: Contrast | None
    pattern: re.Pattern[str] | None = None
    scanning_sequence: frozenset[str] = frozenset()
    not_scanning_sequence: frozenset[str] = frozenset()
    acquisition: str | None = None
    tr_ms: tuple[float, float] | None = None
    te_ms: tuple[float, float] | None = None
    ti_ms: tuple[float, float] | None = None

    def matches(self, headers: SeriesHeaders) -> bool:
        if self.pattern is not None and not self.pattern.search(headers.names):
            return False
        if self.scanning_sequence and not (self.scanning_sequence & headers.scanning_sequence):
            return False
        if self.not_scanning_sequence & headers.scanning_sequence:
            return False
        if self.acquisition is not None and headers.acquisition_type != self.acquisition:
            return False
        return (
            _within(headers.repetition_time_ms, self.tr_ms)
            and _within(headers.echo_time_ms, self.te_ms)
            and _within(headers.inversion_time_ms, self.ti_ms)
        )


@dataclass(frozen=True)
class RuleTable:
    """The whole table: slice minimum, exclusion names, ordered rules and the contrast-agent patterns."""

    rules: tuple[Rule, ...]
    exclude: tuple[re.Pattern[str], ...] = ()
    post_contrast: re.Pattern[str] | None = None
    pre_contrast: re.Pattern[str] | None = None
    min_slices: int = 8
    source: str = "built-in"

    @classmethod
    def from_mapping(cls, table: dict[str, Any], source: str = "mapping") -> RuleTable:
        """Build (and validate) a table from parsed TOML; a bad entry names itself in the error."""
        rules = []
        for index, raw in enumerate(table.get("rules", [])):
            where = f"{source}: rules[{index}]"
            unknown = set(raw) - {
                "name",
                "contrast",
                "pattern",
                "scanning_sequence",
                "not_scanning_sequence",
                "acquisition",
                "tr_ms",
                "te_ms",
                "ti_ms",
            }
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            contrast_name = str(raw.get("contrast", ""))
            contrast = None if contrast_name.lower() == OTHER else Contrast.parse(contrast_name)
            rules.append(
                Rule(
                    name=str(raw.get("name") or f"rule {index}"),
                    contrast=contrast,
                    pattern=_compile(raw.get("pattern"), where),
                    scanning_sequence=frozenset(s.upper() for s in raw.get("scanning_sequence", [])),
                    not_scanning_sequence=frozenset(s.upper() for s in raw.get("not_scanning_sequence", [])),
                    acquisition=str(raw["acquisition"]).upper() if raw.get("acquisition") else None,
                    tr_ms=_range(raw.get("tr_ms"), where),
                    te_ms=_range(raw.get("te_ms"), where),
                    ti_ms=_range(raw.get("ti_ms"), where),
                )
            )
        agent = table.get("contrast_agent", {})
        exclude = tuple(_compile(text, f"{source}: exclude") for text in table.get("exclude", {}).get("patterns", []))
        return cls(
            rules=tuple(rules),
            exclude=tuple(pattern for pattern in exclude if pattern is not None),
            post_contrast=_compile(agent.get("post_pattern"), f"{source}: contrast_agent.post_pattern"),
            pre_contrast=_compile(agent.get("pre_pattern"), f"{source}: contrast_agent.pre_pattern"),
            min_slices=int(table.get("min_slices", 8)),
            source=source,
        )

    def classify(self, headers: SeriesHeaders, *, written_by_node: bool = False) -> Classification:
        """Apply guards, exclusions, rules and the T1 → T1Gd promotion, in that order."""
        guard = _guard(headers, self.min_slices, written_by_node)
        if guard is not None:
            return Classification(None, guard, headers)
        names = headers.names
        for pattern in self.exclude:
            found = pattern.search(names)
            if found:
                return Classification(None, f"excluded by name ({found.group(0).strip()!r})", headers)
        for rule in self.rules:
            if rule.matches(headers):
                if rule.contrast is None:
                    return Classification(None, rule.name, headers)
                return self._promote(rule, headers)
        return Classification(None, "no rule matched", headers)

    def _promote(self, rule: Rule, headers: SeriesHeaders) -> Classification:
        """T1-like + contrast agent (header or name) → T1Gd, unless the name says pre-contrast."""
        if rule.contrast is not Contrast.T1:
            return Classification(rule.contrast, rule.name, headers)
        names = headers.names
        if self.pre_contrast is not None and self.pre_contrast.search(names):
            return Classification(Contrast.T1, f"{rule.name}; named pre-contrast", headers)
        if headers.contrast_agent:
            return Classification(Contrast.T1GD, f"{rule.name}; ContrastBolusAgent present", headers)
        if self.post_contrast is not None:
            found = self.post_contrast.search(names)
            if found:
                return Classification(Contrast.T1GD, f"{rule.name}; post-contrast name ({found.group(0)!r})", headers)
        return Classification(Contrast.T1, rule.name, headers)


def load_rules(path: Path | None = None) -> RuleTable:
    """The rule table from ``path``, or the shipped ``configs/classify.toml``."""
    path = Path(path) if path is not None else DEFAULT_RULES_FILE
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"classification rules {path} do not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"classification rules {path} are not valid TOML: {exc}") from None
    return RuleTable.from_mapping(table, source=str(path))


def sample_paths(paths: Sequence[Path]) -> list[Path]:
    """First, middle and last of ``paths`` (in the order given)."""
    if len(paths) <= SAMPLED_INSTANCES:
        return list(paths)
    return [paths[i] for i in sorted({0, len(paths) // 2, len(paths) - 1})]


def read_series_headers(paths: Sequence[Path], n_instances: int | None = None) -> SeriesHeaders | None:
    """Headers of a few instances (no pixel data); None when none of them is readable DICOM."""
    datasets = []
    for path in sample_paths(list(paths)):
        try:
            # a multi-frame image speaks through its first frame's flattened functional groups
            datasets.append(frame_headers(pydicom.dcmread(path, stop_before_pixels=True), limit=1)[0])
        except (OSError, InvalidDicomError, ValueError, EOFError):
            continue
    if not datasets:
        return None
    return SeriesHeaders.from_datasets(datasets, n_instances=len(paths) if n_instances is None else n_instances)


def classify_paths(paths: Sequence[Path], rules: RuleTable, *, written_by_node: bool = False) -> Classification:
    """Classify a series from its files."""
    if not paths:
        return Classification(None, "no instances")
    headers = read_series_headers(paths)
    if headers is None:
        return Classification(None, "headers unreadable")
    return rules.classify(headers, written_by_node=written_by_node)


def preference_key(headers: SeriesHeaders) -> tuple[bool, float, int, int, str]:
    """How much we prefer a series among several that claim one contrast; larger is better.

    The documented rule, in order:
      1. a 3-D acquisition (MRAcquisitionType 3D) — near-isotropic volumes resample onto any grid best;
      2. thinner slices (SliceThickness, to 0.1 mm) — more through-plane detail;
      3. more slices — full coverage beats a truncated (aborted) acquisition;
      4. the later acquisition: higher SeriesNumber, then later AcquisitionTime — a repeat after motion is
         usually the one the technologist kept.
    """
    thickness = headers.slice_thickness_mm if headers.slice_thickness_mm is not None else 1e6
    return (
        headers.acquisition_type == "3D",
        -round(thickness, 1),
        headers.n_slices,
        headers.series_number if headers.series_number is not None else -1,
        headers.acquisition_time,
    )


def pick_inputs(
    candidates: Iterable[tuple[str, Classification]], allowed: Iterable[Contrast] | None = None
) -> dict[Contrast, str]:
    """``{contrast: series uid}``: for each contrast the usable series with the largest :func:`preference_key`."""
    allowed_set = set(allowed) if allowed is not None else None
    best: dict[Contrast, tuple[tuple[bool, float, int, int, str], str]] = {}
    for series_uid, classification in candidates:
        contrast = classification.contrast
        if contrast is None or (allowed_set is not None and contrast not in allowed_set):
            continue
        key = preference_key(classification.headers)
        if contrast not in best or (key, series_uid) > (best[contrast][0], best[contrast][1]):
            best[contrast] = (key, series_uid)
    return {contrast: uid for contrast, (_, uid) in best.items()}


def _guard(headers: SeriesHeaders, min_slices: int, written_by_node: bool) -> str | None:
    """The non-configurable reasons a series is never an input (so the node never eats its own output)."""
    if written_by_node:
        return "written by this node"
    if headers.synthetic:
        return "Synthetic Data (0008,001C) = YES"
    if headers.modality != "MR":
        return f"modality {headers.modality or 'missing'} is not MR"
    for image_type in headers.image_types:
        if image_type and image_type[0] == "DERIVED":
            return "ImageType DERIVED"
        if "LOCALIZER" in image_type:
            return "ImageType LOCALIZER"
    if headers.n_slices < min_slices:
        return f"too few slices ({headers.n_slices} < {min_slices})"
    return None


def _within(value: float | None, bounds: tuple[float, float] | None) -> bool:
    if bounds is None:
        return True
    return value is not None and bounds[0] <= value <= bounds[1]


def _compile(text: Any, where: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        return re.compile(str(text), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{where}: bad regular expression {text!r}: {exc}") from None


def _range(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2 or float(value[0]) > float(value[1]):
        raise ValueError(f"{where}: a range must be [min, max], got {value!r}")
    return float(value[0]), float(value[1])


def _multi(value: Any) -> tuple[str, ...]:
    """A CS value of any multiplicity as upper-case strings."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip().upper() for part in value.split("\\") if part.strip())
    return tuple(str(part).strip().upper() for part in value if str(part).strip())


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def classify_folder(folder: Path, rules: RuleTable) -> list[tuple[str, Classification]]:
    """``(SeriesInstanceUID, classification)`` for every series found in the DICOM files under ``folder``.

    For checking a rule table against a site's studies (``codebrain-node classify``); reads headers only.
    """
    by_series: dict[str, list[Path]] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "InstanceNumber"])
        except (OSError, InvalidDicomError, ValueError, EOFError):
            continue
        if "SeriesInstanceUID" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return [(uid, classify_paths(paths, rules)) for uid, paths in sorted(by_series.items())]
