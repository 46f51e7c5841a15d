"""One vocabulary of MR contrasts for the whole project.

Every stage speaks :class:`Contrast`; names from files (BraTS ``t1n``/``t1c``/``t2w``/``t2f``, IXI ``T1``/``T2``/``PD``)
and from DICOM headers are mapped onto it at the edges, here and in ``route/classify.py``.
"""

from __future__ import annotations

from enum import StrEnum


class Contrast(StrEnum):
    """A structural brain MR contrast the model can read or synthesise."""

    T1 = "T1"
    T1GD = "T1Gd"
    T2 = "T2"
    PD = "PD"
    FLAIR = "FLAIR"

    @classmethod
    def parse(cls, name: str) -> Contrast:
        """Map any known spelling (``t1c``, ``T1Gd``, ``t2f``, ``flair`` ...) onto the vocabulary."""
        key = name.strip().lower().replace("-", "").replace("_", "")
        try:
            return _ALIASES[key]
        except KeyError:
            known = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown contrast {name!r}; expected one of {known}") from None


def parse_contrast_list(text: str | list[str]) -> list[Contrast]:
    """Parse ``"T1,T2,FLAIR"`` (or a list) into contrasts, keeping order and refusing duplicates."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [Contrast.parse(item) for item in items if item.strip()]
    if len(set(out)) != len(out):
        raise ValueError(f"contrast listed twice in {text!r}")
    return out


#: File stems of the BraTS 2023 layout, in BraTS order.
BRATS_FILE_NAMES: dict[str, Contrast] = {
    "t1n": Contrast.T1,
    "t1c": Contrast.T1GD,
    "t2w": Contrast.T2,
    "t2f": Contrast.FLAIR,
}

_ALIASES: dict[str, Contrast] = {
    **BRATS_FILE_NAMES,
    "t1": Contrast.T1,
    "t1w": Contrast.T1,
    "t1gd": Contrast.T1GD,
    "t1ce": Contrast.T1GD,
    "t1post": Contrast.T1GD,
    "t1c+": Contrast.T1GD,
    "t2": Contrast.T2,
    "pd": Contrast.PD,
    "pdw": Contrast.PD,
    "flair": Contrast.FLAIR,
    "t2flair": Contrast.FLAIR,
}
