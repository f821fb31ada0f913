"""The admin CLI's JSON: numbers as numbers, lowercase enum names, null where nothing is known."""

from __future__ import annotations

import json

from fedsilo.cli.job_views import age_text, iso_time, job_json, participant_json
from fedsilo.v1 import fedsilo_pb2 as pb


def test_job_json_has_typed_values_and_each_rounds_metrics_per_organization() -> None:
    status = pb.JobStatus(
        job_id="job",
        spec=pb.JobSpec(
            protection=pb.PROTECTION_SECAGG,
            num_rounds=3,
            secagg=pb.SecAggSettings(max_weight=8192),
            strategy=pb.StrategyParameters(server_learning_rate=0.5),
        ),
        state=pb.JOB_STATE_RUNNING,
        model_version=1,
        threshold=2,
        rounds=[
            pb.RoundStatus(
                number=1,
                phase=pb.ROUND_PHASE_COMMITTED,
                base_version=0,
                threshold=2,
                contributors=["org-a", "org-b"],
            ),
            pb.RoundStatus(number=2, phase=pb.ROUND_PHASE_INPUTS, base_version=1, train_loss=0.0),
        ],
        metrics=[
            pb.VersionMetrics(
                version=1,
                reports=2,
                num_examples=40,
                loss=0.3,
                accuracy=0.8,
                organizations=[
                    pb.OrganizationMetrics(org_id="org-a", num_examples=10, loss=0.6, accuracy=0.5),
                    pb.OrganizationMetrics(org_id="org-b", num_examples=30, loss=0.2, accuracy=0.9),
                ],
            )
        ],
    )
    data = json.loads(json.dumps(job_json(status)))
    assert (data["state"], data["model_version"], data["threshold"]) == ("running", 1, 2)
    assert data["spec"]["protection"] == "secagg"
    assert data["spec"]["secagg"]["max_weight"] == 8192  # an int64, still a number
    assert data["spec"]["strategy"]["server_learning_rate"] == 0.5
    assert data["spec"]["strategy"]["tau"] is None  # unset: the strategy's default
    first, second = data["rounds"]
    assert (first["phase"], first["threshold"], first["train_loss"]) == ("committed", 2, None)
    assert second["train_loss"] == 0.0  # set, even to zero, is known
    assert first["metrics"]["accuracy"] == 0.8 and first["metrics"]["reports"] == 2
    assert first["metrics"]["organizations"] == [
        {"org_id": "org-a", "num_examples": 10, "loss": 0.6, "accuracy": 0.5},
        {"org_id": "org-b", "num_examples": 30, "loss": 0.2, "accuracy": 0.9},
    ]
    assert second["metrics"] is None  # the round has not made a version yet
    assert data["metrics"][0]["num_examples"] == 40


def test_participant_times_are_iso_8601_with_the_age_of_the_last_call() -> None:
    info = pb.ParticipantInfo(
        org_id="org-a",
        status="pending",
        first_seen=1_700_000_000.25,
        last_seen=1_700_000_100.0,
        certificate_sha256="ab" * 32,
    )
    assert participant_json(info, now=1_700_000_412.0) == {
        "org_id": "org-a",
        "status": "pending",
        "first_seen": "2023-11-14T22:13:20Z",
        "last_seen": "2023-11-14T22:15:00Z",
        "last_seen_age_seconds": 312.0,
        "certificate_sha256": "ab" * 32,
    }
    assert iso_time(0.0) == ""
    assert [age_text(s) for s in (42, 312, 3725, 200_000)] == ["42s", "5m12s", "1h02m", "2d07h"]
