"""The ``fedsilo`` command: daemons, admin operations and the demo behind one entry point."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import grpc
from rich.console import Console

from coordinator.domain.jobs import JobSpec, SecAggSettings
from fedsilo.cli import doctor, health_command, pki_commands, simulate
from fedsilo.cli.admin_commands import participant_export, run_admin
from fedsilo.cli.admin_connection import add_admin_connection
from fedsilo.cli.demo import DemoOptions, run_demo
from fedsilo.cli.model_export import add_format_arguments
from fedsilo.cli.privacy_arguments import (
    add_privacy_arguments,
    positive_float,
    positive_int,
    privacy_argument_problem,
)
from fedsilo.cli.strategy_arguments import add_strategy_arguments
from fedsilo.config import ConfigError, ParticipantConfig, load_config
from fedsilo.protection import Protection
from fedsilo.tasks import TaskNotFoundError, TrainingSettings, installed_tasks
from fedsilo.tls import TlsConfigError

__all__ = ["main"]

# The defaults of ``job create`` are the job's own: one source for the CLI and the coordinator.
_JOB = JobSpec(name="", task_name="")
_SECAGG = SecAggSettings()
_TRAINING = TrainingSettings()
_DEMO = DemoOptions()
_PROTECTIONS = [mode.value for mode in Protection]
_PAILLIER_KEY_BITS = [2048, 3072]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsilo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    coordinator = commands.add_parser("coordinator", help="run the coordinator service")
    coordinator_cmds = coordinator.add_subparsers(dest="action", required=True)
    serve = coordinator_cmds.add_parser("serve", help="serve until SIGTERM")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    migrate = coordinator_cmds.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--config", type=Path, help="YAML configuration file")
    migrate.add_argument("--database-url", help="SQLAlchemy URL instead of the configuration's")

    pki_commands.register(commands)
    health_command.register(commands)

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
    create = job_cmds.add_parser(
        "create", help="create a job (the organizations build version 0 from its seed)"
    )
    create.add_argument(
        "--task", required=True, type=_installed_task, help="task name (an installed fedsilo task)"
    )
    create.add_argument("--name", help="job name (default: the task name)")
    create.add_argument("--rounds", type=positive_int, default=_JOB.num_rounds)
    create.add_argument(
        "--protection",
        choices=sorted(_PROTECTIONS),
        default=_JOB.protection.value,
        help="secagg (default): the coordinator sees only the sum; paillier: not even the sum; "
        "none: every update in the clear",
    )
    create.add_argument("--min-participants", type=positive_int, default=_JOB.min_participants)
    create.add_argument(
        "--round-timeout",
        type=float,
        default=_JOB.round_timeout_seconds,
        help="seconds for local training (INPUTS)",
    )
    create.add_argument(
        "--phase-timeout",
        type=float,
        default=_JOB.phase_timeout_seconds,
        help="seconds for each small secagg phase (keys, shares, consistency, unmask)",
    )
    secagg = create.add_argument_group("secure aggregation (docs/secagg.md)")
    secagg.add_argument(
        "--threshold",
        type=int,
        default=_SECAGG.threshold,
        help="minimum survivors t (default: two thirds of the cohort, docs/threat-model.md)",
    )
    secagg.add_argument(
        "--clip", type=float, default=_SECAGG.clip, help="clip of each update value"
    )
    secagg.add_argument(
        "--levels-bits", type=int, default=_SECAGG.levels_bits, help="q: 2^q levels per unit"
    )
    secagg.add_argument("--modulus-bits", type=int, choices=[32, 64], default=_SECAGG.modulus_bits)
    secagg.add_argument(
        "--max-participants", type=int, default=_SECAGG.max_participants, help="largest cohort"
    )
    secagg.add_argument(
        "--max-weight",
        type=int,
        default=_SECAGG.max_weight,
        help="cap on one organization's example count",
    )
    create.add_argument(
        "--paillier-key-bits",
        type=int,
        choices=_PAILLIER_KEY_BITS,
        default=_JOB.paillier_key_bits,
        help="Paillier key size of a --protection paillier job",
    )
    create.add_argument(
        "--epochs",
        type=positive_int,
        default=_TRAINING.local_epochs,
        help="local epochs per round",
    )
    create.add_argument("--batch-size", type=positive_int, default=_TRAINING.batch_size)
    create.add_argument("--learning-rate", type=positive_float, default=_TRAINING.learning_rate)
    create.add_argument(
        "--seed",
        type=int,
        default=_TRAINING.seed,
        help="seed of version 0 (built by the organizations) and of local training",
    )
    create.add_argument(
        "--task-config", default=_JOB.task_config_json, help="JSON object passed to every task"
    )
    add_strategy_arguments(create)
    add_privacy_arguments(create)
    create.add_argument("--start", action="store_true", help="start the job right away")
    add_admin_connection(create)
    job_help = {
        "start": "start a created job",
        "status": "show a job: rounds, metrics per organization, why it waits",
        "watch": "follow a job round by round until it ends (reconnects after restarts)",
        "pause": "open no new round (the open one finishes) until resumed",
        "resume": "let a paused job open rounds again",
        "abort": "end a job for good; its open round is aborted",
        "delete": "remove a completed, failed or aborted job and its stored models "
        "(abort it first); the audit log keeps its entries",
    }
    for name, text in job_help.items():
        sub = job_cmds.add_parser(name, help=text, description=text)
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
    publish = participants_cmds.add_parser(
        "publish-membership",
        help="publish the membership list the consortium CA signed (after approve/revoke)",
        description=(
            "Upload FILE, made by 'fedsilo pki membership sign', to the coordinator, which hands "
            "it to every participant; each checks the CA's signature itself and from then on "
            "takes part in secure rounds and key ceremonies only with the organizations it "
            "admits. A list whose serial is not above the published one is refused."
        ),
    )
    publish.add_argument("file", type=Path, metavar="FILE", help="signed membership list")
    add_admin_connection(publish)

    audit = commands.add_parser("audit", help="the coordinator's audit log")
    audit_cmds = audit.add_subparsers(dest="action", required=True)
    audit_list = audit_cmds.add_parser("list", help="admin actions and rejected requests")
    audit_list.add_argument("--limit", type=int, default=50)
    add_admin_connection(audit_list)

    model = commands.add_parser("model", help="global models")
    model_cmds = model.add_subparsers(dest="action", required=True)
    export = model_cmds.add_parser(
        "export",
        help="save a global model as .keras, or a checked SavedModel, TF Lite or TF.js model",
    )
    export.add_argument("job_id")
    export.add_argument("--task", help="task that defines the architecture (default: the job's)")
    export.add_argument("--out", type=Path, required=True, help="output file (or directory)")
    add_format_arguments(export)
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
    demo.add_argument("--participants", type=int, default=_DEMO.participants)
    demo.add_argument("--rounds", type=int, help="rounds (default: the task's)")
    demo.add_argument("--protection", choices=_PROTECTIONS, default=_DEMO.protection)
    demo.add_argument("--summary-json", type=Path, help="write the result summary here")
    demo.add_argument("--seed", type=int, default=_DEMO.seed)
    demo.add_argument("--task", default=_DEMO.task, choices=sorted(installed_tasks()))
    demo.add_argument("--keep", action="store_true", help="keep the demo directory (logs, DB)")
    demo.add_argument(
        "--export-model",
        type=Path,
        metavar="FILE.keras",
        help="export the final model as the first organization (fedsilo model export "
        "--participant-config; decrypted there in a paillier job)",
    )
    simulate.register(commands)
    return parser


def _installed_task(name: str) -> str:
    installed = installed_tasks()
    if name not in installed:
        raise argparse.ArgumentTypeError(
            f"no task {name!r} is installed (installed: {', '.join(sorted(installed))})"
        )
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    problem = privacy_argument_problem(args) if hasattr(args, "dp_clip") else None
    if problem is not None:
        parser.error(problem)
    console = Console()
    try:
        return _dispatch(args, console)
    except (ConfigError, TlsConfigError, TaskNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        return 2
    except grpc.RpcError as exc:
        code = exc.code()
        console.print(f"[red]error:[/red] {code.name}: {exc.details()}")
        return 1
    except KeyboardInterrupt:
        return 130


def _run_participant(config_path: Path | None, console: Console) -> int:
    # The daemon starts only with a certificate the coordinator would accept: an expired or
    # foreign one is a clear exit, not a daemon that retries forever.
    refusal = doctor.startup_refusal(load_config(ParticipantConfig, config_path))
    if refusal is not None:
        console.print(f"[red]error:[/red] {refusal}", soft_wrap=True)
        return 2
    from participant.main import run

    return run(config_path)


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "coordinator":
        from coordinator.main import migrate, serve

        if args.action == "migrate":
            return migrate(args.config, args.database_url)
        return serve(args.config, args.port_file)
    if args.command == "participant":
        if args.action == "doctor":
            return doctor.run(args, console)
        if args.action == "export":
            return participant_export(args, args.config, console)
        return _run_participant(args.config, console)
    if args.command == "pki":
        return pki_commands.run(args, console)
    if args.command == "health":
        return health_command.run(args, console)
    if args.command == "demo":
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
    if args.command == "simulate":
        return simulate.run_simulate(args, console)
    if args.command == "model" and args.participant_config is not None:
        return participant_export(args, args.participant_config, console)
    return run_admin(args, console)
