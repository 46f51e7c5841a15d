"""Series I/O and the one preprocessing (orient, resample, register, normalise, and the inverse)."""

from codebrain_node.imaging.preprocess import PreparedStudy, choose_reference, prepare_study, restore, restore_map
from codebrain_node.imaging.series_io import read_series

__all__ = ["PreparedStudy", "choose_reference", "prepare_study", "read_series", "restore", "restore_map"]
