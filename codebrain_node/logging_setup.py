"""One logging set-up for every command: level and text-or-JSON from the settings.

Log lines carry UIDs, AE titles, counts and timings, never patient names, IDs or birth dates; the
:class:`PhiFilter` is a last line of defence that masks DICOM person names, patient attributes and the SQL
parameters a database error echoes, in the message, the exception's text and traceback and the stack alike.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PATIENT_KEY = (
    r"(?:patient[_ ]?(?:name|id|birth[_ ]?date|address)|other[_ ]?patient[_ ]?ids|accession[_ ]?number|study[_ ]?date)"
)
_PHI_PATTERNS = (
    # SQLAlchemy's echo of a failed statement's bound values ("[parameters: {...}]", one line): all of it
    (re.compile(r"\[parameters: [^\n]*"), "[parameters: ***]"),
    # PostgreSQL's DETAIL lines: 'Key (patient_id)=(12345) already exists', 'Failing row contains (...)'
    (re.compile(r"(Key \([^)\n]*\)=\()[^\n]*?(\)[ .])"), r"\1***\2"),
    (re.compile(r"(Failing row contains )\([^\n]*\)"), r"\1(***)"),
    # keyword=value pairs naming patient attributes, DICOM keywords or column names, values bare or quoted
    (
        re.compile(rf"({_PATIENT_KEY}['\"]?\s*[=:]\s*)('[^'\n]*'|\"[^\"\n]*\"|\S+)", re.IGNORECASE),
        r"\1***",
    ),
    (re.compile(r"(Patient(?:Name|ID|BirthDate)\s*[=:]\s*)\S+", re.IGNORECASE), r"\1***"),
    # DICOM person names (Family^Given^...), e.g. 'DOE^JANE'
    (re.compile(r"[A-Za-z][A-Za-z'-]*\^[A-Za-z'^-]*"), "***"),
)


def mask_phi(text: str) -> str:
    """``text`` with person names, patient attributes and echoed SQL parameters masked."""
    for pattern, replacement in _PHI_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class PhiFilter(logging.Filter):
    """Mask person names and patient attributes in everything a record prints: its message, the text and
    traceback of its exception (a database error echoes the row it refused) and its stack.

    The exception is formatted here, masked, and left as ``exc_text``, which every formatter prints instead of
    formatting the exception again; so a handler added later with its own formatter prints the masked text too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_phi(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = mask_phi(record.exc_text or _FORMATTER.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_phi(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_phi(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            # the PhiFilter's masked text when it ran (formatting the exception again would undo it)
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        if record.stack_info:
            entry["stack"] = record.stack_info
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
