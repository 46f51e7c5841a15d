"""Export: send approved synthetic series to each configured destination, once, with retries and a dead letter.

``base.py`` is the small interface every destination kind implements and the registry of kinds; one file per
kind registers itself there (``scu.py``: DICOM C-STORE, ``dicomweb.py``: DICOMweb STOW-RS, ``folder.py``: a
folder), each built from its own settings model in ``config.py``. ``dispatch.py`` looks kinds up, schedules,
sends, backs off and settles the study's state.
"""
