"""The campaign's figures (#16): each campaign test adds what it measured under a heading; at the end of the session
conftest.py's ``pytest_terminal_summary`` prints them and writes them to ``robustness-campaign.json`` in the
session's temporary folder, for the closing note to quote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: heading (the test and its backend) -> what it measured
FIGURES: dict[str, Any] = {}


def record(heading: str, figures: Any) -> None:
    FIGURES[heading] = figures


def write(folder: Path) -> Path:
    path = folder / "robustness-campaign.json"
    path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
    return path


def lines() -> list[str]:
    """One line per figure, nested dictionaries flattened to ``heading / key: value``."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix} / {key}" if prefix else str(key), inner)
        else:
            out.append(f"{prefix}: {value}")

    walk("", FIGURES)
    return out
