"""The sample Grafana dashboard queries only documented metrics the coordinator really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from coordinator.observability.prometheus import METRIC_NAMES
from participant.metrics import PARTICIPANT_METRIC_NAMES

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "fedsilo-coordinator.json"
SUFFIXES = ("_bucket", "_count", "_sum")


def _queried_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    names = set()
    for expr in exprs:
        found = set(re.findall(r"\bfedsilo_[a-z_]+", expr))
        assert found, expr
        names |= found
    return names


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_queried_metric_is_exported_and_documented() -> None:
    documented = set(
        re.findall(r"^\| `(fedsilo_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M)
    )
    # The coordinator's metrics and the participant daemon's, each in its own table.
    assert documented == set(METRIC_NAMES) | set(PARTICIPANT_METRIC_NAMES)
    for name in _queried_names():
        assert _base(name) in METRIC_NAMES, name
