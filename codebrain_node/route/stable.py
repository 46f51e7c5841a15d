"""Completeness: a study is stable when its senders are done and it has been quiet since; then route it.

DICOM has no "end of study" message. What the node has is the end of each association (A-RELEASE, PS3.8 7.2)
and the time of each instance, so a study is complete when

  - no association that delivered any of its instances is still open (a sender that pauses — a busy machine, a
    scanner reconstructing the next series, a PACS forwarding series by series over one association — is not
    done), and
  - ``routing.quiet_period_s`` has passed since the later of its last instance and the release of every such
    association (a sender that sends series by series over several associations gets the quiet period to open
    the next one).

A study still held by an open association ``routing.force_complete_after_s`` after its last instance is settled
anyway, with a log line (as mercure's force-complete): a sender that never releases, or a row whose node died
on another host. The associations are rows in the database (``db/associations.py``), so every node sharing it
decides alike. Then:

    RECEIVING ─► STABLE ─► classify every acquired series (contrast + reason stored on the Series row)
                         ─► supersede any current synthetic series of a contrast now acquired (never sent again)
                         ─► pick one input per contrast (``classify.preference_key``)
                         ─► QUEUED with one Job  (≥1 usable input and ≥1 missing contrast to synthesise)
                         ├► WRITTEN, on by the export policy (a done job's inputs are unchanged: its results
                         │                                    stand, nothing is imputed twice)
                         └► IGNORED with the reason (otherwise)

A study that receives a late series after it had a job is settled again the same way; the engine supersedes
the earlier synthetic series of each contrast it makes again from the changed inputs.

APScheduler only calls :func:`check_stable_studies` every ``routing.check_interval_s``; everything it decides is
in the database, so a restarted node (a new scheduler on the same database) carries on where the old one stopped.
Each study is settled in its own transaction; on PostgreSQL the study row is taken with ``FOR UPDATE SKIP
LOCKED`` so schedulers of several nodes sharing one database never settle one study twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import RoutingSettings, Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.associations import holds_of
from codebrain_node.db.lifecycle import apply_export_policy, stable_candidates, transition
from codebrain_node.db.models import ExportKind, Instance, Job, JobStatus, Series, Study, StudyState, as_utc, utcnow
from codebrain_node.db.session import row_locks
from codebrain_node.db.superseding import current_synthetic, supersede
from codebrain_node.route.classify import Classification, RuleTable, classify_paths, load_rules, pick_inputs

log = logging.getLogger(__name__)

ACTOR = "scheduler"
SCHEDULER_JOB_ID = "check-stable-studies"


def wanted_contrasts(model_contrasts: Sequence[Contrast], synthesize: Sequence[Contrast]) -> list[Contrast]:
    """Contrasts the node may synthesise: the model's set, narrowed by ``routing.synthesize`` when it is set."""
    allowed = set(synthesize) if synthesize else set(model_contrasts)
    return [contrast for contrast in model_contrasts if contrast in allowed]


def check_stable_studies(
    factory: sessionmaker[Session],
    settings: Settings,
    model_contrasts: Sequence[Contrast],
    now: datetime | None = None,
    rules: RuleTable | None = None,
) -> list[int]:
    """Settle every RECEIVING study that is complete at ``now`` (see the module docstring); return the ids
    settled this call.

    A study that cannot be settled (an unexpected error) is logged and stays RECEIVING, so the next check tries
    again; one bad study never blocks the others.
    """
    now = as_utc(now) if now is not None else utcnow()
    rules = rules if rules is not None else load_rules(settings.routing.classify_rules)
    quiet_since = now - timedelta(seconds=settings.routing.quiet_period_s)
    with factory() as session:
        candidates = complete_studies(session, stable_candidates(session, quiet_since), now, settings.routing)
    settled = []
    for study_id, why in candidates:
        try:
            if settle_study(factory, study_id, quiet_since, settings, model_contrasts, rules, why=why):
                settled.append(study_id)
        except Exception:  # one study's failure (unreadable disk, lost race) must not stop the others
            log.exception("could not settle study id %s; will retry at the next check", study_id)
    return settled


def complete_studies(
    session: Session, candidates: Sequence[Study], now: datetime, routing: RoutingSettings
) -> list[tuple[int, str]]:
    """``(study id, why)`` of the ``candidates`` (quiet since their last instance) that are complete at ``now``:
    no association that delivered them is open and the quiet period has passed since the last one ended, or
    they have been held open longer than ``routing.force_complete_after_s``."""
    quiet = timedelta(seconds=routing.quiet_period_s)
    holds = holds_of(session, [study.id for study in candidates])
    complete = []
    for study in candidates:
        hold = holds.get(study.id)
        last = as_utc(study.last_received_at)
        if hold is None:
            complete.append((study.id, "quiet period elapsed"))
        elif hold.open:
            held_s = (now - last).total_seconds()
            if held_s >= routing.force_complete_after_s:
                log.warning(
                    "study id %s settled with %d association(s) that delivered it still open: nothing received for "
                    "%.0f s (routing.force_complete_after_s = %.0f)",
                    study.id,
                    hold.open,
                    held_s,
                    routing.force_complete_after_s,
                )
                complete.append((study.id, f"forced: {hold.open} association(s) still open, quiet {held_s:.0f} s"))
        elif hold.last_ended_at is None or max(last, hold.last_ended_at) + quiet <= now:
            complete.append((study.id, "senders released, quiet period elapsed"))
    return complete


def settle_study(
    factory: sessionmaker[Session],
    study_id: int,
    quiet_since: datetime,
    settings: Settings,
    model_contrasts: Sequence[Contrast],
    rules: RuleTable,
    *,
    why: str = "quiet period elapsed",
) -> bool:
    """STABLE → classify → QUEUED (+Job), WRITTEN (results current) or IGNORED, in one transaction. False if
    the study moved meanwhile."""
    try:
        return _settle(factory, study_id, quiet_since, settings, model_contrasts, rules, why)
    except _InstanceArrived:
        log.info("study id %s received an instance while being settled; looked at again later", study_id)
        return False


class _InstanceArrived(Exception):
    """Raised inside the settling transaction to roll it back."""


def _settle(
    factory: sessionmaker[Session],
    study_id: int,
    quiet_since: datetime,
    settings: Settings,
    model_contrasts: Sequence[Contrast],
    rules: RuleTable,
    why: str,
) -> bool:
    with factory() as session, session.begin():
        query = select(Study).where(
            Study.id == study_id, Study.state == StudyState.RECEIVING, Study.last_received_at <= quiet_since
        )
        if row_locks(session):
            query = query.with_for_update(skip_locked=True)
        study = session.scalars(query).first()
        if study is None:
            return False
        transition(session, study, StudyState.STABLE, ACTOR, reason=why)
        session.flush()
        # SQLite has no row lock: once our first write holds the database's write lock, make sure no instance
        # was recorded between the candidate query and that write (on PostgreSQL the row lock guarantees it).
        latest = session.scalar(select(Study.last_received_at).where(Study.id == study_id))
        if as_utc(latest) > quiet_since:
            raise _InstanceArrived
        classified = classify_study(session, study, rules, settings.paths.data_dir)
        inputs = pick_inputs(((s.series_instance_uid, c) for s, c in classified), allowed=model_contrasts)
        supersede_acquired(session, study, inputs, {s.series_instance_uid: s for s, _ in classified})
        targets = [c for c in wanted_contrasts(model_contrasts, settings.routing.synthesize) if c not in inputs]
        series_summary = {s.series_instance_uid: s.contrast for s, _ in classified}
        input_map = {contrast.value: uid for contrast, uid in sorted(inputs.items())}
        reason = _reason_to_ignore(inputs, targets, model_contrasts)
        done = None if reason is not None else _same_job_already_done(session, study, inputs, targets)
        if done is not None and _results_stand(session, study, done, targets, settings):
            return True
        if done is not None:
            reason = f"already synthesised from these unchanged inputs by job {done}"
        if reason is not None:
            transition(session, study, StudyState.IGNORED, ACTOR, reason=reason, series=series_summary)
            log.info("study id %s ignored: %s", study.id, reason)
            return True
        job = Job(
            study=study,
            inputs=input_map,
            targets=[contrast.value for contrast in targets],
            max_attempts=settings.engine.max_attempts,
            status=JobStatus.QUEUED,
            attempts=0,
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        transition(
            session,
            study,
            StudyState.QUEUED,
            ACTOR,
            job_id=job.id,
            inputs=input_map,
            targets=job.targets,
            series=series_summary,
        )
        log.info(
            "study id %s queued as job %s: inputs %s, targets %s",
            study.id,
            job.id,
            ",".join(input_map),
            ",".join(job.targets),
        )
        return True


def classify_study(
    session: Session, study: Study, rules: RuleTable, data_dir: Path
) -> list[tuple[Series, Classification]]:
    """Classify every acquired series of ``study`` and store contrast and reason on its row.

    Series this node wrote keep what the engine recorded; they are never inputs.
    """
    results = []
    for series in sorted(study.series, key=lambda s: (s.series_number or 0, s.id)):
        if series.is_synthetic:
            continue
        instances = sorted(series.instances, key=lambda i: (i.instance_number or 0, i.id))
        paths = [instance.file_in(data_dir) for instance in instances]
        classification = classify_paths(paths, rules)
        series.contrast = classification.label
        series.classification_reason = classification.reason
        results.append((series, classification))
    return results


def supersede_acquired(
    session: Session, study: Study, inputs: dict[Contrast, str], acquired: dict[str, Series]
) -> list[Series]:
    """Supersede every current synthetic series whose contrast is now acquired (a late series): PACS must never
    hold a synthetic image beside the acquired one it stands in for. Returns those superseded."""
    superseded = []
    for series in current_synthetic(session, study.id):
        contrast = next((c for c in inputs if c.value == series.contrast), None)
        if contrast is None:
            continue
        by = acquired[inputs[contrast]]
        supersede(session, series, by=by, reason=f"{contrast.value} acquired: series #{by.series_number}", actor=ACTOR)
        superseded.append(series)
    return superseded


def _reason_to_ignore(
    inputs: dict[Contrast, str], targets: Sequence[Contrast], model_contrasts: Sequence[Contrast]
) -> str | None:
    """Why the study needs no job (None: it needs one, unless a done job already made it)."""
    if not inputs:
        return f"no usable input series (the model reads {', '.join(c.value for c in model_contrasts)})"
    if not targets:
        present = ", ".join(c.value for c in sorted(inputs))
        return f"nothing to synthesise: {present} acquired, no wanted contrast missing"
    return None


def _results_stand(
    session: Session, study: Study, job_id: int, targets: Sequence[Contrast], settings: Settings
) -> bool:
    """A done job's inputs are unchanged (only other series arrived): its current synthetic series stand.

    STABLE → WRITTEN, then APPROVED if they were approved before (they have deliveries; the same series need no
    second approval) or else on by the export policy. False when none of them is current (nothing to stand).
    """
    wanted = {c.value for c in targets}
    current = [s for s in current_synthetic(session, study.id) if s.contrast in wanted]
    if not current:
        return False
    transition(session, study, StudyState.WRITTEN, ACTOR, job_id=job_id, reason="inputs unchanged; results current")
    approved_before = all(any(e.kind == ExportKind.SERIES for e in s.exports) for s in current)
    if approved_before:
        transition(session, study, StudyState.APPROVED, ACTOR, job_id=job_id, reason="approved before, unchanged")
    else:
        apply_export_policy(session, study, settings.export.policy)
    log.info("study id %s: inputs unchanged, the results of job %s stand", study.id, job_id)
    return True


def _same_job_already_done(
    session: Session, study: Study, inputs: dict[Contrast, str], targets: Sequence[Contrast]
) -> int | None:
    """A finished job with the same inputs and targets whose input series got no instance since it was created.

    A study reopened by a re-sent instance would otherwise be imputed (and exported) again, identically.
    """
    input_map = {contrast.value: uid for contrast, uid in inputs.items()}
    query = select(Job).where(Job.study_id == study.id, Job.status == JobStatus.DONE).order_by(Job.id.desc())
    for job in session.scalars(query):
        if dict(job.inputs) != input_map or not {c.value for c in targets} <= set(job.targets):
            continue
        newer = session.scalars(
            select(Instance.received_at)
            .join(Series)
            .where(Series.series_instance_uid.in_(list(input_map.values())))
            .order_by(Instance.received_at.desc())
            .limit(1)
        ).first()
        created = as_utc(job.created_at)
        if newer is None or created is None or as_utc(newer) <= created:
            return job.id
    return None


def _check_and_log(
    factory: sessionmaker[Session], settings: Settings, model_contrasts: Sequence[Contrast], rules: RuleTable
) -> None:
    try:
        settled = check_stable_studies(factory, settings, model_contrasts, rules=rules)
    except Exception:  # the database may be briefly unavailable; the next run tries again
        log.exception("stable-study check failed")
        return
    if settled:
        log.debug("settled %d studies", len(settled))


def make_scheduler(
    factory: sessionmaker[Session], settings: Settings, model_contrasts: Sequence[Contrast]
) -> BackgroundScheduler:
    """A (not yet started) scheduler that runs the stable-study check now and every ``check_interval_s``.

    The rule table is read once here, so a broken ``routing.classify_rules`` stops the node at start.
    Runs never overlap (``max_instances=1``) and missed runs collapse into one (``coalesce``).
    """
    rules = load_rules(settings.routing.classify_rules)
    unknown = [c.value for c in settings.routing.synthesize if c not in model_contrasts]
    if unknown:
        log.warning("routing.synthesize lists %s, which the model does not know; ignored", ", ".join(unknown))
    scheduler = BackgroundScheduler(
        timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    )
    scheduler.add_job(
        _check_and_log,
        "interval",
        seconds=settings.routing.check_interval_s,
        kwargs={"factory": factory, "settings": settings, "model_contrasts": list(model_contrasts), "rules": rules},
        id=SCHEDULER_JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC),
    )
    return scheduler
