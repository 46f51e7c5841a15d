"""One logging set-up for every command: level and text-or-JSON from the settings.

Log lines carry UIDs, AE titles, counts and timings, never patient names, IDs or birth dates; the
:class:`PhiFilter` is a last line of defence that masks DICOM person names and dates should one slip through.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PHI_PATTERNS = (
    # DICOM person names (Family^Given^...), e.g. 'DOE^JANE'
    re.compile(r"[A-Za-z][A-Za-z'-]*\^[A-Za-z'^-]*"),
    # keyword=value pairs naming patient attributes
    re.compile(r"(Patient(?:Name|ID|BirthDate)\s*[=:]\s*)\S+", re.IGNORECASE),
)


class PhiFilter(logging.Filter):
    """Mask person names and patient attributes in a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _PHI_PATTERNS[1].sub(r"\1***", message)
        masked = _PHI_PATTERNS[0].sub("***", masked)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (idempotent: a second call replaces it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PhiFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_codebrain", False):
            root.removeHandler(old)
    handler._codebrain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom (every association) and alembic (every migration step) are chatty at INFO; keep them for DEBUG.
    for chatty in ("pynetdicom", "alembic", "apscheduler"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))
    # A periodic check that outlasts its interval (a long export) is simply skipped once, by design
    # (max_instances=1); apscheduler would say so at WARNING on every tick. Failed jobs still log at ERROR.
    logging.getLogger("apscheduler.scheduler").setLevel(max(logging.getLevelName(level), logging.ERROR))
