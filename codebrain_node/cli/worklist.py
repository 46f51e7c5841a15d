"""``codebrain-node worklist`` and ``user``: the review worklist from a terminal, and the web app's users.

The actions are ``review.worklist``'s (the same the web app calls); only the printing lives here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state, sessions

if TYPE_CHECKING:
    from codebrain_node.review.worklist import StudyDetail, WorklistRow

worklist_app = typer.Typer(help="The review worklist: list, show, approve, reject.", no_args_is_help=True)
user_app = typer.Typer(help="Review web app users.", no_args_is_help=True)
app.add_typer(worklist_app, name="worklist")
app.add_typer(user_app, name="user")


def _reviewer(name: str | None) -> str:
    """The audit trail's actor: the named reviewer, else the login running the command."""
    import getpass

    return f"user:{name or getpass.getuser()}"


@worklist_app.command("list")
def worklist_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only this status (awaiting_review, failed, ...).")] = None,
    contrast: Annotated[str | None, typer.Option(help="Only studies with this contrast (in or synthetic).")] = None,
    sort: Annotated[str, typer.Option(help="age, status, patient or updated.")] = "age",
    limit: Annotated[int, typer.Option(help="At most this many studies.")] = 50,
    show_patient: Annotated[bool, typer.Option("--show-patient", help="Also print patient name and ID.")] = False,
) -> None:
    """Studies with their worklist status, acquired and synthesised contrasts, and age."""
    from codebrain_node.review.worklist import list_worklist

    with sessions(app_state(ctx).settings)() as session:
        rows = list_worklist(session, status, contrast, sort=sort, limit=limit)
    for row in rows:
        typer.echo(_row_line(row, show_patient))
    if not rows:
        typer.echo("no studies")


def _row_line(row: WorklistRow, show_patient: bool) -> str:
    """One aligned line a study; patient details only when asked for."""
    from codebrain_node.review.worklist import format_age

    patient = f"  {row.patient_name} [{row.patient_id}]" if show_patient else ""
    acquired = ",".join(row.acquired) or "-"
    synthetic = ",".join(row.synthetic) or "-"
    return (
        f"{row.id:>6}  {row.status_label:<22} in:{acquired:<20} synth:{synthetic:<14} "
        f"{format_age(row.age_s):>10}  {row.study_instance_uid}{patient}"
    )


@worklist_app.command("show")
def worklist_show(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="Study id or Study Instance UID.")],
    show_patient: Annotated[bool, typer.Option("--show-patient", help="Also print patient name and ID.")] = False,
) -> None:
    """One study: series, jobs (model, inputs, timings), deliveries and the audit trail."""
    from codebrain_node.review.worklist import study_detail

    with sessions(app_state(ctx).settings)() as session:
        for line in _detail_lines(study_detail(session, study), show_patient):
            typer.echo(line)


def _detail_lines(detail: StudyDetail, show_patient: bool) -> Iterator[str]:
    """The study, then its series, jobs, exports and audit events, a line each (read while the session is open)."""
    s = detail.study
    yield f"study {s.id}  {s.study_instance_uid}  {detail.status_label}"
    if show_patient:
        yield f"  patient {s.patient_name or ''} [{s.patient_id or ''}]  accession {s.accession_number or ''}"
    for series in [*detail.acquired, *detail.synthetic, *detail.superseded]:
        kind = "superseded" if series.superseded_at else "synthetic " if series.is_synthetic else "acquired  "
        yield (
            f"  {kind} {series.contrast or '?':<6} #{series.series_number or '':<5} "
            f"{len(series.instances):>4} instances  {series.series_instance_uid}"
            + (f"  ({series.superseded_reason})" if series.superseded_at else "")
        )
    for job in detail.jobs:
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in (job.timings or {}).items() if isinstance(v, int | float))
        inputs = ", ".join(sorted(job.inputs or {}))
        yield f"  job #{job.id} {job.status} model={job.model_name or '-'} inputs={inputs} [{timings}]"
    for export in detail.exports:
        what = "rejection note " if export.kind == "rejection_note" else ""
        what += "confidence map " if export.series.describes_series_id else ""
        where = f"{what}{export.series.contrast} #{export.series.series_number or ''} -> {export.destination}"
        yield f"  export {where}: {export.status} ({export.attempts} attempts)"
    for event in detail.audit:
        details = ", ".join(f"{k}={v}" for k, v in (event.details or {}).items() if v not in (None, ""))
        yield f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.actor:<20} {event.action:<22} {details}"


StudyArgument = Annotated[str, typer.Argument(help="Study id or Study Instance UID.")]
ReasonOption = Annotated[str, typer.Option(help="Why (kept in the audit trail).")]
UserOption = Annotated[str | None, typer.Option("--user", help="Reviewer for the audit trail (default: $USER).")]


@worklist_app.command("approve")
def worklist_approve(
    ctx: typer.Context, study: StudyArgument, reason: ReasonOption = "", user: UserOption = None
) -> None:
    """Approve a study awaiting review: its synthetic series are scheduled for export."""
    _decide(ctx, "approve", study, reason, user)


@worklist_app.command("reject")
def worklist_reject(
    ctx: typer.Context, study: StudyArgument, reason: ReasonOption = "", user: UserOption = None
) -> None:
    """Reject a study awaiting review: its synthetic series are never sent."""
    _decide(ctx, "reject", study, reason, user)


def _decide(ctx: typer.Context, decision: str, study: str, reason: str, user: str | None) -> None:
    """One reviewer decision, in one transaction, through the review stage (the same rules as the web page)."""
    from codebrain_node.db.session import transaction
    from codebrain_node.review.worklist import approve, reject

    act, outcome = (
        (approve, "approved; the exporter sends it")
        if decision == "approve"
        else (reject, "rejected; nothing will be sent")
    )
    with transaction(sessions(app_state(ctx).settings)) as session:
        decided = act(session, study, _reviewer(user), reason)
        typer.echo(f"study {decided.id} {outcome}")


@user_app.command("hash-password")
def user_hash_password(
    name: Annotated[str, typer.Option(help="User name for the printed \\[\\[review.users]] table.")] = "radiologist",
    role: Annotated[str, typer.Option(help="reviewer or viewer.")] = "reviewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Hash a password (Argon2id) and print a \\[\\[review.users]] table to paste into the config."""
    from codebrain_node.review.auth import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    typer.echo(f'[[review.users]]\nname = "{name}"\npassword_hash = "{hash_password(password)}"\nrole = "{role}"')
