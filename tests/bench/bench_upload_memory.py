"""Benchmark: the coordinator's peak memory while it receives large uploads, per model size.

Run from the repository root: ``python tests/bench/bench_upload_memory.py`` (``--help`` for
options). It starts a real coordinator process on 127.0.0.1 with mutual TLS and a throwaway PKI,
creates a plain (``none``) job of one float32 tensor of ``--megabytes`` MiB (the wide task's
model), lets two organizations in, and then, in one scenario after another, reads the
coordinator's peak resident set (``VmHWM`` of ``/proc/PID/status``, reset between scenarios
through ``/proc/PID/clear_refs``) and prints its growth over the resident set before the scenario
divided by the model size:

- stalled: ``--stalled`` uploads of one organization each send half of a whole update, then
  nothing, until the coordinator's idle timeout cancels them;
- oversized: an upload announcing more than ``max_payload_bytes``, and one that sends more than
  it announced (the whole update and ``--megabytes`` more);
- downloads: ``--stalled`` DownloadModel calls of the model at once;
- accepted: both organizations' whole updates, received and added to the round's running sum
  (the round then commits);
- create: the job's initial model received through CreateJob.

It also checks that the spool directory is empty after each scenario. Every process it started is
stopped by its pid and the working directory removed (``--keep`` keeps it). To measure another
checkout, run the script from its root with that root first on ``PYTHONPATH`` (``python -m``
puts the current directory first): the coordinator runs the code found there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from fedsilo import chunking
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import Process, WaitTimeout, wait_for
from fedsilo.codec import encode_tensors, header_to_proto
from fedsilo.health import health_serving
from fedsilo.pki import make_demo_pki
from fedsilo.tls import TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
ORGS = ("org-1", "org-2")
MIB = 1 << 20
STREAM_SECONDS = 600.0
"""Deadline of every upload of the bench: long enough for a loaded machine."""


class BenchError(RuntimeError):
    """The benchmark could not measure; the message says which step failed."""


@dataclass(frozen=True)
class Figure:
    """One scenario: the peak resident growth over the model size, and what it sent."""

    scenario: str
    growth_bytes: int
    model_bytes: int
    detail: str

    @property
    def ratio(self) -> float:
        return self.growth_bytes / self.model_bytes


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Make VmHWM the current resident set again (Linux: 5 > clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Coordinator:
    """A coordinator process and the clients of the bench, all ended by the bench."""

    def __init__(self, workdir: Path, idle_seconds: float) -> None:
        self.workdir = workdir
        self.pki = make_demo_pki(workdir / "pki", list(ORGS))
        self.admin_tls = TlsFiles(self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key)
        self.data_dir = workdir / "coordinator"
        self.idle_seconds = idle_seconds
        self.process: Process | None = None
        self.target = ""
        self.channels: list[grpc.Channel] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.popen.pid

    @property
    def spool_files(self) -> list[Path]:
        return sorted((self.data_dir / "spool").glob("*"))

    def start(self) -> None:
        port_file = self.workdir / "coordinator.port"
        config = {
            "listen": "127.0.0.1:0",
            "data_dir": str(self.data_dir),
            "auto_approve": True,
            "tls": {
                "ca_cert": str(self.pki.ca_cert),
                "cert": str(self.pki.coordinator_cert),
                "key": str(self.pki.coordinator_key),
            },
            "limits": {"liveness_seconds": 3600, "stream_idle_seconds": self.idle_seconds},
        }
        path = self.workdir / "coordinator.yaml"
        path.write_text(yaml.safe_dump(config))
        # PYTHONPATH first: a checkout named there is the one measured.
        paths = [os.environ.get("PYTHONPATH", ""), str(REPO_ROOT)]
        env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        args = [sys.executable, "-m", "fedsilo", "coordinator", "serve", "--config", str(path)]
        args += ["--port-file", str(port_file)]
        self.process = Process("coordinator", args, self.workdir / "coordinator.log", env)
        port = wait_for(lambda: self._port(port_file), 60, "the coordinator to listen")
        self.target = f"127.0.0.1:{port}"
        wait_for(
            lambda: self._alive() and health_serving(self.target, self.admin_tls),
            30,
            "the coordinator to be healthy",
        )

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.popen.poll() is not None:
            raise BenchError(f"the coordinator exited with code {self.process.popen.returncode}")
        return True

    def _port(self, port_file: Path) -> int | None:
        self._alive()
        try:
            return int(port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stub(self, org: str) -> pb_grpc.ParticipantServiceStub:
        files = self.pki.participants[org]
        tls = TlsFiles(self.pki.ca_cert, files.cert_path, files.key_path)
        channel = grpc.secure_channel(self.target, channel_credentials(tls))
        self.channels.append(channel)
        return pb_grpc.ParticipantServiceStub(channel)

    def stop(self) -> int | None:
        for channel in self.channels:
            channel.close()
        return None if self.process is None else self.process.stop()


def header_message(round_: pb.GetTaskResponse, update: Any, total: int | None = None) -> Any:
    header, _ = update
    payload = header_to_proto(header)
    if total is not None:
        payload.total_bytes = total
    return pb.SubmitUpdateRequest(
        header=pb.UpdateHeader(
            job_id=round_.job_id,
            round_id=round_.round_id,
            phase=pb.ROUND_PHASE_INPUTS,
            base_version=round_.model_version,
            num_examples=10,
            train_loss=0.5,
            payload=payload,
        )
    )


def data_messages(payload: bytes, limit: int | None = None) -> Iterator[Any]:
    sent = 0
    for piece in chunking.split(payload):
        if limit is not None and sent >= limit:
            return
        sent += len(piece)
        yield pb.SubmitUpdateRequest(data=piece)


def measured(
    coordinator: Coordinator, scenario: str, model_bytes: int, detail: str, run: Callable[[], None]
) -> Figure:
    """Run one scenario between two reads of the coordinator's memory; the spool must be empty
    once it is over."""
    reset_peak(coordinator.pid)
    before = memory_kib(coordinator.pid, "VmRSS")
    run()
    peak = memory_kib(coordinator.pid, "VmHWM")
    wait_for(lambda: not coordinator.spool_files, 30, f"the spool to be empty after {scenario}")
    return Figure(scenario, (peak - before) * 1024, model_bytes, detail)


SCENARIOS = ("create", "stalled", "oversized", "downloads", "accepted")


def run_bench(
    workdir: Path,
    megabytes: int,
    stalled: int,
    idle_seconds: float,
    scenarios: tuple[str, ...] = SCENARIOS,
    stalled_fraction: float = 0.5,
) -> list[Figure]:
    """Each scenario in a coordinator process of its own: memory a process freed is often kept
    (and reused) rather than returned, which would hide the next scenario's growth.

    ``stalled_fraction``: how much of the model each stalled upload sends before it goes silent.
    """
    return [
        _run_scenario(
            workdir / scenario, scenario, megabytes, stalled, idle_seconds, stalled_fraction
        )
        for scenario in scenarios
    ]


def _run_scenario(
    workdir: Path,
    scenario: str,
    megabytes: int,
    stalled: int,
    idle_seconds: float,
    stalled_fraction: float = 0.5,
) -> Figure:
    workdir.mkdir(parents=True)
    parameters = megabytes * MIB // 4
    model_bytes = parameters * 4
    coordinator = Coordinator(workdir, idle_seconds)
    figures: list[Figure] = []
    admin: AdminClient | None = None
    try:
        coordinator.start()
        stubs = {org: coordinator.stub(org) for org in ORGS}
        for stub in stubs.values():  # first calls register the organizations (auto-approved)
            stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        initial = [np.zeros(parameters, np.float32)]
        spec = pb.JobSpec(
            name="upload-memory",
            task_name="wide",
            protection=pb.PROTECTION_NONE,
            num_rounds=1,
            min_participants=len(ORGS),
            round_timeout_seconds=3600,
            training=pb.TrainingSettings(local_epochs=1, batch_size=8, learning_rate=0.1),
        )
        admin = client = AdminClient(
            coordinator.target, coordinator.admin_tls, timeout=STREAM_SECONDS
        )
        job: list[str] = []
        figures.append(
            measured(
                coordinator,
                "create",
                model_bytes,
                "CreateJob with the initial model",
                lambda: job.append(client.create_job(spec, initial).job_id),
            )
        )
        if scenario == "create":
            return figures[0]
        figures.clear()
        client.start_job(job[0])
        tasks = {
            org: wait_for(lambda org=org: _train_task(stubs[org]), 60, f"{org}'s round to open")
            for org in ORGS
        }
        updates = {
            org: encode_tensors([np.full(parameters, index + 1, np.float32)])
            for index, org in enumerate(ORGS)
        }

        def stall() -> None:
            release = threading.Event()
            ended: list[grpc.StatusCode] = []
            update = updates[ORGS[0]]

            def stalled_stream() -> Iterator[Any]:
                yield header_message(tasks[ORGS[0]], update)
                yield from data_messages(update[1], limit=int(model_bytes * stalled_fraction))
                release.wait(timeout=STREAM_SECONDS)

            def call() -> None:
                try:
                    stubs[ORGS[0]].SubmitUpdate(stalled_stream(), timeout=STREAM_SECONDS)
                except grpc.RpcError as exc:
                    ended.append(exc.code())

            threads = [threading.Thread(target=call) for _ in range(stalled)]
            for thread in threads:
                thread.start()
            # Each call ends when the coordinator cancels it for its silence.
            for thread in threads:
                thread.join(timeout=STREAM_SECONDS)
            release.set()
            if len(ended) != stalled or set(ended) != {grpc.StatusCode.CANCELLED}:
                raise BenchError(f"stalled uploads ended with {ended}")

        if scenario == "stalled":
            return measured(
                coordinator,
                "stalled",
                model_bytes,
                f"{stalled} uploads of {stalled_fraction:g} of the model each, then silence "
                f"until the {idle_seconds:g} s idle timeout",
                stall,
            )

        def oversized() -> None:
            update = updates[ORGS[1]]
            task = tasks[ORGS[1]]
            for messages, what in (
                (iter([header_message(task, update, total=(1 << 30) + 1)]), "announced"),
                (
                    _chain(
                        header_message(task, update),
                        data_messages(update[1]),
                        data_messages(update[1], limit=model_bytes),
                    ),
                    "over-long",
                ),
            ):
                try:
                    stubs[ORGS[1]].SubmitUpdate(messages, timeout=STREAM_SECONDS)
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                        raise BenchError(f"the {what} upload ended with {exc.code()}") from None
                else:
                    raise BenchError(f"the {what} oversized upload was accepted")

        if scenario == "oversized":
            return measured(
                coordinator,
                "oversized",
                model_bytes,
                "announced 1 GiB + 1 (refused at its header); the whole update and as much "
                "again (refused at the first chunk too many)",
                oversized,
            )

        def downloads() -> None:
            failed: list[BaseException] = []

            def fetch() -> None:
                request = pb.DownloadModelRequest(job_id=job[0], version=0)
                try:
                    received = sum(
                        len(chunk.data)
                        for chunk in stubs[ORGS[0]].DownloadModel(request, timeout=STREAM_SECONDS)
                    )
                except grpc.RpcError as exc:
                    failed.append(exc)
                    return
                if received != model_bytes:
                    failed.append(BenchError(f"a download brought {received} bytes"))

            threads = [threading.Thread(target=fetch) for _ in range(stalled)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=STREAM_SECONDS)
            if failed:
                raise BenchError(f"downloads failed: {failed}")

        if scenario == "downloads":
            return measured(
                coordinator,
                "downloads",
                model_bytes,
                f"{stalled} downloads of the model at once",
                downloads,
            )

        def accepted() -> None:
            for org in ORGS:
                messages = _chain(
                    header_message(tasks[org], updates[org]), data_messages(updates[org][1])
                )
                stubs[org].SubmitUpdate(messages, timeout=STREAM_SECONDS)
            wait_for(
                lambda: client.get_job(job[0]).state == pb.JOB_STATE_COMPLETED,
                600,
                "the round to commit",
            )

        if scenario == "accepted":
            return measured(
                coordinator,
                "accepted",
                model_bytes,
                "both whole updates received, added to the running sum, the round committed",
                accepted,
            )
        raise BenchError(f"no scenario {scenario!r}")
    finally:
        if admin is not None:
            admin.close()
        code = coordinator.stop()
        if code not in (None, 0, -signal.SIGTERM):
            print(f"coordinator exited with {code}; log: {workdir / 'coordinator.log'}")


def _train_task(stub: pb_grpc.ParticipantServiceStub) -> pb.GetTaskResponse | None:
    task = stub.GetTask(pb.GetTaskRequest(wait_seconds=1), timeout=30)
    return task if task.kind == pb.TASK_KIND_TRAIN else None


def _chain(first: Any, *rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    for part in rest:
        yield from part


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="model size in MiB")
    parser.add_argument("--stalled", type=int, default=8, help="stalled uploads at once")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="stream idle timeout")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fedsilo-upload-memory-"))
    started = time.monotonic()
    try:
        figures = run_bench(workdir, args.megabytes, args.stalled, args.idle_seconds)
    except (BenchError, WaitTimeout) as exc:
        print(f"could not measure: {exc}; working directory kept: {workdir}")
        return 1
    model = args.megabytes * MIB
    print(
        f"model: {args.megabytes} MiB ({model // 4} float32 weights); coordinator peak RSS "
        "growth per scenario, as a ratio of the model size:"
    )
    for figure in figures:
        print(
            f"  {figure.scenario:<10} {figure.ratio:6.2f}x  "
            f"({figure.growth_bytes / MIB:8.1f} MiB)  {figure.detail}"
        )
    print(f"({time.monotonic() - started:.0f} s)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
