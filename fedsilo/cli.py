"""The ``fedsilo`` command: daemons, admin operations and the demo behind one entry point."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from fedsilo import doctor, health, pki_cli
from fedsilo.admin_connection import add_admin_connection, admin_tls
from fedsilo.config import ConfigError
from fedsilo.tls import TlsConfigError
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["main"]

PROTECTIONS = {
    "none": pb.PROTECTION_NONE,
    "secagg": pb.PROTECTION_SECAGG,
    "paillier": pb.PROTECTION_PAILLIER,
}
PHASE_NAMES = {v: k.removeprefix("ROUND_PHASE_").lower() for k, v in pb.RoundPhase.items()}
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in pb.JobState.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsilo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    coordinator = commands.add_parser("coordinator", help="run the coordinator service")
    coordinator_cmds = coordinator.add_subparsers(dest="action", required=True)
    serve = coordinator_cmds.add_parser("serve", help="serve until SIGTERM")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")

    pki_cli.register(commands)
    health.register(commands)

    participant = commands.add_parser("participant", help="run an organization's daemon")
    participant_cmds = participant.add_subparsers(dest="action", required=True)
    run = participant_cmds.add_parser("run", help="run until SIGTERM")
    run.add_argument("--config", type=Path, help="YAML configuration file")
    doctor.register(participant_cmds)
    participant_export = participant_cmds.add_parser(
        "export",
        help="save a job's global model as a Keras .keras file, decrypted here in a paillier job",
    )
    participant_export.add_argument("--config", type=Path, help="YAML configuration file")
    participant_export.add_argument("job_id")
    participant_export.add_argument(
        "--task", required=True, help="task that defines the architecture"
    )
    participant_export.add_argument("--out", type=Path, required=True, help="output .keras file")
    participant_export.add_argument(
        "--version", type=int, default=-1, help="model version (default latest)"
    )
    participant_export.add_argument("--json", action="store_true", help="print JSON")

    job = commands.add_parser("job", help="create, start and follow jobs")
    job_cmds = job.add_subparsers(dest="action", required=True)
    create = job_cmds.add_parser("create", help="create a job (initial weights come from the task)")
    create.add_argument("--task", required=True, help="task name (an installed fedsilo task)")
    create.add_argument("--name", help="job name (default: the task name)")
    create.add_argument("--rounds", type=int, default=5)
    create.add_argument(
        "--protection",
        choices=sorted(PROTECTIONS),
        default="secagg",
        help="secagg (default): the coordinator sees only the sum; paillier: not even the sum; "
        "none: every update in the clear",
    )
    create.add_argument("--min-participants", type=int, default=2)
    create.add_argument(
        "--round-timeout", type=float, default=300.0, help="seconds for local training (INPUTS)"
    )
    create.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="seconds for each small secagg phase (keys, shares, consistency, unmask)",
    )
    secagg = create.add_argument_group("secure aggregation (docs/secagg.md)")
    secagg.add_argument(
        "--threshold", type=int, default=0, help="minimum survivors t (default: a majority)"
    )
    secagg.add_argument("--clip", type=float, default=1.0, help="clip of each update value")
    secagg.add_argument("--levels-bits", type=int, default=13, help="q: 2^q levels per unit")
    secagg.add_argument("--modulus-bits", type=int, choices=[32, 64], default=32)
    secagg.add_argument("--max-participants", type=int, default=16, help="largest cohort")
    secagg.add_argument(
        "--max-weight", type=int, default=8192, help="cap on one organization's example count"
    )
    create.add_argument(
        "--paillier-key-bits",
        type=int,
        choices=[2048, 3072],
        default=2048,
        help="Paillier key size of a --protection paillier job",
    )
    create.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    create.add_argument("--batch-size", type=int, default=32)
    create.add_argument("--learning-rate", type=float, default=0.01)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--task-config", default="{}", help="JSON object passed to every task")
    create.add_argument("--start", action="store_true", help="start the job right away")
    add_admin_connection(create)
    for name in ("start", "status", "watch"):
        sub = job_cmds.add_parser(name, help=f"{name} a job")
        sub.add_argument("job_id")
        add_admin_connection(sub)
    listing = job_cmds.add_parser("list", help="list jobs")
    add_admin_connection(listing)

    participants = commands.add_parser(
        "participants", help="organizations known to the coordinator"
    )
    participants_cmds = participants.add_subparsers(dest="action", required=True)
    add_admin_connection(participants_cmds.add_parser("list", help="list organizations"))
    for name, text in (("approve", "admit a pending organization"), ("revoke", "expel one")):
        membership = participants_cmds.add_parser(name, help=text)
        membership.add_argument("org_id")
        add_admin_connection(membership)

    audit = commands.add_parser("audit", help="the coordinator's audit log")
    audit_cmds = audit.add_subparsers(dest="action", required=True)
    audit_list = audit_cmds.add_parser("list", help="admin actions and rejected requests")
    audit_list.add_argument("--limit", type=int, default=50)
    add_admin_connection(audit_list)

    model = commands.add_parser("model", help="global models")
    model_cmds = model.add_subparsers(dest="action", required=True)
    export = model_cmds.add_parser("export", help="save a global model as a Keras .keras file")
    export.add_argument("job_id")
    export.add_argument("--task", required=True, help="task that defines the architecture")
    export.add_argument("--out", type=Path, required=True, help="output .keras file")
    export.add_argument("--version", type=int, default=-1, help="model version (default latest)")
    export.add_argument(
        "--participant-config",
        type=Path,
        metavar="ORG.yaml",
        help="export as this participant daemon's organization (its certificate and state; a "
        "paillier job's model is decrypted with the organization's key) instead of with an "
        "admin certificate; the same as fedsilo participant export",
    )
    add_admin_connection(export)

    demo = commands.add_parser("demo", help="run a local multi-organization training demo")
    demo.add_argument("--participants", type=int, default=3)
    demo.add_argument("--rounds", type=int, help="rounds (default: the task's)")
    demo.add_argument("--protection", choices=["none", "secagg", "paillier"], default="secagg")
    demo.add_argument("--summary-json", type=Path, help="write the result summary here")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--task", default="digits", choices=["digits", "digits-linear"])
    demo.add_argument("--keep", action="store_true", help="keep the demo directory (logs, DB)")
    demo.add_argument(
        "--export-model",
        type=Path,
        metavar="FILE.keras",
        help="export the final model as the first organization (fedsilo model export "
        "--participant-config; decrypted there in a paillier job)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        return _dispatch(args, console)
    except (ConfigError, TlsConfigError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except grpc.RpcError as exc:
        code = exc.code()
        console.print(f"[red]error:[/red] {code.name}: {exc.details()}")
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "coordinator":
        from coordinator.main import serve

        return serve(args.config, args.port_file)
    if args.command == "participant":
        if args.action == "doctor":
            return doctor.run(args, console)
        if args.action == "export":
            return _participant_export(args, args.config, console)
        from participant.main import run

        return run(args.config)
    if args.command == "pki":
        return pki_cli.run(args, console)
    if args.command == "health":
        return health.run(args, console)
    if args.command == "demo":
        from fedsilo.demo import DemoOptions, run_demo

        options = DemoOptions(
            participants=args.participants,
            rounds=args.rounds,
            protection=args.protection,
            summary_json=args.summary_json,
            seed=args.seed,
            task=args.task,
            keep=args.keep,
            export_model=args.export_model,
        )
        return run_demo(options, console)
    if args.command == "model" and args.participant_config is not None:
        return _participant_export(args, args.participant_config, console)
    return _admin(args, console)


def _admin(args: argparse.Namespace, console: Console) -> int:
    from fedsilo.admin import AdminClient

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
        if args.action == "status":
            _show_job(client.get_job(args.job_id), args.json, console)
            return 0
        return _watch(client, args.job_id, args.json, console)


def _create(client: Any, args: argparse.Namespace, console: Console) -> int:
    from fedsilo.tasks import as_float32, load_task

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
        protection=PROTECTIONS[args.protection],
        algorithm="fedavg",
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
        training=pb.TrainingSettings(
            local_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
        ),
        task_config_json=json.dumps(task_config),
    )
    status = client.create_job(spec, as_float32(task.initial_weights(args.seed)))
    if args.start:
        status = client.start_job(status.job_id)
    _show_job(status, args.json, console)
    return 0


def _export(client: Any, args: argparse.Namespace, console: Console) -> int:
    from fedsilo.tasks import load_task

    task = load_task(args.task)
    exporter = getattr(task, "export_keras", None)
    if exporter is None:
        raise ConfigError(f"task {args.task!r} has no Keras model to export")
    version, weights = client.download_model(args.job_id, args.version)
    exporter(weights, args.out)
    result = {"job_id": args.job_id, "version": version, "path": str(args.out)}
    if args.json:
        print(json.dumps(result))
    else:
        console.print(f"exported model version {version} of job {args.job_id} to {args.out}")
    return 0


def _participant_export(args: argparse.Namespace, config: Path | None, console: Console) -> int:
    from participant.main import export

    result = export(config, args.job_id, args.task, args.out, args.version)
    if args.json:
        print(
            json.dumps(
                {"job_id": result.job_id, "version": result.version, "path": str(result.path)}
            )
        )
    else:
        how = "decrypted here" if result.decrypted else "downloaded"
        console.print(
            f"exported model version {result.version} of job {result.job_id} ({how}) to "
            f"{result.path}"
        )
    return 0


def _watch(client: Any, job_id: str, as_json: bool, console: Console) -> int:
    printed: set[int] = set()
    while True:
        status = client.get_job(job_id)
        metrics = {m.version: m for m in status.metrics}
        for round_ in status.rounds:
            done = round_.phase in (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)
            if done and round_.number not in printed:
                printed.add(round_.number)
                row = _round_row(round_, metrics.get(round_.base_version + 1))
                console.print(
                    json.dumps(row) if as_json else "  ".join(f"{k}={v}" for k, v in row.items())
                )
        if status.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED):
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


if __name__ == "__main__":
    sys.exit(main())
