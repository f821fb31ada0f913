"""``job watch``: final metrics once, in order; reconnection with backoff; ETA; the last line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from fedsilo.cli.job_watch import JobWatch, eta_seconds, watch_line
from fedsilo.v1 import fedsilo_pb2 as pb

ORGS = ["org-a", "org-b"]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def committed(number: int, started: float, finished: float) -> pb.RoundStatus:
    return pb.RoundStatus(
        number=number,
        phase=pb.ROUND_PHASE_COMMITTED,
        base_version=number - 1,
        contributors=ORGS,
        started_at=started,
        finished_at=finished,
    )


def metrics(version: int, reports: int, accuracy: float) -> pb.VersionMetrics:
    return pb.VersionMetrics(version=version, reports=reports, loss=1 - accuracy, accuracy=accuracy)


def status(
    state: int, version: int, rounds: list[pb.RoundStatus], *versions: pb.VersionMetrics
) -> pb.JobStatus:
    return pb.JobStatus(
        job_id="job",
        spec=pb.JobSpec(num_rounds=2),
        state=state,
        model_version=version,
        rounds=rounds,
        metrics=list(versions),
    )


class Script:
    """fetch() answers from a list (an exception is raised); sleep and clock are recorded."""

    def __init__(self, answers: list[pb.JobStatus | Exception]) -> None:
        self._answers: Iterator[pb.JobStatus | Exception] = iter(answers)
        self.events: list[dict[str, Any]] = []
        self.sleeps: list[float] = []
        self.now = 0.0

    def fetch(self) -> pb.JobStatus:
        answer = next(self._answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def watch(self, **changes: Any) -> JobWatch:
        return JobWatch(
            self.fetch, self.events.append, sleep=self.sleep, clock=lambda: self.now, **changes
        )


def rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "round" in e]


def test_a_round_is_shown_once_with_its_final_metrics_and_the_end_with_the_accuracy() -> None:
    one = committed(1, 100.0, 110.0)
    two = committed(2, 110.0, 130.0)
    running = pb.JOB_STATE_RUNNING
    script = Script(
        [
            status(running, 1, [one]),  # committed, no evaluation yet (a paillier job's case)
            status(running, 1, [one], metrics(1, 1, 0.5)),  # one of two reports
            status(running, 1, [one], metrics(1, 2, 0.75)),
            status(pb.JOB_STATE_COMPLETED, 2, [one, two], metrics(1, 2, 0.75)),
            status(pb.JOB_STATE_COMPLETED, 2, [one, two], metrics(1, 2, 0.75), metrics(2, 2, 0.9)),
        ]
    )
    assert script.watch().run() == 0
    assert rows(script.events) == [
        {
            "round": 1,
            "phase": "committed",
            "participants": 2,
            "reports": 2,
            "loss": 0.25,
            "accuracy": 0.75,
            "seconds": 10.0,
            "eta_seconds": 10,  # one more round at the mean of 10 s
        },
        {
            "round": 2,
            "phase": "committed",
            "participants": 2,
            "reports": 2,
            "loss": 0.1,
            "accuracy": 0.9,
            "seconds": 20.0,
        },
    ]
    final = {"job": "completed", "model_version": 2, "accuracy": 0.9, "loss": 0.1}
    assert script.events[-1] == final
    assert watch_line(script.events[-1]) == (
        "job completed at model version 2: accuracy 0.9000, loss 0.1000"
    )


def test_a_completed_jobs_missing_report_is_waited_for_then_shown_as_partial() -> None:
    one = committed(1, 0.0, 5.0)
    done = status(pb.JOB_STATE_COMPLETED, 1, [one], metrics(1, 1, 0.5))
    script = Script([done] * 5)
    assert script.watch(report_grace_seconds=2.5, refresh_seconds=1.0).run() == 0
    (row,) = rows(script.events)
    assert (row["reports"], row["participants"], row["accuracy"]) == (1, 2, 0.5)
    assert "  reports=1/2  " in watch_line(row)
    assert script.sleeps == [1.0, 1.0, 1.0]  # shown at the first look 2.5 s after the end


def test_an_aborted_round_is_shown_at_once_with_its_reason() -> None:
    aborted = pb.RoundStatus(
        number=1, phase=pb.ROUND_PHASE_ABORTED, abort_reason="job aborted by admin"
    )
    script = Script([status(pb.JOB_STATE_ABORTED, 0, [aborted])])
    assert script.watch().run() == 1
    assert rows(script.events)[0]["reason"] == "job aborted by admin"
    assert script.events[-1] == {"job": "aborted", "model_version": 0}


def test_the_watch_reconnects_with_backoff_when_the_coordinator_restarts() -> None:
    gone = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    slow = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
    waiting = status(pb.JOB_STATE_RUNNING, 0, [])
    waiting.waiting_reason = "needs 2 live organizations, 1 active: org-a"
    finished = status(pb.JOB_STATE_COMPLETED, 2, [committed(1, 0, 1), committed(2, 1, 2)])
    finished.metrics.extend([metrics(1, 2, 0.5), metrics(2, 2, 0.6)])
    script = Script([waiting, gone, slow, gone, gone, gone, waiting, finished])
    assert script.watch(max_backoff_seconds=5.0).run() == 0
    outages = [e for e in script.events if e.get("coordinator") == "unreachable"]
    assert [e["retry_in"] for e in outages] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [e["code"] for e in outages][:2] == ["UNAVAILABLE", "DEADLINE_EXCEEDED"]
    assert script.sleeps == [1.0, 1.0, 2.0, 4.0, 5.0, 5.0, 1.0]
    assert {"coordinator": "reconnected"} in script.events
    # The waiting reason did not change across the outage: it is shown once.
    assert [e for e in script.events if "waiting" in e] == [{"waiting": waiting.waiting_reason}]
    assert watch_line(outages[0]) == "coordinator unreachable (UNAVAILABLE); retrying in 1 s"


def test_a_refusal_that_is_not_an_outage_ends_the_watch() -> None:
    script = Script([FakeRpcError(grpc.StatusCode.NOT_FOUND)])
    with pytest.raises(grpc.RpcError):
        script.watch().run()


def test_eta_is_the_mean_round_time_times_the_rounds_left() -> None:
    rounds = [committed(1, 0.0, 10.0), committed(2, 10.0, 30.0)]
    job = status(pb.JOB_STATE_RUNNING, 2, rounds)
    job.spec.num_rounds = 5
    assert eta_seconds(job) == pytest.approx(15.0 * 3)
    assert eta_seconds(status(pb.JOB_STATE_RUNNING, 0, [])) is None  # no round ended yet
    assert eta_seconds(status(pb.JOB_STATE_ABORTED, 2, rounds)) is None
