"""Benchmark: a whole round's protocol time under one protection divided by another's, in one run.

Run from the repository root: ``python -m tests.bench.bench_round`` or
``python tests/bench/bench_round.py`` (``--help`` for options). It starts one coordinator and
``--participants`` participant daemons as OS processes on 127.0.0.1 with mutual TLS and a
throwaway PKI, approves the organizations, and runs jobs of the ``bench-round`` task
(``round_task.py``: one float32 tensor of ``--parameters`` parameters; training and evaluation
return at once, so a round's time is the protocol's: assignment long polls, model download,
update upload, masking, the phase messages, aggregation and the commit, all over TLS):

(c) whole round, 1M parameters, 5 participants (the defaults): the median round time with
    protection ``secagg`` divided by the median with ``none`` (target <= 1.5x)::

        python tests/bench/bench_round.py

(d) whole round, 100k parameters, 3 participants: the median round time with protection
    ``paillier`` (every masked input also Paillier-encrypted, 2048-bit job key) divided by the
    median with ``secagg`` (recorded, no target)::

        python tests/bench/bench_round.py --participants 3 --parameters 100000 \
            --protections secagg paillier --rounds 6

A round's time is ``finished_at - started_at`` of a COMMITTED round in the job status of the admin
API (from the round's creation to its commit). The first round of each job also pays one-off
costs (imports, the task's data, connections), so the medians are over rounds 2..N of each job;
a paillier job's key ceremony runs before its round 1 opens and is reported apart ("start to
round 1"). The jobs run one after the other (``--protections`` in order, repeated ``--repeats``
times) in the same processes, after one unmeasured warm-up job per protection
(``--warmup-rounds``): the first job the daemons run stays slower for several rounds, which would
favour whichever protection does not run first. The final model of each job is checked against
the FedAvg the task predicts (a paillier job's as org-1 decrypts it: the coordinator only holds
ciphertexts), and the coordinator log gives the median time spent in each round phase.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

try:
    import round_task
except ModuleNotFoundError:  # run as a module (python -m tests.bench.bench_round)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import round_task

from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import Process, WaitTimeout, wait_for
from fedsilo.config import ParticipantConfig, load_config
from fedsilo.health import health_serving
from fedsilo.pki import make_demo_pki
from fedsilo.tls import TlsFiles
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.main import build_client, export_model, paillier_jobs

TARGET_RATIO = 1.5
"""(c): secagg / none."""
PROTECTIONS = {
    "none": pb.PROTECTION_NONE,
    "secagg": pb.PROTECTION_SECAGG,
    "paillier": pb.PROTECTION_PAILLIER,
}
DEFAULT_PROTECTIONS = ("none", "secagg")
"""The protections of (c); (d) is ``--protections secagg paillier``."""
PHASES = ("created", "keys", "shares", "inputs", "consistency", "unmask", "aggregated")
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
DEADLINE_SECONDS = 120.0
"""Round and phase deadlines: generous, a benchmark round must never abort."""
# The default quantization of secagg and paillier (levels_bits=13) errs by at most 2^-14 per
# coordinate and round; the rest is float32 rounding of the weights.
QUANTIZATION_ERROR = 2.0**-14
FLOAT_SLACK = 1e-5


Weights = list[npt.NDArray[Any]]


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says which step failed."""


@dataclass(frozen=True)
class JobResult:
    """One finished job: its committed rounds' seconds by round number, the seconds from its
    start to the opening of round 1 (a paillier job's key ceremony), and the model check."""

    protection: str
    job_id: str
    seconds: dict[int, float]
    until_first_round: float
    max_error: float


class Consortium:
    """One coordinator and the participant daemons, all started (and stopped) by pid."""

    def __init__(
        self, workdir: Path, participants: int, parameters: int, tick_seconds: float
    ) -> None:
        self.workdir = workdir
        self.orgs = [f"org-{index + 1}" for index in range(participants)]
        self.parameters = parameters
        self.tick_seconds = tick_seconds
        self.pki = make_demo_pki(workdir / "pki", self.orgs)
        self.admin_tls = TlsFiles(self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key)
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.processes: list[Process] = []
        self.target = ""

    @property
    def coordinator_log(self) -> Path:
        return self.logs / "coordinator.log"

    def participant_config(self, org: str) -> Path:
        return self.workdir / f"{org}.yaml"

    def start(self) -> None:
        port_file = self.workdir / "coordinator.port"
        config = {
            "listen": "127.0.0.1:0",
            "data_dir": str(self.workdir / "coordinator"),
            "tls": {
                "ca_cert": str(self.pki.ca_cert),
                "cert": str(self.pki.coordinator_cert),
                "key": str(self.pki.coordinator_key),
            },
            "limits": {"liveness_seconds": 120},
            "tick_seconds": self.tick_seconds,
        }
        config_path = self.workdir / "coordinator.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = ["coordinator", "serve", "--config", str(config_path)]
        command += ["--port-file", str(port_file)]
        self._start("coordinator", command)
        port = wait_for(lambda: self._port(port_file), 60, "the coordinator to listen")
        # The demo PKI puts 127.0.0.1 in the coordinator certificate, so TLS checks the address.
        self.target = f"127.0.0.1:{port}"
        wait_for(
            lambda: self.check_alive() or health_serving(self.target, self.admin_tls),
            30,
            "the coordinator to be healthy",
        )
        for index, org in enumerate(self.orgs):
            files = self.pki.participants[org]
            participant = {
                "coordinator": self.target,
                "state_dir": str(self.workdir / org),
                "tls": {
                    "ca_cert": str(self.pki.ca_cert),
                    "cert": str(files.cert_path),
                    "key": str(files.key_path),
                },
                "tasks": {round_task.NAME: "round_task:task"},
                "task_config": {"org_index": index},
                "poll_seconds": 5,
                "backoff": {"initial_seconds": 0.2, "max_seconds": 2},
            }
            path = self.participant_config(org)
            path.write_text(yaml.safe_dump(participant))
            self._start(org, ["participant", "run", "--config", str(path)])

    def _start(self, name: str, command: list[str]) -> None:
        # The daemons import the task as round_task:task, from this directory.
        paths = [str(BENCH_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        env = {
            "PYTHONPATH": os.pathsep.join(path for path in paths if path),
            round_task.PARAMETERS_ENV: str(self.parameters),
        }
        args = [sys.executable, "-m", "fedsilo", *command]
        self.processes.append(Process(name, args, self.logs / f"{name}.log", env))

    def _port(self, port_file: Path) -> int | None:
        self.check_alive()
        try:
            return int(port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def check_alive(self) -> bool:
        """Raise BenchError if a process we started has exited; else False (for wait_for)."""
        for process in self.processes:
            if process.popen.poll() is not None:
                raise BenchError(f"{process.name} exited with code {process.popen.returncode}")
        return False

    def admin(self) -> AdminClient:
        return AdminClient(self.target, self.admin_tls)

    def approve_all(self, admin: AdminClient) -> None:
        wait_for(
            lambda: self.check_alive() or len(admin.list_participants()) >= len(self.orgs),
            120,
            "every organization to connect",
        )
        for org in self.orgs:
            admin.approve_participant(org)
        # The consortium CA's membership list: participants join secure rounds only with it.
        admin.publish_membership_list(self.pki.membership_list.read_bytes())

    def stop(self) -> dict[str, int]:
        """SIGTERM each process (participants first), wait; the exit codes that were not clean."""
        codes = {process.name: process.stop() for process in reversed(self.processes)}
        return {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM)}


def run_job(consortium: Consortium, admin: AdminClient, protection: str, rounds: int) -> JobResult:
    """Create, start and follow one job to completion and the last model's evaluations."""
    initial = round_task.InstantTask(consortium.parameters).initial_weights(0)
    spec = pb.JobSpec(
        name=f"bench-round-{protection}",
        task_name=round_task.NAME,
        protection=PROTECTIONS[protection],
        algorithm="fedavg",
        num_rounds=rounds,
        min_participants=len(consortium.orgs),
        round_timeout_seconds=DEADLINE_SECONDS,
        phase_timeout_seconds=DEADLINE_SECONDS,
        max_failed_rounds=0,  # an aborted round fails the job: it would not be a measurement
        training=pb.TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.01, seed=0),
    )
    job_id = admin.create_job(spec, initial).job_id
    # The coordinator stamps rounds with its wall clock, on this machine.
    start_time = time.time()
    admin.start_job(job_id)

    def finished() -> pb.JobStatus | None:
        consortium.check_alive()
        status = admin.get_job(job_id)
        if status.state == pb.JOB_STATE_FAILED:
            aborted = [r.abort_reason for r in status.rounds if r.abort_reason]
            raise BenchError(f"{protection} job failed: {status.failure_reason} {aborted}")
        if status.state != pb.JOB_STATE_COMPLETED:
            return None
        # Wait for the last model's evaluations too, so that the next job starts on idle daemons.
        reports = {m.version: m.reports for m in status.metrics}
        return status if reports.get(status.model_version, 0) >= len(consortium.orgs) else None

    status = wait_for(
        finished, 60 + rounds * 2 * DEADLINE_SECONDS, f"the {protection} job", interval=0.5
    )
    seconds = {
        r.number: r.finished_at - r.started_at
        for r in status.rounds
        if r.phase == pb.ROUND_PHASE_COMMITTED
    }
    until_first_round = min(r.started_at for r in status.rounds) - start_time
    if protection == "paillier":
        # The coordinator holds only ciphertexts of versions >= 1 (the admin API refuses them).
        config = consortium.participant_config(consortium.orgs[0])
        version, weights = participant_model(config, job_id, status.model_version)
    else:
        version, weights = admin.download_model(job_id)
    if version != rounds:
        raise BenchError(f"{protection} job: the final model is version {version}, not {rounds}")
    expected = round_task.expected_weights(initial[0], list(range(len(consortium.orgs))), version)
    max_error = float(np.max(np.abs(weights[0].astype(np.float64) - expected)))
    if max_error > rounds * QUANTIZATION_ERROR + FLOAT_SLACK:
        raise BenchError(
            f"{protection} job: the final model differs from the expected FedAvg by {max_error:.3g}"
        )
    return JobResult(protection, job_id, seconds, until_first_round, max_error)


def participant_model(config_path: Path, job_id: str, version: int) -> tuple[int, Weights]:
    """A paillier job's model ``version`` as the participant of ``config_path`` decrypts it.

    This is ``fedsilo participant export`` with an exporter that keeps the weights in memory;
    the daemon of that organization has usually kept the version already (it evaluated it).
    """
    config = load_config(ParticipantConfig, config_path)
    client, channels = build_client(
        config, threading.Event(), give_up_after=config.rpc_timeout_seconds
    )
    paillier = paillier_jobs(config, client)
    kept: list[Weights] = []

    def keep(weights: Weights, _out: Path) -> None:
        kept.append(weights)

    try:
        exported = export_model(client, paillier, job_id, version, keep, Path(os.devnull))
    except ValueError as exc:  # ModelUnavailable among them: the version did not decrypt
        raise BenchError(f"job {job_id}: {config_path.stem} has no model: {exc}") from None
    finally:
        paillier.close()
        channels.close()
    if not exported.decrypted:
        raise BenchError(f"job {job_id}: {config_path.stem} did not treat it as a paillier job")
    return exported.version, kept[0]


_TRANSITION = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+ job=(?P<job>\S+) "
    r"round=(?P<round>\d+) phase=\S+ org=\S+ "
    r"(?:round opened with cohort of \d+|round (?P<before>\w+) -> \w+"
    r"|model version \d+ (?P<committed>committed) from .*)$"
)


def phase_seconds(log_path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Seconds each round spent in each phase, from the coordinator log's transition lines.

    The lines are ``fedsilo.logs`` records ("round opened ...", "round X -> Y", "model version N
    committed ..."); their clock has millisecond resolution. A round opens in ``created``; the
    time in a phase runs from the line that entered it to the line that left it.
    """
    entered: dict[tuple[str, int], datetime] = {}
    spent: dict[tuple[str, int], dict[str, float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = _TRANSITION.match(line)
        if match is None:
            continue
        key = (match["job"], int(match["round"]))
        stamp = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
        # The commit is logged as "model version N committed", the exit from AGGREGATED.
        left = "aggregated" if match["committed"] else match["before"]
        if left is not None and key in entered:
            phases = spent.setdefault(key, {})
            phases[left] = phases.get(left, 0.0) + (stamp - entered[key]).total_seconds()
        entered[key] = stamp
    return spent


def report(
    results: list[JobResult], log_path: Path, participants: int, parameters: int, rounds: int
) -> None:
    """Print every job's round times, the phase breakdown and the ratios (c) and (d) whose two
    protections were measured."""
    width = 8 * rounds
    print(
        f"  {'protection':<10}  {'job':<12}  {'start to round 1':>16}  "
        f"{'seconds of rounds 1..N':<{width}}  max |error|"
    )
    for result in results:
        row = "  ".join(f"{result.seconds[n]:6.3f}" for n in sorted(result.seconds))
        print(
            f"  {result.protection:<10}  {result.job_id[:12]:<12}  "
            f"{result.until_first_round:>16.3f}  {row:<{width}}  {result.max_error:.2g}"
        )
    measured = {
        protection: [
            (result.job_id, number)
            for result in results
            if result.protection == protection
            for number in result.seconds
            if number >= 2
        ]
        for protection in PROTECTIONS
    }
    measured = {protection: keys for protection, keys in measured.items() if keys}
    seconds = {(result.job_id, n): s for result in results for n, s in result.seconds.items()}
    medians = {
        protection: statistics.median(seconds[key] for key in keys)
        for protection, keys in measured.items()
    }
    phases = phase_seconds(log_path)
    if phases:
        print("  median seconds per phase over rounds 2..N (coordinator log, ms resolution):")
        print("  " + f"{'protection':<10}" + "".join(f"  {p:>11}" for p in PHASES))
        for protection, keys in measured.items():
            cells = []
            for phase in PHASES:
                values = [phases[key][phase] for key in keys if phase in phases.get(key, {})]
                cells.append(f"{statistics.median(values):>11.3f}" if values else f"{'-':>11}")
            print("  " + f"{protection:<10}" + "".join(f"  {cell}" for cell in cells))
    print(
        f"whole round, {participants} participants, {parameters:,} float32 parameters, median of "
        f"rounds 2..{rounds} of each job (round 1 excluded: one-off imports and connections): "
        + ", ".join(f"{protection} {median:.3f} s" for protection, median in medians.items())
    )
    if "none" in medians and "secagg" in medians:
        ratio = medians["secagg"] / medians["none"]
        verdict = "MET" if ratio <= TARGET_RATIO else "MISSED"
        print(f"(c) secagg / none = {ratio:.3f}x (target <= {TARGET_RATIO}x): {verdict}")
    if "secagg" in medians and "paillier" in medians:
        ratio = medians["paillier"] / medians["secagg"]
        print(f"(d) paillier / secagg = {ratio:.3f}x (recorded, no target)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="whole-round benchmark, real processes: (c) secagg / none round time "
        "(the defaults), (d) paillier / secagg (--participants 3 --parameters 100000 "
        "--protections secagg paillier)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per job (>= 2; default 3)")
    parser.add_argument("--participants", type=int, default=5, help="organizations (default 5)")
    parser.add_argument(
        "--parameters",
        type=int,
        default=round_task.DEFAULT_PARAMETERS,
        help=f"float32 parameters of the model, a multiple of {round_task.ROW} "
        f"(default {round_task.DEFAULT_PARAMETERS})",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="times to run the jobs of --protections (default 1)"
    )
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=2,
        help="rounds of the unmeasured warm-up job run first for each protection (0: none; "
        "default 2)",
    )
    parser.add_argument(
        "--protections",
        nargs="+",
        choices=tuple(PROTECTIONS),
        default=list(DEFAULT_PROTECTIONS),
        help="protections to run, in this order within each repeat (default: none secagg); "
        "(c) needs none and secagg, (d) secagg and paillier",
    )
    parser.add_argument(
        "--tick-seconds", type=float, default=0.1, help="coordinator tick_seconds (default 0.1)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, database, PKI)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 of each job is not measured")
    if not 2 <= args.participants <= 8:
        parser.error("--participants must be between 2 and 8 on one machine")
    try:
        round_task.shape_of(args.parameters)
    except ValueError as exc:
        parser.error(f"--parameters: {exc}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup_rounds < 0:
        parser.error("--warmup-rounds must be at least 0")
    print(
        f"round benchmark: {args.participants} participants, {args.parameters:,} parameters, "
        f"{args.rounds} rounds per job, "
        f"{args.repeats} x ({', '.join(args.protections)}), cores={os.cpu_count()}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="fedsilo-bench-round-"))
    consortium: Consortium | None = None
    results: list[JobResult] = []
    failed = False
    try:
        consortium = Consortium(workdir, args.participants, args.parameters, args.tick_seconds)
        consortium.start()
        with consortium.admin() as admin:
            consortium.approve_all(admin)
            if args.warmup_rounds:
                for protection in args.protections:
                    run_job(consortium, admin, protection, args.warmup_rounds)
                print(f"  warm-up jobs done ({args.warmup_rounds} rounds each, not measured)")
            for _ in range(args.repeats):
                for protection in args.protections:
                    started = time.monotonic()
                    results.append(run_job(consortium, admin, protection, args.rounds))
                    print(f"  {protection} job done in {time.monotonic() - started:.1f} s")
        report(results, consortium.coordinator_log, args.participants, args.parameters, args.rounds)
        return 0
    except (BenchError, WaitTimeout) as exc:
        failed = True
        print(f"round benchmark failed: {exc}")
        if results and consortium is not None:
            print("jobs completed before the failure:")
            report(
                results, consortium.coordinator_log, args.participants, args.parameters, args.rounds
            )
        return 1
    except BaseException:
        failed = True
        raise
    finally:
        _clean_up(workdir, consortium, failed, args.keep, print)


def _clean_up(
    workdir: Path,
    consortium: Consortium | None,
    failed: bool,
    keep: bool,
    say: Callable[[str], None],
) -> None:
    """Stop every process we started; remove the working directory (only the logs on failure)."""
    if consortium is not None:
        unclean = consortium.stop()
        if unclean:
            say(f"processes exited uncleanly: {unclean}")
    if keep:
        say(f"working directory kept: {workdir}")
        return
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    # On failure keep the logs (small, and the only way to see why) and remove the rest:
    # keys, the database, model blobs and the daemons' state.
    for entry in workdir.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if consortium is not None:
        for process in consortium.processes:
            say(f"  log of {process.name}: {process.log_path}")
    say(f"  remove {workdir} when done")


if __name__ == "__main__":
    raise SystemExit(main())
