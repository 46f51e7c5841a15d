"""The spine of the node: every study, series, instance, association, job, export and audit event lives here.

The schema is made only by the Alembic migrations in ``alembic/versions``; a test checks that these models and
the migrations never drift apart. States are stored as short strings (portable across SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; every timestamp we store is UTC, so say so."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


def _state(enum: type[StrEnum]) -> Enum:
    # Non-native enum: a VARCHAR on every backend, so adding a state needs no ALTER TYPE.
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=24,
        values_callable=lambda members: [m.value for m in members],
    )


class StudyState(StrEnum):
    """A study's life (transitions live in ``route/``): receiving → stable → queued → imputing → written →
    awaiting_review → exported, or ignored (nothing to do), rejected, failed, dead_letter."""

    RECEIVING = "receiving"
    STABLE = "stable"
    QUEUED = "queued"
    IMPUTING = "imputing"
    WRITTEN = "written"
    AWAITING_REVIEW = "awaiting_review"
    APPROVED = "approved"
    EXPORTED = "exported"
    REJECTED = "rejected"
    IGNORED = "ignored"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Withdrawn before any worker claimed it: instances arrived, so the study is planned again (one job runs).
    CANCELLED = "cancelled"


class ExportStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD_LETTER = "dead_letter"
    #: Never to be sent: its series was superseded before delivery.
    CANCELLED = "cancelled"


class ExportKind(StrEnum):
    """What an Export row delivers: the synthetic series itself, or the IHE IOCM rejection note that withdraws
    it (a Key Object Selection Document, PS3.3 A.35.4) after it was superseded."""

    SERIES = "series"
    REJECTION_NOTE = "rejection_note"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[StudyState] = mapped_column(_state(StudyState), default=StudyState.RECEIVING, index=True)
    # Patient details are kept for the signed-in worklist only; they are never logged.
    patient_name: Mapped[str | None] = mapped_column(String(256))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(256))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    #: Contrast from ``route/classify.py`` (None until classified; "other" when not an input).
    contrast: Mapped[str | None] = mapped_column(String(16))
    classification_reason: Mapped[str | None] = mapped_column(Text)
    #: True for series this node wrote (they are never inputs).
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: A synthetic series no longer current: its contrast was acquired after all, or a newer synthetic series
    #: (made from changed inputs) replaces it. Kept, never deleted; never sent again, never approved.
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The series that took its place (the acquired one, or the replacement), when there is one.
    superseded_by_series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="SET NULL"))
    superseded_reason: Mapped[str | None] = mapped_column(String(256))
    #: For a series this node wrote that describes another synthetic series instead of imaging a contrast (the
    #: model's confidence as a Parametric Map, ``write/parametric_map.py``): that series. It is exported with it,
    #: superseded and withdrawn with it, and is never a review panel or a contrast the study has of its own.
    describes_series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")
    exports: Mapped[list[Export]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The association that delivered it (None: written by this node, or filed from the spool after a crash).
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id", ondelete="SET NULL"), index=True)

    series: Mapped[Series] = relationship(back_populates="instances")

    def file_in(self, data_dir: Path) -> Path:
        """The instance's file: ``path`` as recorded, a relative one taken from the node's data folder."""
        return instance_file(self.path, data_dir)


def instance_file(recorded: str, data_dir: Path) -> Path:
    """Where a recorded instance path points (one rule for every stage that opens instance files)."""
    path = Path(recorded)
    return path if path.is_absolute() else Path(data_dir) / path


class Association(Base):
    """One DICOM association a peer opened with our Storage SCP (PS3.8 7.1), from A-ASSOCIATE-AC to its release,
    abort or lost connection.

    A study is not complete while an association that delivered any of its instances is open (``route/stable.py``):
    kept in the database, not in the receiver's memory, so every node sharing the database decides alike and
    ``status`` can show it. ``receiver`` (``host:pid``) names the process that accepted it, so a restarted node
    closes the rows its dead predecessor left open.
    """

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The receiver's own name for it, so instances can refer to it before the row exists.
    key: Mapped[str] = mapped_column(String(64), unique=True)
    receiver: Mapped[str] = mapped_column(String(128))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    called_ae_title: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    peer_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: None while open.
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    #: ``released``, ``aborted``, ``connection closed``, ``receiver stopped`` or ``receiver died``.
    end_reason: Mapped[str | None] = mapped_column(String(32))
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Job(Base):
    """One imputation of one stable study; claimed by exactly one engine worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    status: Mapped[JobStatus] = mapped_column(_state(JobStatus), default=JobStatus.QUEUED)
    #: ``{contrast: series_instance_uid}`` of the chosen inputs, and the contrasts to synthesise.
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    targets: Mapped[list[str]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    #: Stage timings in seconds (load, preprocess, model, write ...).
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="jobs")


class Export(Base):
    """Delivery of one synthetic series, or of the rejection note that withdraws it, to one destination; at most
    one row per (series, destination, kind)."""

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("series_id", "destination", "kind", name="uq_exports_series_destination_kind"),
        Index("ix_exports_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[ExportKind] = mapped_column(_state(ExportKind), default=ExportKind.SERIES)
    #: The file a rejection note sends (the series' own files are its Instance rows).
    path: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[ExportStatus] = mapped_column(_state(ExportStatus), default=ExportStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    series: Mapped[Series] = relationship(back_populates="exports")


class ExportDelivery(Base):
    """One instance of a series export that its destination acknowledged (a C-STORE success, a file in place):
    a resend after a crash or a failure mid-series sends only the instances without a row."""

    __tablename__ = "export_deliveries"
    __table_args__ = (UniqueConstraint("export_id", "instance_id", name="uq_export_deliveries_export_instance"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CommitmentStatus(StrEnum):
    """Where a Storage Commitment transaction stands (PS3.4 Annex J)."""

    #: Asked (N-ACTION answered success), no N-EVENT-REPORT yet.
    PENDING = "pending"
    #: Every referenced instance committed (Event Type ID 1).
    COMMITTED = "committed"
    #: At least one instance not committed (Event Type ID 2), or the request itself failed.
    FAILED = "failed"
    #: No N-EVENT-REPORT within the destination's storage_commitment_timeout_s (a late one is still recorded).
    TIMED_OUT = "timed_out"


class CommitmentRole(StrEnum):
    """Our side of a Storage Commitment transaction."""

    #: We asked a destination to commit a synthetic series we sent it.
    SCU = "scu"
    #: A peer asked us to commit instances it sent us.
    SCP = "scp"


class StorageCommitment(Base):
    """One Storage Commitment Push Model transaction (PS3.4 Annex J), either side.

    As SCU it is the hand-over between stages: the exporter writes the row when it sends the N-ACTION and waits
    for its status to change; the receiver, which gets the N-EVENT-REPORT on a new association, writes the result.
    As SCP it records what we answered. ``failures`` lists ``{sop_class_uid, sop_instance_uid, reason}`` (UIDs
    and PS3.4 J.3.3 Failure Reason codes only, never patient data)."""

    __tablename__ = "storage_commitments"

    id: Mapped[int] = mapped_column(primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[CommitmentRole] = mapped_column(_state(CommitmentRole))
    #: The other side's AE title (the destination's, or the requester's).
    peer_ae_title: Mapped[str | None] = mapped_column(String(16))
    #: The series export this commitment settles (SCU only).
    export_id: Mapped[int | None] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    status: Mapped[CommitmentStatus] = mapped_column(
        _state(CommitmentStatus), default=CommitmentStatus.PENDING, index=True
    )
    instances: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: How it went, in words: the N-ACTION's failure, how the report travelled, why none came.
    detail: Mapped[str | None] = mapped_column(String(256))


class ReviewSession(Base):
    """A signed-in review session, server side: the cookie carries a random token whose SHA-256 is ``id``. Sign-out
    revokes the row, so a copy of the cookie made before it opens nothing."""

    __tablename__ = "review_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SignInFailures(Base):
    """Failed sign-ins counted against a user name or a client address (``kind``), and the lock-out they caused;
    in the database so a restart does not forgive them."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_sign_in_failures_kind_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """Who did what, when: every study transition and every reviewer action."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
