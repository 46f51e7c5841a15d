"""MR signal equations on a tissue anatomy: T1, T1Gd, T2, PD and FLAIR of one head, co-registered by construction.

Signal models (magnitude, arbitrary units; ``E1 = exp(−TR/T1)``, ``E2 = exp(−TE/T2)``):

- spin echo (T1w, T2w, PD):             ``S = PD · (1 − E1) · E2``
- inversion recovery (FLAIR):           ``S = PD · |1 − 2·exp(−TI/T1) + E1| · E2``, TI chosen to null CSF:
  ``TI = T1_csf · (ln 2 − ln(1 + exp(−TR/T1_csf)))`` (jittered by ±3 % like an operator's round number)
- spoiled gradient echo (3-D T1):       ``S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE/T2)``
- gadolinium:                           ``1/T1' = 1/T1 + r1 · [Gd]`` where [Gd] > 0 (enhancing tumour, vessels,
  choroid plexus, dura, mucosa): the blood–brain barrier keeps it out of normal brain.

Partial volume: tissue signals are computed on the 1 mm label grid and then low-pass filtered and resampled to the
output grid. Because the signal is linear in tissue fractions (``S = Σ f_t S_t``) and the filter is linear, this
equals mixing per-voxel tissue fractions, at a fraction of the memory. Then a smooth multiplicative bias field and
Rician noise (magnitude of complex Gaussian noise) are applied; skull stripping zeroes everything outside the
intracranial tissues (as BraTS does). Flowing blood gives a flow void on spin-echo images; on the post-contrast
T1 the slow venous blood is bright.

Relaxation times (ms), literature values; where sources disagree, a value within the reported range:

- WM, GM, muscle, blood, 1.5 T and 3 T: Stanisz GJ et al., "T1, T2 relaxation and magnetization transfer in tissue
  at 3T", Magn Reson Med 2005;54:507–512 (WM 884/1084 ms, GM 1124/1820 ms T1; WM 72/69 ms, GM 95/99 ms T2;
  skeletal muscle 1008/1412 & 44/50; blood 1441/1932 & 290/275). White-matter T1 in the literature spans
  0.6–1.1 s at 3 T (Assländer J et al., arXiv:2409.05318, who trace the spread to magnetisation transfer).
  At 1.5 T Stanisz's WM T1 (884 ms) is at the long end of the reported 0.5–0.9 s (BrainWeb's simulator uses
  500 ms: Kwan RK-S, Evans AC, Pike GB, IEEE TMI 1999;18:1085–1097); with it a spin-echo T1w image would show no
  grey/white contrast, which real 1.5 T scanners clearly do, so we take 650 ms, inside that range.
- CSF: T1 ≈ 4.3 s nearly independent of field (Rooney WD et al., Magn Reson Med 2007;57:308–318); T2 ≈ 2 s
  (free water; e.g. Spijkerman JM et al., MAGMA 2018;31:415–424).
- Fat and marrow: de Bazelaire CMJ et al., "MR imaging relaxation times of abdominal and pelvic tissues measured in
  vivo at 3.0 T: preliminary results", Radiology 2004;230:652–659 (subcutaneous fat 343/382 ms T1, 58/68 ms T2;
  bone marrow 549/586 ms T1, 49 ms T2).
- Proton density (relative to CSF = 1): WM ≈ 0.70, GM ≈ 0.80 (Tofts P, ed., Quantitative MRI of the Brain, Wiley
  2003, ch. 4; Neeb H et al., NeuroImage 2006;29:910–922 for water content).
- Glioma compartments (vasogenic oedema, enhancing tumour, necrosis): prolonged T1/T2 as reported in synthetic-MRI
  studies of gliomas (e.g. Blystad I et al., Acta Radiol 2017;58:1536–1542); values here are plausible ranges.
- Gadobutrol relaxivity r1 in plasma: 5.2 (1.5 T) and 5.0 (3 T) L·mmol⁻¹·s⁻¹ (Rohrer M et al., Invest Radiol
  2005;40:715–724).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom.anatomy import INTRACRANIAL, Anatomy, Tissue


@dataclass(frozen=True)
class TissueParameters:
    """T1, T2 in ms and proton density relative to CSF."""

    t1: float
    t2: float
    pd: float


#: Relaxation parameters per field strength (see the module docstring for sources).
TISSUES: dict[float, dict[Tissue, TissueParameters]] = {
    1.5: {
        Tissue.AIR: TissueParameters(1000.0, 1.0, 0.0),
        Tissue.WM: TissueParameters(650.0, 72.0, 0.70),  # T1: see the note on 1.5 T white matter above
        Tissue.GM: TissueParameters(1124.0, 95.0, 0.80),
        Tissue.CSF: TissueParameters(4300.0, 2000.0, 1.00),
        Tissue.FAT: TissueParameters(343.0, 58.0, 0.90),
        Tissue.SOFT: TissueParameters(1008.0, 44.0, 0.70),
        Tissue.BONE: TissueParameters(1000.0, 1.0, 0.05),
        Tissue.MARROW: TissueParameters(549.0, 49.0, 0.80),
        Tissue.EYE: TissueParameters(4000.0, 1500.0, 0.95),
        Tissue.MUCOSA: TissueParameters(1500.0, 150.0, 0.85),
        Tissue.VESSEL: TissueParameters(1441.0, 290.0, 0.85),
        Tissue.CHOROID: TissueParameters(1500.0, 150.0, 0.85),
        Tissue.DURA: TissueParameters(900.0, 60.0, 0.60),
        Tissue.NECROSIS: TissueParameters(2500.0, 400.0, 0.95),
        Tissue.ENHANCING: TissueParameters(1300.0, 110.0, 0.85),
        Tissue.OEDEMA: TissueParameters(1350.0, 160.0, 0.88),
    },
    3.0: {
        Tissue.AIR: TissueParameters(1000.0, 1.0, 0.0),
        Tissue.WM: TissueParameters(1084.0, 69.0, 0.70),
        Tissue.GM: TissueParameters(1820.0, 99.0, 0.80),
        Tissue.CSF: TissueParameters(4300.0, 2000.0, 1.00),
        Tissue.FAT: TissueParameters(382.0, 68.0, 0.90),
        Tissue.SOFT: TissueParameters(1412.0, 50.0, 0.70),
        Tissue.BONE: TissueParameters(1000.0, 1.0, 0.05),
        Tissue.MARROW: TissueParameters(586.0, 49.0, 0.80),
        Tissue.EYE: TissueParameters(4000.0, 1400.0, 0.95),
        Tissue.MUCOSA: TissueParameters(1800.0, 140.0, 0.85),
        Tissue.VESSEL: TissueParameters(1932.0, 275.0, 0.85),
        Tissue.CHOROID: TissueParameters(1900.0, 140.0, 0.85),
        Tissue.DURA: TissueParameters(1100.0, 60.0, 0.60),
        Tissue.NECROSIS: TissueParameters(3000.0, 380.0, 0.95),
        Tissue.ENHANCING: TissueParameters(1700.0, 105.0, 0.85),
        Tissue.OEDEMA: TissueParameters(1850.0, 150.0, 0.88),
    },
}

#: Gadobutrol r1 (L/mmol/s) by field.
RELAXIVITY_R1 = {1.5: 5.2, 3.0: 5.0}

#: Typical tissue gadolinium concentration (mmol/L) a few minutes after 0.1 mmol/kg; drawn ±30 % per case.
GD_CONCENTRATION = {
    Tissue.ENHANCING: 0.45,
    Tissue.VESSEL: 0.9,
    Tissue.CHOROID: 0.5,
    Tissue.DURA: 0.35,
    Tissue.MUCOSA: 0.3,
    Tissue.SOFT: 0.05,
}

#: Residual signal of flowing blood on spin-echo and inversion-recovery images.
FLOW_VOID = 0.15


@dataclass(frozen=True)
class Sequence:
    """Acquisition of one contrast: kind ``SE`` | ``IR`` | ``GRE3D``, times in ms, flip angle in degrees."""

    contrast: Contrast
    kind: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None = None
    flip_angle: float = 90.0
    field_strength: float = 3.0
    contrast_agent: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def null_inversion_time(t1: float, repetition_time: float) -> float:
    """TI that nulls a tissue of longitudinal relaxation ``t1`` for a given TR (ms)."""
    return t1 * (math.log(2.0) - math.log1p(math.exp(-repetition_time / t1)))


def draw_sequences(
    contrasts: list[Contrast], rng: np.random.Generator, field_strength: float = 3.0
) -> dict[Contrast, Sequence]:
    """Sequence parameters around each contrast's typical values (scanner variety), deterministic for ``rng``.

    T1 and T1Gd share one family per case, 2-D spin echo or 3-D spoiled gradient echo, as in most protocols.
    """
    t1_family = "GRE3D" if rng.random() < 0.5 else "SE"
    csf_t1 = TISSUES[field_strength][Tissue.CSF].t1
    sequences: dict[Contrast, Sequence] = {}
    for contrast in contrasts:
        if contrast in (Contrast.T1, Contrast.T1GD):
            if t1_family == "GRE3D":
                seq = Sequence(
                    contrast,
                    "GRE3D",
                    float(rng.uniform(8.0, 25.0)),
                    float(rng.uniform(2.5, 5.0)),
                    flip_angle=float(rng.uniform(18.0, 30.0)),
                    field_strength=field_strength,
                    contrast_agent=contrast == Contrast.T1GD,
                )
            else:
                seq = Sequence(
                    contrast,
                    "SE",
                    float(rng.uniform(400.0, 650.0)),
                    float(rng.uniform(8.0, 15.0)),
                    field_strength=field_strength,
                    contrast_agent=contrast == Contrast.T1GD,
                )
        elif contrast == Contrast.T2:
            seq = Sequence(
                contrast,
                "SE",
                float(rng.uniform(3000.0, 6000.0)),
                float(rng.uniform(80.0, 120.0)),
                field_strength=field_strength,
            )
        elif contrast == Contrast.PD:
            seq = Sequence(
                contrast,
                "SE",
                float(rng.uniform(3000.0, 5000.0)),
                float(rng.uniform(8.0, 20.0)),
                field_strength=field_strength,
            )
        else:
            repetition = float(rng.uniform(8000.0, 11000.0))
            inversion = null_inversion_time(csf_t1, repetition) * float(rng.uniform(0.97, 1.03))
            seq = Sequence(
                contrast,
                "IR",
                repetition,
                float(rng.uniform(80.0, 140.0)),
                inversion_time=inversion,
                field_strength=field_strength,
            )
        sequences[contrast] = seq
    return sequences


def tissue_signal(params: TissueParameters, sequence: Sequence, gd_mmol: float = 0.0) -> float:
    """Steady-state magnitude signal of one tissue for one sequence (the equations in the module docstring)."""
    t1 = params.t1
    if sequence.contrast_agent and gd_mmol > 0:
        t1 = 1.0 / (1.0 / t1 + RELAXIVITY_R1[sequence.field_strength] * gd_mmol / 1000.0)
    e1 = math.exp(-sequence.repetition_time / t1)
    e2 = math.exp(-sequence.echo_time / params.t2)
    if sequence.kind == "SE":
        return params.pd * (1.0 - e1) * e2
    if sequence.kind == "IR":
        assert sequence.inversion_time is not None
        return params.pd * abs(1.0 - 2.0 * math.exp(-sequence.inversion_time / t1) + e1) * e2
    alpha = math.radians(sequence.flip_angle)
    return params.pd * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1) * e2


def signal_table(sequence: Sequence, gd: dict[Tissue, float] | None = None) -> np.ndarray:
    """Signal per :class:`Tissue` value (a lookup table indexed by the tissue volume)."""
    table = np.zeros(max(Tissue) + 1, dtype=np.float32)
    for tissue, params in TISSUES[sequence.field_strength].items():
        value = tissue_signal(params, sequence, (gd or {}).get(tissue, 0.0))
        if tissue == Tissue.VESSEL and sequence.kind in ("SE", "IR") and not sequence.contrast_agent:
            value *= FLOW_VOID
        table[tissue] = value
    return table


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth multiplicative field ``exp(Σ c·polynomial)`` of degree ≤ 2 over the volume, spanning ≈ ±amplitude."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    z, y, x = axes
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    log_field = sum(float(rng.normal(0.0, 1.0)) * t for t in terms)
    scale = max(float(np.abs(log_field).max()), 1e-6)
    return np.exp(amplitude * log_field / scale).astype(np.float32)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)


def output_grid(anatomy: Anatomy, resolution_mm: float) -> sitk.Image:
    """An isotropic axial LPS grid covering the anatomy's extent at ``resolution_mm``."""
    geometry = anatomy.geometry
    size_mm = np.array(geometry.GetSize()) * np.array(geometry.GetSpacing())
    size = [max(round(float(s) / resolution_mm), 1) for s in size_mm]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((resolution_mm,) * 3)
    grid.SetDirection(geometry.GetDirection())
    start = np.array(geometry.GetSpacing()) * -0.5 + resolution_mm * 0.5  # align voxel corners
    direction = np.array(geometry.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(float(v) for v in np.array(geometry.GetOrigin()) + direction @ start))
    return grid


def _to_grid(volume: np.ndarray, anatomy: Anatomy, grid: sitk.Image, resolution_mm: float) -> np.ndarray:
    """Partial-volume low-pass (Gaussian, σ = half an output voxel, at least 0.5 mm) and linear resampling."""
    image = anatomy.image(volume.astype(np.float32))
    image = sitk.SmoothingRecursiveGaussian(image, max(0.5 * resolution_mm, 0.5))
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0))


@dataclass
class SimulationOptions:
    """What varies between simulated acquisitions (all drawn from the seed unless given)."""

    field_strength: float = 3.0
    resolution_mm: float = 1.0
    skull: bool = True
    noise_fraction: float | None = None  # σ as a fraction of mean WM signal; default drawn in [0.01, 0.04]
    bias_amplitude: float | None = None  # default drawn in [0.05, 0.25]
    max_intensity: int = 4000  # the brightest (99.9 %) head voxel after scaling to integers


def simulate(
    anatomy: Anatomy,
    contrasts: list[Contrast],
    rng: np.random.Generator,
    options: SimulationOptions | None = None,
) -> tuple[dict[Contrast, sitk.Image], dict[Contrast, Sequence], sitk.Image]:
    """Images (int16, on one grid) of every contrast, their sequences, and the intracranial mask on that grid."""
    options = options or SimulationOptions()
    if options.field_strength not in TISSUES:
        raise ValueError(f"field strength must be one of {sorted(TISSUES)} T, got {options.field_strength}")
    sequences = draw_sequences(contrasts, rng, options.field_strength)
    gd = {t: c * float(rng.uniform(0.7, 1.3)) for t, c in GD_CONCENTRATION.items()}
    noise_fraction = options.noise_fraction if options.noise_fraction is not None else float(rng.uniform(0.01, 0.04))
    bias_amplitude = options.bias_amplitude if options.bias_amplitude is not None else float(rng.uniform(0.05, 0.25))
    grid = output_grid(anatomy, options.resolution_mm)
    texture = 1.0 + 0.03 * _texture(anatomy.tissues.shape, rng)  # micro-structure shared by all contrasts
    intracranial = _to_grid(
        np.isin(anatomy.tissues, INTRACRANIAL).astype(np.float32), anatomy, grid, options.resolution_mm
    )
    head = _to_grid((anatomy.tissues != Tissue.AIR).astype(np.float32), anatomy, grid, options.resolution_mm) > 0.5
    keep = intracranial > 0.5 if not options.skull else np.ones_like(head)
    field = bias_field(intracranial.shape, rng, bias_amplitude)
    images: dict[Contrast, sitk.Image] = {}
    for contrast in contrasts:
        sequence = sequences[contrast]
        table = signal_table(sequence, gd)
        wm_signal = float(table[Tissue.WM])
        signal = _to_grid(table[anatomy.tissues] * texture, anatomy, grid, options.resolution_mm) * field
        noisy = rician(signal, noise_fraction * wm_signal, rng)
        noisy[~keep] = 0.0
        reference = float(np.percentile(noisy[head & keep], 99.9)) if (head & keep).any() else 1.0
        scaled = np.clip(np.rint(noisy / max(reference, 1e-12) * options.max_intensity), 0, 32767).astype(np.int16)
        image = sitk.GetImageFromArray(scaled)
        image.CopyInformation(grid)
        images[contrast] = image
    mask = sitk.GetImageFromArray((intracranial > 0.5).astype(np.uint8))
    mask.CopyInformation(grid)
    return images, sequences, mask


def _texture(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, 1.5))
    return (smooth / max(float(smooth.std()), 1e-6)).astype(np.float32)
