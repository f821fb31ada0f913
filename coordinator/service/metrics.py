"""Evaluation metrics: one report per (job, model version, organization), summarized per version."""

from __future__ import annotations

import numpy as np

from coordinator.domain.jobs import MetricReport
from coordinator.errors import ConflictingSubmission, InvalidRequest, NotFound
from coordinator.service.context import ServiceContext, require_job
from coordinator.service.views import MetricsSummary

__all__ = ["MetricsService", "summarize"]


class MetricsService:
    """Stores the evaluations participants report."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def report_metrics(self, report: MetricReport) -> bool:
        """Store one evaluation; returns True for an identical repeat."""
        if report.num_examples < 1:
            raise InvalidRequest("num_examples must be at least 1")
        if not (np.isfinite(report.loss) and np.isfinite(report.accuracy)):
            raise InvalidRequest("loss and accuracy must be finite")
        if not 0.0 <= report.accuracy <= 1.0:
            raise InvalidRequest("accuracy must be between 0 and 1")
        with self._ctx.lock, self._ctx.store.transaction() as tx:
            job = require_job(tx, report.job_id)
            if not 0 <= report.version <= job.model_version:
                raise NotFound(f"model version {report.version} does not exist for this job")
            previous = tx.get_metric(report.job_id, report.version, report.org_id)
            if previous is not None:
                same = (previous.num_examples, previous.loss, previous.accuracy) == (
                    report.num_examples,
                    report.loss,
                    report.accuracy,
                )
                if same:
                    return True
                raise ConflictingSubmission(
                    "different metrics were already reported for this version"
                )
            tx.add_metric(report)
        self._ctx.changes.notify()
        return False


def summarize(reports: list[MetricReport]) -> tuple[MetricsSummary, ...]:
    """Per version: the number of reports and examples, loss and accuracy weighted by examples,
    and each organization's own report."""
    by_version: dict[int, list[MetricReport]] = {}
    for report in reports:
        by_version.setdefault(report.version, []).append(report)
    summaries = []
    for version, group in sorted(by_version.items()):
        total = sum(r.num_examples for r in group)
        summaries.append(
            MetricsSummary(
                version,
                len(group),
                total,
                sum(r.loss * r.num_examples for r in group) / total,
                sum(r.accuracy * r.num_examples for r in group) / total,
                tuple(sorted(group, key=lambda r: r.org_id)),
            )
        )
    return tuple(summaries)
