"""Series I/O and the one preprocessing (orient, resample, register, normalise, and the inverse)."""

from codebrain_node.imaging.preprocess import PreparedStudy, prepare_study, restore
from codebrain_node.imaging.series_io import read_series

__all__ = ["PreparedStudy", "prepare_study", "read_series", "restore"]
