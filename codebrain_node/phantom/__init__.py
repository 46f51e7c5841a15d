"""MR physics phantom: anatomies, signal equations, NIfTI cases and DICOM studies for tests, training and demos."""

from codebrain_node.phantom.case import PhantomCase, make_phantom_case, run_phantom, write_nifti_case
from codebrain_node.phantom.dicom_study import SeriesLayout, write_dicom_study

__all__ = ["PhantomCase", "SeriesLayout", "make_phantom_case", "run_phantom", "write_dicom_study", "write_nifti_case"]
