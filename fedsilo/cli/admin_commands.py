"""The admin commands of ``fedsilo``: jobs, participants, the audit log and model export."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from fedsilo.admin import AdminClient
from fedsilo.cli.admin_connection import admin_tls
from fedsilo.cli.model_export import export_in_format, task_config_of
from fedsilo.config import ConfigError, ParticipantConfig, load_config
from fedsilo.convert import protection_to_pb, strategy_parameters_to_pb, training_settings_to_pb
from fedsilo.protection import Protection
from fedsilo.strategies import BUILTIN_STRATEGIES, StrategyParameters
from fedsilo.tasks import TrainingSettings, as_float32, load_task
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["participant_export", "run_admin"]

PHASE_NAMES = {v: k.removeprefix("ROUND_PHASE_").lower() for k, v in pb.RoundPhase.items()}
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in pb.JobState.items()}


def run_admin(args: argparse.Namespace, console: Console) -> int:
    """Execute an admin command over the admin API with the admin certificate."""
    tls = admin_tls(args)
    with AdminClient(args.coordinator, tls, timeout=args.timeout) as client:
        if args.command == "audit":
            events = [_to_dict(e) for e in client.audit_events(args.limit)]
            if args.json:
                print(json.dumps(events, indent=2))
            else:
                for event in events:
                    event["at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at"]))
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
            info = _to_dict(change(args.org_id))
            if args.json:
                print(json.dumps(info))
            else:
                console.print(f"{info['org_id']}: {info['status']}")
            return 0
        if args.command == "participants":
            rows = [_to_dict(p) for p in client.list_participants()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(console, "participants", ["org_id", "status", "last_seen"], rows)
            return 0
        if args.command == "model":
            return _export(client, args, console)
        if args.action == "create":
            return _create(client, args, console)
        if args.action == "list":
            jobs = client.list_jobs()
            if args.json:
                print(json.dumps([_to_dict(j) for j in jobs], indent=2))
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
        if args.action == "status":
            _show_job(client.get_job(args.job_id), args.json, console)
            return 0
        return _watch(client, args.job_id, args.json, console)


def add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    """``job create``'s strategy options (docs/strategies.md); unset ones take the defaults."""
    group = parser.add_argument_group("federated optimization strategy (docs/strategies.md)")
    group.add_argument(
        "--strategy",
        default="fedavg",
        help=f"{', '.join(BUILTIN_STRATEGIES)} or an installed fedsilo.strategies entry point",
    )
    group.add_argument("--server-learning-rate", type=float, help="server step size eta")
    group.add_argument("--server-momentum", type=float, help="fedavgm's momentum beta")
    group.add_argument("--beta1", type=float, help="first-moment decay (fedadam/yogi/adagrad)")
    group.add_argument("--beta2", type=float, help="second-moment decay (fedadam, fedyogi)")
    group.add_argument("--tau", type=float, help="adaptivity tau (fedadam/yogi/adagrad)")
    group.add_argument("--proximal-mu", type=float, help="fedprox's proximal term weight mu")


def _create(client: AdminClient, args: argparse.Namespace, console: Console) -> int:
    try:
        task_config = json.loads(args.task_config)
    except ValueError as exc:
        raise ConfigError(f"--task-config is not valid JSON: {exc}") from exc
    if not isinstance(task_config, dict):
        raise ConfigError("--task-config must be a JSON object")
    task = load_task(args.task)
    spec = pb.JobSpec(
        name=args.name or args.task,
        task_name=args.task,
        protection=protection_to_pb(Protection(args.protection)),
        algorithm=args.strategy,
        strategy=strategy_parameters_to_pb(
            StrategyParameters(
                server_learning_rate=args.server_learning_rate,
                server_momentum=args.server_momentum,
                beta1=args.beta1,
                beta2=args.beta2,
                tau=args.tau,
                proximal_mu=args.proximal_mu,
            )
        ),
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
    status = client.create_job(spec, as_float32(task.initial_weights(args.seed)))
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
        write_keras, task, task_config, args.out, args.format, args.quantization
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
                write_keras, task, task_config, args.out, fmt, args.quantization
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
    printed: set[int] = set()
    shown_reason = ""
    while True:
        status = client.get_job(job_id)
        if status.waiting_reason != shown_reason:
            # Printed when it changes, so a stalled job says why once instead of every second.
            shown_reason = status.waiting_reason
            if shown_reason:
                console.print(
                    json.dumps({"waiting": shown_reason}) if as_json else f"waiting: {shown_reason}"
                )
        metrics = {m.version: m for m in status.metrics}
        for round_ in status.rounds:
            done = round_.phase in (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)
            if done and round_.number not in printed:
                printed.add(round_.number)
                row = _round_row(round_, metrics.get(round_.base_version + 1))
                console.print(
                    json.dumps(row) if as_json else "  ".join(f"{k}={v}" for k, v in row.items())
                )
        if status.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_ABORTED):
            console.print(
                f"job {STATE_NAMES[status.state]} at model version {status.model_version}"
            )
            return 0 if status.state == pb.JOB_STATE_COMPLETED else 1
        time.sleep(1.0)  # a human-facing refresh interval, not a wait for a condition


def _round_row(round_: pb.RoundStatus, metrics: pb.VersionMetrics | None) -> dict[str, Any]:
    seconds = round_.finished_at - round_.started_at if round_.finished_at else 0.0
    return {
        "round": round_.number,
        "phase": PHASE_NAMES[round_.phase],
        "participants": len(round_.contributors),
        "loss": round(metrics.loss, 4) if metrics else None,
        "accuracy": round(metrics.accuracy, 4) if metrics else None,
        "seconds": round(seconds, 2),
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
        print(json.dumps(_to_dict(status), indent=2))
        return
    row = _job_row(status)
    console.print(
        f"job {row['job_id']} ({row['name']}): {row['state']}, model version {row['model_version']}"
        f" of {status.spec.num_rounds}"
    )
    metrics = {m.version: m for m in status.metrics}
    rows = [_round_row(r, metrics.get(r.base_version + 1)) for r in status.rounds]
    if rows:
        _print_table(console, "rounds", list(rows[0]), rows)
    if status.waiting_reason:
        console.print(f"waiting: {status.waiting_reason}")
    if status.failure_reason:
        console.print(f"[red]failure:[/red] {status.failure_reason}")


def _print_table(
    console: Console, title: str, columns: list[str], rows: list[dict[str, Any]]
) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


def _to_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result
