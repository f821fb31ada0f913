"""S19 against a real coordinator process: many connections, stalled uploads and a flood of
calls from one organization, while three others run a job.

The caps hold (the greedy organization gets RESOURCE_EXHAUSTED, its silent uploads are cut after
their idle time), health and the admin API answer all along, the other
organizations' job completes, and once the abuse stops the coordinator's threads and open files
are back where they were (nothing leaked per connection or per call).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Consortium, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsilo.cli.daemons import WaitTimeout, wait_for
from fedsilo.pki import make_demo_pki
from fedsilo.tasks import as_float32, load_task
from fedsilo.tls import TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

pytestmark = pytest.mark.system

HONEST = ["org-1", "org-2", "org-3"]
GREEDY = "org-4"
CONNECTIONS = 120  # separate TLS connections of the greedy organization
SILENT_UPLOADS = 24  # more than its call cap
IDLE_S = 3.0
CALLS_PER_ORG = 8
WORKERS = 16
ANSWER_WITHIN_S = 10.0  # a frozen server never answers; a busy machine answers late


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[Consortium]:
    orgs = [*HONEST, GREEDY]
    group = Consortium(tmp_path, make_demo_pki(tmp_path / "pki", orgs), free_port(), HONEST)
    group.coordinator_extra = {
        "limits": {
            "max_workers": WORKERS,
            "max_calls_per_org": CALLS_PER_ORG,
            "stream_idle_seconds": IDLE_S,
        }
    }
    try:
        yield group
    finally:
        group.stop_all()


def _resources(pid: int) -> tuple[int, int]:
    """The process's thread count and open file descriptors."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:"))
    )
    return threads, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _descriptor_kinds(pid: int) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            kinds[os.readlink(fd).split(":")[0].split("[")[0]] += 1
        except OSError:
            continue
    return kinds


def _code(call: grpc.Future) -> grpc.StatusCode:
    failure = call.exception(timeout=60)
    return grpc.StatusCode.OK if failure is None else failure.code()  # type: ignore[no-any-return]


def _start_job(consortium: Consortium) -> str:
    task = load_task("digits-linear", {"digits-linear": "examples.synthetic.task:task"})
    spec = pb.JobSpec(
        name="under-load",
        task_name="digits-linear",
        protection=pb.PROTECTION_NONE,
        num_rounds=2,
        min_participants=3,
        round_timeout_seconds=60,
        training=pb.TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=3),
    )
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == 3, 60, "three organizations")
        job = admin.create_job(spec, as_float32(task.initial_weights(3)))
        admin.start_job(job.job_id)
    return job.job_id


class Watch:
    """Health and the admin API, called over and over from their own connections."""

    def __init__(self, consortium: Consortium) -> None:
        self._health = grpc.secure_channel(
            consortium.target, channel_credentials(consortium.admin_tls)
        )
        self._admin = grpc.secure_channel(
            consortium.target, channel_credentials(consortium.admin_tls)
        )
        self.slowest = 0.0
        self.failures: list[str] = []
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._health.close()
        self._admin.close()

    def _run(self) -> None:
        health = health_pb2_grpc.HealthStub(self._health)
        admin = pb_grpc.AdminServiceStub(self._admin)
        while not self._stop.wait(0.1):
            started = time.monotonic()
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_WITHIN_S)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(f"health {reply.status}")
                admin.ListJobs(pb.ListJobsRequest(), timeout=ANSWER_WITHIN_S)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.calls += 1


def test_one_organization_s_load_leaves_health_admin_and_the_others_unaffected(
    loaded: Consortium,
) -> None:
    coordinator = loaded.start_coordinator()
    pid = coordinator.popen.pid
    for org in HONEST:
        loaded.start_participant(org)
    greedy_tls = TlsFiles(
        loaded.pki.ca_cert,
        loaded.pki.participants[GREEDY].cert_path,
        loaded.pki.participants[GREEDY].key_path,
    )
    job_id = _start_job(loaded)  # the greedy organization is not in the first round's cohort
    baseline = _resources(pid)
    hold = threading.Event()

    def silent() -> Iterator[pb.SubmitUpdateRequest]:
        hold.wait(120)
        return
        yield  # sends nothing

    channels = [
        grpc.secure_channel(loaded.target, channel_credentials(greedy_tls))
        for _ in range(CONNECTIONS)
    ]
    try:
        with Watch(loaded) as watch:
            stubs = [pb_grpc.ParticipantServiceStub(channel) for channel in channels]
            # Many connections, each calling at once; then uploads that never send a byte.
            info = pb.GetServerInfoRequest()
            flood = [stub.GetServerInfo.future(info, timeout=30) for stub in stubs]
            uploads = [
                stubs[i].SubmitUpdate.future(silent(), timeout=120) for i in range(SILENT_UPLOADS)
            ]
            codes = Counter(_code(call) for call in flood)
            upload_codes = Counter(_code(call) for call in uploads)
            hold.set()

            def completed() -> pb.JobStatus | None:
                with loaded.admin() as admin:
                    status = admin.get_job(job_id)
                return status if status.state == pb.JOB_STATE_COMPLETED else None

            status = wait_for(completed, 180, "the honest organizations' job to complete")
    finally:
        hold.set()
        for channel in channels:
            channel.close()

    # The caps held: some of the flood was turned away, every answer was OK or over the cap.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes[grpc.StatusCode.OK] >= 1
    # Every silent upload ended: cut after its idle time, or refused over the cap.
    assert set(upload_codes) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert upload_codes[grpc.StatusCode.CANCELLED] >= 1
    assert upload_codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 1
    # Health and the admin API answered all along.
    assert watch.calls >= 5
    assert watch.failures == [], f"slowest answer {watch.slowest:.2f} s"
    # The others were unaffected: their job completed with their updates.
    assert status.model_version == 2
    assert all(set(r.contributors) >= set(HONEST) for r in status.rounds)

    # Nothing leaked: threads and descriptors return to (about) where they were.
    # The server's worker pool may have grown to its size; nothing else may stay.
    last: list[tuple[int, int]] = []

    def settled() -> bool:
        last[:] = [_resources(pid)]
        threads, fds = last[0]
        return threads <= baseline[0] + WORKERS and fds <= baseline[1] + 8

    try:
        wait_for(settled, 30, f"threads and descriptors back near {baseline}")
    except WaitTimeout:
        raise AssertionError(f"now {last}: {_descriptor_kinds(pid)}") from None
