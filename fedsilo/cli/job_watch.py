"""``fedsilo job watch``: follow a job round by round until it ends, through coordinator restarts.

A round is shown once, with its final numbers: a committed round when every contributor has
reported its evaluation of the model the round made (or no more reports can come: a newer version
exists, the job failed or was aborted, or the job completed and the reports stopped arriving for
``report_grace_seconds``); ``reports`` says how many of the contributors' reports it shows. While
the coordinator is unreachable the watch retries with exponential backoff instead of dying.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedsilo.cli.job_views import PHASE_NAMES, STATE_NAMES, round_metrics
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["JobWatch", "eta_seconds", "watch_line"]

_ENDED_JOB = (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_ABORTED)
_ENDED_ROUND = (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)
# A restarting coordinator refuses connections (UNAVAILABLE) or cannot answer in time.
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def eta_seconds(status: pb.JobStatus) -> float | None:
    """Mean time of the job's ended rounds times the rounds still to commit; None if unknown."""
    times = [r.finished_at - r.started_at for r in status.rounds if r.phase in _ENDED_ROUND]
    remaining = status.spec.num_rounds - status.model_version
    if not times or remaining <= 0 or status.state in _ENDED_JOB:
        return None
    return sum(times) / len(times) * remaining


@dataclass
class JobWatch:
    """Polls one job and emits events: ``waiting``, a row per round, reconnects, the end.

    ``emit`` receives plain dicts; the command prints them as JSON or as ``key=value`` lines.
    """

    fetch: Callable[[], pb.JobStatus]
    emit: Callable[[dict[str, Any]], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    refresh_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    report_grace_seconds: float = 60.0
    _shown: int = 0  # rounds shown so far, in order
    _reason: str = ""
    _ended_at: float | None = field(default=None)

    def run(self) -> int:
        """Watch until the job ends: 0 if it completed, 1 if it failed or was aborted."""
        while True:
            status = self._fetch_through_outages()
            self._show_waiting(status)
            self._show_rounds(status)
            if status.state in _ENDED_JOB and self._shown == len(status.rounds):
                self.emit(self._final(status))
                return 0 if status.state == pb.JOB_STATE_COMPLETED else 1
            self.sleep(self.refresh_seconds)  # a human-facing refresh interval

    def _fetch_through_outages(self) -> pb.JobStatus:
        delay = self.refresh_seconds
        unreachable = False
        while True:
            try:
                status = self.fetch()
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _TRANSIENT:
                    raise
                unreachable = True
                self.emit({"coordinator": "unreachable", "code": code.name, "retry_in": delay})
                self.sleep(delay)
                delay = min(delay * 2, self.max_backoff_seconds)
                continue
            if unreachable:
                self.emit({"coordinator": "reconnected"})
            return status

    def _show_waiting(self, status: pb.JobStatus) -> None:
        if status.waiting_reason != self._reason:
            # Shown when it changes, so a stalled job says why once instead of every second.
            self._reason = status.waiting_reason
            if self._reason:
                self.emit({"waiting": self._reason})

    def _show_rounds(self, status: pb.JobStatus) -> None:
        if status.state in _ENDED_JOB and self._ended_at is None:
            self._ended_at = self.clock()
        while self._shown < len(status.rounds):
            round_ = status.rounds[self._shown]
            if round_.phase not in _ENDED_ROUND or not self._metrics_final(status, round_):
                return  # rounds are shown in order: a later one waits for this one
            self.emit(self._row(status, round_))
            self._shown += 1

    def _metrics_final(self, status: pb.JobStatus, round_: pb.RoundStatus) -> bool:
        if round_.phase != pb.ROUND_PHASE_COMMITTED:
            return True
        metrics = round_metrics(status, round_)
        if metrics is not None and metrics.reports >= len(round_.contributors):
            return True
        # Organizations evaluate only the latest version of a running or completed job.
        if status.model_version > round_.base_version + 1:
            return True
        if status.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_ABORTED):
            return True
        return (
            self._ended_at is not None
            and self.clock() - self._ended_at >= self.report_grace_seconds
        )

    def _row(self, status: pb.JobStatus, round_: pb.RoundStatus) -> dict[str, Any]:
        metrics = round_metrics(status, round_)
        seconds = round_.finished_at - round_.started_at if round_.finished_at else 0.0
        row: dict[str, Any] = {
            "round": round_.number,
            "phase": PHASE_NAMES[round_.phase],
            "participants": len(round_.contributors),
        }
        if round_.phase == pb.ROUND_PHASE_ABORTED:
            row["reason"] = round_.abort_reason
        else:
            row["reports"] = metrics.reports if metrics else 0  # of `participants` contributors
            row["loss"] = round(metrics.loss, 4) if metrics else None
            row["accuracy"] = round(metrics.accuracy, 4) if metrics else None
            if round_.HasField("train_loss"):
                row["train_loss"] = round(round_.train_loss, 4)
        row["seconds"] = round(seconds, 2)
        eta = eta_seconds(status)
        if eta is not None:
            row["eta_seconds"] = round(eta)
        return row

    def _final(self, status: pb.JobStatus) -> dict[str, Any]:
        final: dict[str, Any] = {
            "job": STATE_NAMES[status.state],
            "model_version": status.model_version,
        }
        reported = [m for m in status.metrics if m.version == status.model_version]
        if reported:
            final["accuracy"] = round(reported[0].accuracy, 4)
            final["loss"] = round(reported[0].loss, 4)
        if status.failure_reason:
            final["failure"] = status.failure_reason
        return final


def watch_line(event: dict[str, Any]) -> str:
    """One ``job watch`` event as a line for people."""
    if "waiting" in event:
        return f"waiting: {event['waiting']}"
    if event.get("coordinator") == "unreachable":
        return f"coordinator unreachable ({event['code']}); retrying in {event['retry_in']:g} s"
    if event.get("coordinator") == "reconnected":
        return "coordinator reachable again"
    if "job" in event:
        line = f"job {event['job']} at model version {event['model_version']}"
        if "accuracy" in event:
            line += f": accuracy {event['accuracy']:.4f}, loss {event['loss']:.4f}"
        if "failure" in event:
            line += f" ({event['failure']})"
        return line
    fields = dict(event)
    if "reports" in fields:
        fields["reports"] = f"{fields['reports']}/{fields['participants']}"
    return "  ".join(f"{k}={v}" for k, v in fields.items())
