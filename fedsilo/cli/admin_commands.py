"""The admin commands of ``fedsilo``: jobs, participants, the audit log and model export."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedsilo.admin import AdminClient
from fedsilo.cli.admin_connection import admin_tls
from fedsilo.cli.job_views import (
    PHASE_NAMES,
    STATE_NAMES,
    age_text,
    iso_time,
    job_json,
    message_json,
    participant_json,
    round_metrics,
)
from fedsilo.cli.job_watch import JobWatch, eta_seconds, watch_line
from fedsilo.cli.model_export import export_in_format, task_config_of
from fedsilo.cli.privacy_arguments import privacy_settings
from fedsilo.cli.strategy_arguments import strategy_parameters
from fedsilo.config import ConfigError, ParticipantConfig, load_config
from fedsilo.convert import (
    privacy_to_pb,
    protection_to_pb,
    strategy_parameters_to_pb,
    training_settings_to_pb,
)
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings, load_task
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["participant_export", "run_admin"]


def run_admin(args: argparse.Namespace, console: Console) -> int:
    """Execute an admin command over the admin API with the admin certificate."""
    tls = admin_tls(args)
    with AdminClient(args.coordinator, tls, timeout=args.timeout) as client:
        if args.command == "audit":
            events = [message_json(e) for e in client.audit_events(args.limit)]
            if args.json:
                print(json.dumps(events, indent=2))
            else:
                for event in events:
                    event["at"] = iso_time(event["at"])
                columns = ["at", "actor", "action", "outcome", "detail"]
                _print_table(console, "audit log (newest first)", columns, events)
            return 0
        if args.command == "participants" and args.action == "publish-membership":
            try:
                document = args.file.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {args.file}: {exc.strerror or exc}") from None
            serial, already = client.publish_membership_list(document)
            if args.json:
                print(json.dumps({"serial": serial, "already_published": already}))
            elif already:
                console.print(f"membership list {serial} was already published")
            else:
                console.print(f"membership list {serial} published")
            return 0
        if args.command == "participants" and args.action in ("approve", "revoke"):
            change = (
                client.approve_participant
                if args.action == "approve"
                else client.revoke_participant
            )
            info = participant_json(change(args.org_id), time.time())
            if args.json:
                print(json.dumps(info))
            else:
                console.print(f"{info['org_id']}: {info['status']}")
                # The admin checks this against the fingerprint the organization sent out of band.
                certificate = info["certificate_sha256"] or "unknown (no call since the upgrade)"
                console.print(f"certificate sha256: {certificate}", soft_wrap=True)
            return 0
        if args.command == "participants":
            now = time.time()
            rows = [participant_json(p, now) for p in client.list_participants()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    row["last_seen_age"] = age_text(row["last_seen_age_seconds"]) + " ago"
                    row["certificate_sha256"] = row["certificate_sha256"][:16]
                columns = ["org_id", "status", "first_seen", "last_seen", "last_seen_age"]
                _print_table(console, "participants", [*columns, "certificate_sha256"], rows)
            return 0
        if args.command == "model":
            return _export(client, args, console)
        if args.action == "create":
            return _create(client, args, console)
        if args.action == "list":
            jobs = client.list_jobs()
            if args.json:
                print(json.dumps([job_json(j) for j in jobs], indent=2))
            else:
                rows = [_job_row(j) for j in jobs]
                _print_table(console, "jobs", ["job_id", "name", "state", "model_version"], rows)
            return 0
        if args.action == "start":
            _show_job(client.start_job(args.job_id), args.json, console)
            return 0
        if args.action in ("pause", "resume", "abort"):
            controls = {
                "pause": client.pause_job,
                "resume": client.resume_job,
                "abort": client.abort_job,
            }
            _show_job(controls[args.action](args.job_id), args.json, console)
            return 0
        if args.action == "delete":
            deleted = client.delete_job(args.job_id)
            if args.json:
                print(json.dumps(message_json(deleted)))
            else:
                console.print(
                    f"deleted job {deleted.job_id} ({deleted.name}) and "
                    f"{deleted.blobs_removed} blobs; its audit entries stay"
                )
            return 0
        if args.action == "status":
            _show_job(client.get_job(args.job_id), args.json, console)
            return 0
        return _watch(client, args.job_id, args.json, console)


def _create(client: AdminClient, args: argparse.Namespace, console: Console) -> int:
    try:
        task_config = json.loads(args.task_config)
    except ValueError as exc:
        raise ConfigError(f"--task-config is not valid JSON: {exc}") from exc
    if not isinstance(task_config, dict):
        raise ConfigError("--task-config must be a JSON object")
    # No task is loaded here: the participants build version 0 from the seed with the task's
    # model, so the admin's machine never imports TensorFlow (docs/design.md).
    privacy = privacy_settings(args)
    spec = pb.JobSpec(
        name=args.name or args.task,
        task_name=args.task,
        protection=protection_to_pb(Protection(args.protection)),
        algorithm=args.strategy,
        strategy=strategy_parameters_to_pb(strategy_parameters(args)),
        dp=privacy_to_pb(privacy) if privacy.enabled else None,
        num_rounds=args.rounds,
        min_participants=args.min_participants,
        round_timeout_seconds=args.round_timeout,
        phase_timeout_seconds=args.phase_timeout,
        paillier_key_bits=args.paillier_key_bits,
        secagg=pb.SecAggSettings(
            threshold=args.threshold,
            modulus_bits=args.modulus_bits,
            clip=args.clip,
            levels_bits=args.levels_bits,
            max_participants=args.max_participants,
            max_weight=args.max_weight,
        ),
        training=training_settings_to_pb(
            TrainingSettings(
                local_epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                seed=args.seed,
            )
        ),
        task_config_json=json.dumps(task_config),
    )
    status = client.create_job(spec)
    if args.start:
        status = client.start_job(status.job_id)
    _show_job(status, args.json, console)
    return 0


def _export(client: AdminClient, args: argparse.Namespace, console: Console) -> int:
    spec = client.get_job(args.job_id).spec
    task_name = args.task or spec.task_name  # the job knows its task; --task only overrides it
    task = load_task(task_name)
    exporter = getattr(task, "export_keras", None)
    if exporter is None:
        raise ConfigError(f"task {task_name!r} has no Keras model to export")
    got: list[int] = []

    def write_keras(path: Path) -> None:
        version, weights = client.download_model(args.job_id, args.version)
        exporter(weights, path)
        got.append(version)

    # Check data: --task-config, else the job's own task_config.
    task_config = task_config_of(args.task_config or spec.task_config_json)
    report = export_in_format(
        write_keras, task, task_config, args.out, args.format, args.quantization, args.tfjs_python
    )
    result = {"job_id": args.job_id, "version": got[0], "path": str(args.out)}
    if args.json:
        print(json.dumps({**result, "format": args.format, "check": report}))
    else:
        console.print(f"exported model version {got[0]} of job {args.job_id} to {args.out}")
        if args.format != "keras":
            console.print(report)
    return 0


def participant_export(args: argparse.Namespace, config: Path | None, console: Console) -> int:
    from participant.errors import CallFailed
    from participant.main import ModelExport, export

    fmt = getattr(args, "format", "keras")
    if not args.task:
        raise ConfigError("--task is required when exporting as an organization")
    results: list[ModelExport] = []

    def write_keras(path: Path) -> None:
        results.append(export(config, args.job_id, args.task, path, args.version))

    try:
        if fmt == "keras":
            write_keras(args.out)
            report = ""
        else:
            participant = load_config(ParticipantConfig, config)
            task = load_task(args.task, participant.tasks or None)
            task_config = participant.task_config  # the organization's own data
            report = export_in_format(
                write_keras,
                task,
                task_config,
                args.out,
                fmt,
                args.quantization,
                getattr(args, "tfjs_python", None),
            )
    except CallFailed as exc:
        # The same line a refused admin call prints (main's grpc.RpcError handler).
        console.print(f"[red]error:[/red] {exc.status.name}: {exc.details}")
        return 1
    (result,) = results
    if args.json:
        print(
            json.dumps({"job_id": result.job_id, "version": result.version, "path": str(args.out)})
        )
    else:
        how = "decrypted here" if result.decrypted else "downloaded"
        console.print(
            f"exported model version {result.version} of job {result.job_id} ({how}) to {args.out}"
        )
        if report:
            console.print(report)
    return 0


def _watch(client: AdminClient, job_id: str, as_json: bool, console: Console) -> int:
    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event) if as_json else watch_line(event), flush=True)

    return JobWatch(lambda: client.get_job(job_id), emit).run()


def _round_row(status: pb.JobStatus, round_: pb.RoundStatus) -> dict[str, Any]:
    metrics = round_metrics(status, round_)
    seconds = round_.finished_at - round_.started_at if round_.finished_at else 0.0
    ended = round_.phase in (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)
    return {
        "round": round_.number,
        "phase": PHASE_NAMES[round_.phase],
        "participants": len(round_.contributors),
        "reports": f"{metrics.reports}/{len(round_.contributors)}" if metrics else None,
        "loss": round(metrics.loss, 4) if metrics else None,
        "accuracy": round(metrics.accuracy, 4) if metrics else None,
        "train_loss": round(round_.train_loss, 4) if round_.HasField("train_loss") else None,
        "threshold": round_.threshold or None,
        "seconds": round(seconds, 2) if ended else None,
    }


def _job_row(status: pb.JobStatus) -> dict[str, Any]:
    return {
        "job_id": status.job_id,
        "name": status.spec.name,
        "state": STATE_NAMES[status.state],
        "model_version": status.model_version,
    }


def _show_job(status: pb.JobStatus, as_json: bool, console: Console) -> None:
    if as_json:
        print(json.dumps(job_json(status), indent=2))
        return
    row = _job_row(status)
    console.print(
        f"job {row['job_id']} ({row['name']}): {row['state']}, model version {row['model_version']}"
        f" of {status.spec.num_rounds}"
    )
    rows = [_round_row(status, r) for r in status.rounds]
    if rows:
        _print_table(console, "rounds", list(rows[0]), rows)
    latest = next((m for m in reversed(status.metrics) if m.organizations), None)
    if latest is not None:
        per_org = [
            {
                "org_id": m.org_id,
                "examples": m.num_examples,
                "loss": round(m.loss, 4),
                "accuracy": round(m.accuracy, 4),
            }
            for m in latest.organizations
        ]
        title = f"evaluation of model version {latest.version} per organization"
        _print_table(console, title, list(per_org[0]), per_org)
    eta = eta_seconds(status)
    if eta is not None:
        console.print(f"eta: {age_text(eta)} (mean round time x rounds left)")
    if status.waiting_reason:
        console.print(f"waiting: {status.waiting_reason}")
    if status.HasField("privacy"):
        console.print(privacy_line(status.privacy))
    if status.failure_reason:
        if status.state == pb.JOB_STATE_COMPLETED:
            # A job stopped early on purpose (its privacy budget) is finished, not failed.
            console.print(f"stopped: {status.failure_reason}")
        else:
            console.print(f"[red]failure:[/red] {status.failure_reason}")


def privacy_line(privacy: pb.PrivacySpent) -> str:
    """What a job with differential privacy has spent, for ``job status``."""
    budget = f" of budget {privacy.epsilon_budget:g}" if privacy.epsilon_budget > 0 else ""
    return (
        f"privacy: epsilon {privacy.epsilon:.4g}{budget} at delta {privacy.delta:g} "
        f"after {privacy.rounds} released rounds (organization-level)"
    )


def _print_table(
    console: Console, title: str, columns: list[str], rows: list[dict[str, Any]]
) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)
