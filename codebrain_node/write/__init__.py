"""Writing results, one file per object the node writes: the synthetic MR series with every synthetic flag
(``synthetic_series.py``), the model's confidence in it as a Parametric Map (``parametric_map.py``), and the IHE
IOCM rejection note that withdraws a superseded one (``rejection_note.py``)."""
