"""TensorBoard event files per job: each round's final metrics, written under ``tensorboard_dir``.

Layout (docs/metrics.md): one run per job, ``<dir>/<job name>-<job id>/``, and one run per
organization below it, ``<dir>/<job name>-<job id>/orgs/<org id>/``; the step is the round
number. The organizations' runs use the same tags as the job's, so TensorBoard draws every
organization's curve on the job's chart.

A round is written once it is final: aborted, or committed and either every contributor has
reported its evaluation of the new model or ``round_timeout_seconds`` have passed since the
round closed (whoever reports later is left out). Rounds are written in number order, since
TensorBoard drops the later steps of a run when an earlier one arrives after them. What was
written is read back from the event files themselves, so a restarted coordinator writes the
rounds it missed and never a step twice.

A deleted job's run (its directory, the organizations' runs in it) is removed on the next pass
after ``fedsilo job delete``, also when the job was deleted while this coordinator was down.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.domain.jobs import Job, JobState, MetricReport
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import StorageUnavailable
from coordinator.observability.event_files import ScalarEvent, ScalarRun
from coordinator.persistence.store import Store
from coordinator.service.metrics import summarize
from fedsilo.logs import context

__all__ = [
    "RoundScalars",
    "TensorBoardExporter",
    "job_run_name",
    "round_scalars",
    "start_tensorboard_export",
]

log = logging.getLogger("coordinator")

ORGS_DIRECTORY = "orgs"
_ENDED = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.ABORTED})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RoundScalars:
    """A final round's scalars: the job run's, and each reporting organization's."""

    step: int
    wall_time: float
    job: dict[str, float]
    orgs: dict[str, dict[str, float]]


def job_run_name(job: Job) -> str:
    """``<job name>-<job id>``, the name made safe for one path component."""
    name = _UNSAFE.sub("_", job.spec.name).strip("._") or "job"
    return f"{name}-{job.job_id}"


def round_scalars(
    job: Job, round_: Round, reports: list[MetricReport], now: float
) -> RoundScalars | None:
    """The scalars of ``round_`` if they are final at ``now``, else None.

    ``reports`` are the job's evaluation reports; those of the model version the round made
    count.
    """
    if not round_.is_terminal or round_.finished_at is None:
        return None
    scalars = {
        "round/duration_seconds": round_.finished_at - round_.created_at,
        "round/contributors": float(len(round_.contributors)),
        "round/committed": 1.0 if round_.phase is Phase.COMMITTED else 0.0,
    }
    orgs: dict[str, dict[str, float]] = {}
    if round_.phase is Phase.COMMITTED:
        version = round_.base_version + 1
        evaluations = [r for r in reports if r.version == version]
        missing = set(round_.contributors) - {r.org_id for r in evaluations}
        if missing and now < round_.finished_at + job.spec.round_timeout_seconds:
            return None
        if round_.train_loss is not None:  # secure rounds never reveal one
            scalars["training/loss"] = round_.train_loss
        for summary in summarize(evaluations):
            scalars["evaluation/loss"] = summary.loss
            scalars["evaluation/accuracy"] = summary.accuracy
            scalars["evaluation/reports"] = float(summary.reports)
        for report in evaluations:
            orgs[report.org_id] = {
                "evaluation/loss": report.loss,
                "evaluation/accuracy": report.accuracy,
                "evaluation/examples": float(report.num_examples),
            }
    return RoundScalars(round_.number, round_.finished_at, scalars, orgs)


class TensorBoardExporter:
    """Writes every job's final rounds as TensorBoard scalars below ``directory``."""

    def __init__(self, store: Store, directory: Path, clock: Callable[[], float]) -> None:
        self._store = store
        self._directory = directory
        self._clock = clock
        self._runs: dict[Path, ScalarRun] = {}
        self._last_steps: dict[Path, int] = {}
        self._finished_jobs: set[str] = set()
        self._failing: set[str] = set()
        self._removed: set[str] = set()

    def export_pending(self) -> int:
        """Write what became final since the last call; return the number of steps written.

        A job whose files cannot be written is logged once and retried on the next call; the
        other jobs go on.
        """
        written = 0
        with self._store.transaction() as tx:
            listed = tx.list_jobs()
            jobs = [
                job
                for job in listed
                if job.job_id not in self._finished_jobs and job.state is not JobState.DELETED
            ]
            work = [(job, tx.list_rounds(job.job_id), tx.list_metrics(job.job_id)) for job in jobs]
        for job in listed:
            if job.state is JobState.DELETED and job.job_id not in self._removed:
                self._remove_run(job)
        now = self._clock()
        for job, rounds, reports in work:
            try:
                written += self._export_job(job, rounds, reports, now)
            except OSError as exc:
                if job.job_id not in self._failing:
                    log.warning(
                        "cannot write TensorBoard events under %s: %s; retrying",
                        self._directory,
                        exc,
                        **context(job=job.job_id),
                    )
                self._failing.add(job.job_id)
                continue
            if job.job_id in self._failing:
                log.info("TensorBoard events written again", **context(job=job.job_id))
                self._failing.discard(job.job_id)
        return written

    def _remove_run(self, job: Job) -> None:
        """Remove a deleted job's run directory; a failure is logged and retried next pass."""
        job_dir = self._directory / job_run_name(job)
        try:
            shutil.rmtree(job_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(
                "cannot remove the deleted job's TensorBoard events %s: %s; retrying",
                job_dir,
                exc,
                **context(job=job.job_id),
            )
            return
        else:
            log.info("TensorBoard events of the deleted job removed", **context(job=job.job_id))
        for cached in [p for p in self._runs if p == job_dir or job_dir in p.parents]:
            del self._runs[cached]
            self._last_steps.pop(cached, None)
        self._removed.add(job.job_id)

    def _export_job(
        self, job: Job, rounds: list[Round], reports: list[MetricReport], now: float
    ) -> int:
        job_dir = self._directory / job_run_name(job)
        pending = [r for r in rounds if r.number > self._last_step(job_dir)]
        steps: list[RoundScalars] = []
        for round_ in pending:
            scalars = round_scalars(job, round_, reports, now)
            if scalars is None:
                break  # later rounds wait: steps must reach TensorBoard in order
            steps.append(scalars)
        if steps:
            by_org: dict[str, list[ScalarEvent]] = {}
            for step in steps:
                for org_id, values in step.orgs.items():
                    by_org.setdefault(org_id, []).append(
                        ScalarEvent(step.step, step.wall_time, values)
                    )
            # The organizations' runs first, the job's last: the job run's last step is what a
            # restarted coordinator goes by, and each organization's run skips what it holds.
            for org_id, events in sorted(by_org.items()):
                self._append(job_dir / ORGS_DIRECTORY / org_id, events)
            self._append(job_dir, [ScalarEvent(s.step, s.wall_time, s.job) for s in steps])
        if job.state in _ENDED and len(steps) == len(pending):
            self._finished_jobs.add(job.job_id)
        return len(steps)

    def _last_step(self, directory: Path) -> int:
        if directory not in self._last_steps:
            self._last_steps[directory] = self._run(directory).last_step() or 0
        return self._last_steps[directory]

    def _run(self, directory: Path) -> ScalarRun:
        return self._runs.setdefault(directory, ScalarRun(directory))

    def _append(self, directory: Path, events: list[ScalarEvent]) -> None:
        fresh = [e for e in events if e.step > self._last_step(directory)]
        if fresh:
            self._run(directory).append(fresh)
            self._last_steps[directory] = fresh[-1].step


def start_tensorboard_export(
    exporter: TensorBoardExporter, period_seconds: float, stop: threading.Event
) -> threading.Thread:
    """Run ``exporter`` now and every ``period_seconds`` until ``stop`` is set, on its own thread.

    The round driver never waits for it: a slow or failing disk delays only the event files.
    """

    def export() -> None:
        while True:
            try:
                exporter.export_pending()
            except StorageUnavailable:
                pass  # the round driver reports the outage; the next pass catches up
            except Exception:  # noqa: BLE001 - a defect here must not end the coordinator
                log.exception("TensorBoard export failed; retrying")
            if stop.wait(period_seconds):
                return

    thread = threading.Thread(target=export, name="tensorboard-export", daemon=True)
    thread.start()
    return thread
