"""Export: send approved synthetic series to each configured destination, once, with retries and a dead letter.

``base.py`` is the small interface every destination kind implements, ``scu.py`` (DICOM C-STORE) and
``folder.py`` are the kinds, ``dispatch.py`` schedules, sends, backs off and settles the study's state.
"""
