"""How long ago, said the same way by ``status``, ``worklist list`` and the review page."""

from __future__ import annotations


def format_age(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h 5 min``, ``2 d 4 h``: coarse enough to read at a glance, never a float."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
