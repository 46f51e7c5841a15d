"""Writing results: the synthetic MR series with every synthetic flag (``synthetic_series.py``)."""
