"""``fedsilo demo``: a whole consortium on one machine — coordinator and organizations as processes.

It makes a throwaway CA and certificates, starts the coordinator (SQLite in a temporary
directory) and one participant daemon per organization as separate OS processes on loopback
with mutual TLS, runs a job of the chosen task (digits by default), shows a per-round table,
trains the same model centrally on the pooled data for comparison, and stops every process it
started by its pid.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from coordinator.domain.jobs import JobSpec
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import Process, WaitTimeout, fedsilo_command, wait_for
from fedsilo.convert import protection_to_pb, training_settings_to_pb
from fedsilo.errors import FedsiloError
from fedsilo.health import health_serving
from fedsilo.pki import make_demo_pki
from fedsilo.protection import Protection
from fedsilo.tasks import installed_tasks, load_task
from fedsilo.tls import TlsFiles
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["DemoError", "DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    participants: int = 3
    rounds: int | None = None
    protection: str = Protection.SECAGG.value
    summary_json: Path | None = None
    seed: int = 0
    task: str = "digits"
    keep: bool = False
    export_model: Path | None = None


class DemoError(FedsiloError, RuntimeError):
    """The demo could not complete; the message says which step failed."""


def run_demo(options: DemoOptions, console: Console) -> int:
    # TensorFlow's C++ start-up chatter would bury the table; children inherit this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not 1 <= options.participants <= 8:
        raise ValueError("--participants must be between 1 and 8 on one machine")
    try:
        protection = Protection(options.protection)
    except ValueError:
        raise ValueError(
            f"protection {options.protection!r} is not available in the demo; "
            f"use one of {', '.join(mode.value for mode in Protection)}"
        ) from None
    if protection is not Protection.NONE and options.participants < 2:
        raise ValueError("secure aggregation needs at least 2 participants")
    task_spec = installed_tasks().get(options.task)
    if task_spec is None:
        raise ValueError(f"task {options.task!r} is not installed (no 'fedsilo.tasks' entry point)")
    task = load_task(options.task, {options.task: task_spec})
    settings = _module_attr(task_spec, "default_settings")
    rounds = options.rounds or _module_attr(task_spec, "default_rounds")
    workdir = Path(tempfile.mkdtemp(prefix="fedsilo-demo-"))
    processes: list[Process] = []
    keep = options.keep
    started = time.monotonic()
    try:
        orgs = [f"org-{i + 1}" for i in range(options.participants)]
        pki = make_demo_pki(workdir / "pki", orgs)
        admin_tls = TlsFiles(pki.ca_cert, pki.admin_cert, pki.admin_key)
        port_file = workdir / "coordinator.port"
        coordinator_config = {
            "listen": "127.0.0.1:0",
            "data_dir": str(workdir / "coordinator"),
            "tls": {
                "ca_cert": str(pki.ca_cert),
                "cert": str(pki.coordinator_cert),
                "key": str(pki.coordinator_key),
            },
            "limits": {"liveness_seconds": 120},
            "tick_seconds": 0.2,
        }
        coordinator_yaml = workdir / "coordinator.yaml"
        coordinator_yaml.write_text(yaml.safe_dump(coordinator_config))
        (workdir / "logs").mkdir()
        console.print(
            f"[bold]fedsilo demo[/bold]: {options.participants} organizations, "
            f"{rounds} rounds, task {options.task}, protection {options.protection}"
        )
        console.print(f"  working directory {workdir}")
        processes.append(
            Process(
                "coordinator",
                fedsilo_command(
                    "coordinator",
                    "serve",
                    "--config",
                    str(coordinator_yaml),
                    "--port-file",
                    str(port_file),
                ),
                workdir / "logs" / "coordinator.log",
            )
        )
        port = wait_for(
            lambda: _port_if_written(port_file, processes[0]), 60, "the coordinator to listen"
        )
        target = f"localhost:{port}"
        wait_for(lambda: health_serving(target, admin_tls), 30, "the coordinator to be healthy")
        console.print(f"  coordinator serving on {target} (mutual TLS)")

        for index, org in enumerate(orgs):
            files = pki.participants[org]
            participant_config = {
                "coordinator": target,
                "state_dir": str(workdir / org),
                "tls": {
                    "ca_cert": str(pki.ca_cert),
                    "cert": str(files.cert_path),
                    "key": str(files.key_path),
                },
                "tasks": {options.task: task_spec},
                "task_config": {
                    "partition": index,
                    "num_partitions": options.participants,
                    "seed": options.seed,
                },
                "poll_seconds": 5,
                "backoff": {"initial_seconds": 0.2, "max_seconds": 2},
            }
            config_path = workdir / f"{org}.yaml"
            config_path.write_text(yaml.safe_dump(participant_config))
            processes.append(
                Process(
                    org,
                    fedsilo_command("participant", "run", "--config", str(config_path)),
                    workdir / "logs" / f"{org}.log",
                )
            )

        with AdminClient(target, admin_tls) as admin:
            wait_for(
                lambda: _check_alive(processes) or len(admin.list_participants()) >= len(orgs),
                120,
                "every organization to connect",
            )
            # New members wait as pending until an admin admits them, as in production.
            for org in orgs:
                admin.approve_participant(org)
            # Then the consortium CA's membership list admitting them: participants take part in
            # secure rounds only with the organizations it lists (docs/threat-model.md).
            serial, _ = admin.publish_membership_list(pki.membership_list.read_bytes())
            console.print(f"  {len(orgs)} organizations connected and approved: {', '.join(orgs)}")
            console.print(f"  membership list {serial}, signed by the consortium CA, published")
            spec = pb.JobSpec(
                name=f"{options.task}-demo",
                task_name=options.task,
                protection=protection_to_pb(protection),
                algorithm="fedavg",
                num_rounds=rounds,
                min_participants=len(orgs),
                round_timeout_seconds=JobSpec(name="", task_name="").round_timeout_seconds,
                training=training_settings_to_pb(replace(settings, seed=options.seed)),
            )
            # No weights: the organizations build version 0 from the seed and agree on it.
            status = admin.create_job(spec)
            admin.start_job(status.job_id)
            final = _follow(admin, status.job_id, len(orgs), rounds, processes, console)
        if final.state != pb.JOB_STATE_COMPLETED:
            raise DemoError(f"job ended as {final.state}: {final.failure_reason}")
        federated = {m.version: m for m in final.metrics}[final.model_version].accuracy
        if options.export_model is not None:
            _export_model(workdir / f"{orgs[0]}.yaml", final, options, console)

        console.print("  training the same model centrally on the pooled data for comparison ...")
        central = _central_accuracy(task, options, orgs, settings, rounds)
        table = Table(title="result")
        table.add_column("training")
        table.add_column("test accuracy")
        table.add_row(f"federated ({len(orgs)} organizations, {rounds} rounds)", f"{federated:.4f}")
        table.add_row("central (pooled data)", f"{central:.4f}")
        console.print(table)
        console.print(
            f"  difference {central - federated:+.4f}; total {time.monotonic() - started:.1f}s"
        )
        if options.summary_json is not None:
            summary = {
                "rounds": rounds,
                "participants": len(orgs),
                "protection": options.protection,
                "final_accuracy": federated,
                "central_accuracy": central,
            }
            options.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    except (DemoError, WaitTimeout) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        for process in processes:
            console.print(f"  log of {process.name}: {process.log_path}")
        keep = True
        return 1
    finally:
        codes = {p.name: p.stop() for p in reversed(processes)}
        unclean = {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM)}
        if unclean:
            console.print(f"[yellow]processes exited uncleanly:[/yellow] {unclean}")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _export_model(
    config: Path, final: pb.JobStatus, options: DemoOptions, console: Console
) -> None:
    """Export the final model as the first organization does, with the fedsilo command (in a
    paillier job it is decrypted there: the coordinator never has it)."""
    assert options.export_model is not None
    command = fedsilo_command("model", "export", final.job_id)
    command += ["--task", options.task, "--out", str(options.export_model)]
    command += ["--version", str(final.model_version), "--participant-config", str(config)]
    result = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        command, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise DemoError(
            f"exporting the model failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    console.print(
        f"  model version {final.model_version} exported as {config.stem} to {options.export_model}"
    )


def _module_attr(task_spec: str, attr: str) -> Any:
    """An attribute of the module an installed task comes from (its demo settings)."""
    module = importlib.import_module(task_spec.partition(":")[0])
    return getattr(module, attr)


def _port_if_written(port_file: Path, coordinator: Process) -> int | None:
    if coordinator.popen.poll() is not None:
        raise DemoError(f"the coordinator exited with code {coordinator.popen.returncode}")
    try:
        return int(port_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _check_alive(processes: list[Process]) -> bool:
    for process in processes:
        if process.popen.poll() is not None:
            raise DemoError(f"{process.name} exited with code {process.popen.returncode}")
    return False


def _follow(
    admin: AdminClient,
    job_id: str,
    orgs: int,
    rounds: int,
    processes: list[Process],
    console: Console,
) -> pb.JobStatus:
    """Print one row per committed round once its model has been evaluated by every contributor."""
    header = f"  {'round':>5}  {'participants':>12}  {'loss':>8}  {'accuracy':>8}  {'seconds':>7}"
    printed: set[int] = set()
    console.print("  the organizations build version 0 from the job's seed ...")

    def step() -> pb.JobStatus | None:
        _check_alive(processes)
        status = admin.get_job(job_id)
        metrics = {m.version: m for m in status.metrics}
        if status.rounds and 0 not in printed:
            # Rounds open only once version 0 is committed: every organization built it alike.
            printed.add(0)
            console.print("  version 0 agreed by every organization; training")
            console.print(header)
        for round_ in status.rounds:
            if round_.number in printed:
                continue
            if round_.phase == pb.ROUND_PHASE_ABORTED:
                printed.add(round_.number)
                console.print(f"  {round_.number:>5}  aborted: {round_.abort_reason}")
                continue
            m = metrics.get(round_.base_version + 1)
            if (
                round_.phase == pb.ROUND_PHASE_COMMITTED
                and m
                and m.reports >= len(round_.contributors)
            ):
                printed.add(round_.number)
                seconds = round_.finished_at - round_.started_at
                console.print(
                    f"  {round_.number:>5}  {len(round_.contributors):>12}  {m.loss:>8.4f}  "
                    f"{m.accuracy:>8.4f}  {seconds:>7.2f}"
                )
        if status.state == pb.JOB_STATE_FAILED:
            return status
        if status.state == pb.JOB_STATE_COMPLETED:
            last = metrics.get(status.model_version)
            if last and last.reports >= orgs:
                return status
        return None

    return wait_for(step, 300 + 60 * rounds, "the job to finish", interval=0.25)


def _central_accuracy(
    task: Any, options: DemoOptions, orgs: list[str], settings: Any, rounds: int
) -> float:
    from examples.digits.central import central_baseline

    configs = [
        {"partition": i, "num_partitions": len(orgs), "seed": options.seed}
        for i in range(len(orgs))
    ]
    result = central_baseline(task, configs, replace(settings, seed=options.seed), rounds)
    return float(result.accuracy)
