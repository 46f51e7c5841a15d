"""The database: models (the spine) and sessions/migrations."""

from codebrain_node.db.models import (
    Association,
    AuditEvent,
    Base,
    Export,
    ExportKind,
    ExportStatus,
    Instance,
    Job,
    JobStatus,
    Series,
    Study,
    StudyState,
)
from codebrain_node.db.session import make_engine, session_factory, transaction, upgrade

__all__ = [
    "Association",
    "AuditEvent",
    "Base",
    "Export",
    "ExportKind",
    "ExportStatus",
    "Instance",
    "Job",
    "JobStatus",
    "Series",
    "Study",
    "StudyState",
    "make_engine",
    "session_factory",
    "transaction",
    "upgrade",
]
