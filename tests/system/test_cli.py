"""The admin CLI against a real coordinator process: create, start, watch, status, list, export."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedsilo.cli.daemons import wait_for

pytestmark = pytest.mark.system


# Runs the fedsilo command with every import of TensorFlow or Keras failing, and says so on
# stderr: the admin CLI must not need them (version 0 is built by the organizations).
_WITHOUT_TENSORFLOW = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            sys.stderr.write("BLOCKED IMPORT " + name + "\\n")
            raise ImportError("importing " + name + " is blocked in this test")
        return None

sys.meta_path.insert(0, _Blocked())
from fedsilo.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _fedsilo(  # type: ignore[no-untyped-def]
    consortium, *args: str, check: bool = True, without_tensorflow: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FEDSILO_ADMIN_COORDINATOR": consortium.target,
        "FEDSILO_ADMIN_CA_CERT": str(consortium.pki.ca_cert),
        "FEDSILO_ADMIN_CERT": str(consortium.pki.admin_cert),
        "FEDSILO_ADMIN_KEY": str(consortium.pki.admin_key),
        "COLUMNS": "200",
    }
    command = ["-c", _WITHOUT_TENSORFLOW] if without_tensorflow else ["-m", "fedsilo"]
    result = subprocess.run(  # noqa: S603
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    if without_tensorflow:
        assert "BLOCKED IMPORT" not in result.stderr, result.stderr
    return result


def test_admin_cli_runs_a_job_end_to_end(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    wait_for(
        lambda: len(json.loads(_fedsilo(consortium, "participants", "list", "--json").stdout)) == 3,
        60,
        "three organizations",
    )
    table = _fedsilo(consortium, "participants", "list").stdout
    assert all(org in table for org in consortium.orgs) and "status" in table
    rows = json.loads(_fedsilo(consortium, "participants", "list", "--json").stdout)
    listed = {p["org_id"]: p for p in rows}
    fingerprint = hashlib.sha256(
        x509.load_pem_x509_certificate(
            consortium.pki.participants["org-1"].cert_path.read_bytes()
        ).public_bytes(serialization.Encoding.DER)
    ).hexdigest()
    assert listed["org-1"]["certificate_sha256"] == fingerprint
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed["org-1"]["last_seen"])
    assert 0 <= listed["org-1"]["last_seen_age_seconds"] < 600
    approved = _fedsilo(consortium, "participants", "approve", "org-1").stdout
    assert f"certificate sha256: {fingerprint}" in approved

    created = _fedsilo(
        consortium,
        "job",
        "create",
        "--task",
        "digits-linear",
        "--rounds",
        "2",
        "--min-participants",
        "3",
        "--epochs",
        "2",
        "--learning-rate",
        "0.5",
        "--strategy",
        "fedadam",
        "--server-learning-rate",
        "0.05",
        "--json",
        without_tensorflow=True,
    )
    job = json.loads(created.stdout)
    assert job["state"] == "created" and job["model_version"] == 0
    # No weights came with the job: the organizations build version 0 from its seed.
    assert job["spec"]["initial_weights_from_seed"] is True
    assert job["waiting_reason"].startswith("created, not started")
    # The strategy is the job's, with the unset parameters at their defaults.
    assert job["spec"]["algorithm"] == "fedadam"
    assert job["spec"]["strategy"] == {
        "server_learning_rate": 0.05,
        "server_momentum": None,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 0.001,
        "proximal_mu": None,
    }

    started = json.loads(_fedsilo(consortium, "job", "start", job["job_id"], "--json").stdout)
    assert started["state"] == "running"
    watched = _fedsilo(consortium, "job", "watch", job["job_id"])
    assert "job completed at model version 2" in watched.stdout
    assert watched.stdout.count("phase=committed") == 2

    status = json.loads(_fedsilo(consortium, "job", "status", job["job_id"], "--json").stdout)
    assert status["state"] == "completed"
    # Version 0 is what every organization builds from the seed, byte for byte.
    audit = _fedsilo(consortium, "audit", "list", "--limit", "100").stdout
    assert "job.initial_weights" in audit
    assert [r["phase"] for r in status["rounds"]] == ["committed"] * 2
    listed = json.loads(_fedsilo(consortium, "job", "list", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job["job_id"]]

    again = _fedsilo(consortium, "job", "start", job["job_id"], check=False)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stdout


def test_admin_cli_without_credentials_fails_clearly(consortium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "fedsilo", "participants", "list", "--coordinator", "localhost:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "admin certificate" in result.stdout


def test_participant_certificate_cannot_use_the_admin_cli(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    files = consortium.pki.participants["org-1"]
    result = _fedsilo(
        consortium,
        "participants",
        "list",
        "--cert",
        str(files.cert_path),
        "--key",
        str(files.key_path),
        check=False,
    )
    assert result.returncode == 1
    assert "PERMISSION_DENIED" in result.stdout


def _digits_job_with_version_zero(consortium, seed: int) -> str:  # type: ignore[no-untyped-def]
    """A digits job whose organizations built version 0 from ``seed``, paused right after its
    start: a first round that opened meanwhile finishes, and none follows."""
    consortium.start_coordinator()
    for org in consortium.orgs:
        path = consortium.participant_config(org)
        config = yaml.safe_load(path.read_text())
        config["tasks"]["digits"] = "examples.digits.task:task"
        path.write_text(yaml.safe_dump(config))
        consortium.start_participant(org)
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == 3, 60, "three organizations")
    created = _fedsilo(
        consortium, "job", "create", "--task", "digits", "--seed", str(seed), "--start", "--json"
    )
    job_id = str(json.loads(created.stdout)["job_id"])
    _fedsilo(consortium, "job", "pause", job_id)

    def version_zero() -> bool:
        with consortium.admin() as admin:
            try:
                admin.download_model(job_id, 0)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return False
        return True

    wait_for(version_zero, 120, "version 0 built by the organizations")
    return job_id


def test_version_zero_cannot_be_exported_before_the_organizations_built_it(
    consortium, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    created = _fedsilo(consortium, "job", "create", "--task", "digits", "--json")
    job_id = json.loads(created.stdout)["job_id"]
    exported = _fedsilo(
        consortium, "model", "export", job_id, "--out", str(tmp_path / "m.keras"), check=False
    )
    assert exported.returncode == 1
    assert "version 0 is not built yet" in exported.stdout


@pytest.mark.tf
def test_model_export_writes_a_keras_file_with_the_global_weights(
    consortium, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    job_id = _digits_job_with_version_zero(consortium, seed=5)
    out = tmp_path / "model.keras"
    exported = _fedsilo(
        consortium, "model", "export", job_id, "--task", "digits", "--version", "0",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert json.loads(exported.stdout)["version"] == 0

    import keras
    import numpy as np

    from examples.digits.task import task

    model = keras.saving.load_model(out)  # our own file, written by this test
    expected = task.initial_weights(5)
    assert len(model.get_weights()) == len(expected)
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.tf
def test_model_export_takes_the_task_from_the_job_and_writes_a_checked_int8_tflite_model(
    consortium, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    job_id = _digits_job_with_version_zero(consortium, seed=5)
    out = tmp_path / "model.tflite"
    exported = _fedsilo(
        consortium, "model", "export", job_id, "--version", "0",
        "--format", "tflite", "--quantization", "int8",
        "--task-config", '{"partition": 0, "num_partitions": 2}', "--out", str(out), "--json",
    )  # fmt: skip
    result = json.loads(exported.stdout)
    print(result["check"])
    assert (result["version"], result["format"]) == (0, "tflite")
    assert (
        result["check"].startswith("int8 TF Lite model")
        and "same predicted class" in result["check"]
    )
    assert out.read_bytes()[4:8] == b"TFL3"  # the TF Lite flatbuffer identifier


@pytest.mark.tf
def test_model_export_writes_a_tfjs_graph_model_checked_in_tfjs(consortium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from participant.training.tfjs import TFJS_MAX_DIFFERENCE

    configured = os.environ.get("FEDSILO_TFJS_PYTHON")
    repo = Path(__file__).resolve().parents[2]
    if not Path(configured or repo / ".venv-tfjs" / "bin" / "python").exists():
        pytest.skip("the TF.js converter's environment is missing: `make tfjs-venv` (make test)")
    job_id = _digits_job_with_version_zero(consortium, seed=5)
    out = tmp_path / "model-tfjs"
    exported = _fedsilo(
        consortium, "model", "export", job_id, "--version", "0", "--format", "tfjs",
        "--task-config", '{"partition": 0, "num_partitions": 2}', "--out", str(out), "--json",
    )  # fmt: skip
    result = json.loads(exported.stdout)
    print(result["check"])
    assert (result["version"], result["format"]) == (0, "tfjs")
    assert result["check"].startswith("TF.js graph model")
    difference = float(result["check"].split("max |difference| ")[1].split()[0])
    assert difference <= TFJS_MAX_DIFFERENCE
    assert json.loads((out / "model.json").read_text())["format"] == "graph-model"


def test_participant_doctor_passes_against_a_running_coordinator(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    consortium.start_participant("org-2")  # writes org-2.yaml; the daemon also runs
    result = _fedsilo(
        consortium,
        "participant",
        "doctor",
        "--config",
        str(consortium.root / "org-2.yaml"),
        "--json",
    )
    checks = {c["name"]: c["result"] for c in json.loads(result.stdout)}
    assert set(checks.values()) == {"pass"}, checks
    assert {"certificate", "tls handshake", "clock", "membership"} <= set(checks)


def test_membership_and_revocation_commands_reach_the_coordinator(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    consortium.start_participant("org-3")
    wait_for(
        lambda: "org-3" in _fedsilo(consortium, "participants", "list").stdout,
        60,
        "org-3 to register",
    )
    revoked = _fedsilo(consortium, "participants", "revoke", "org-3", "--json")
    assert json.loads(revoked.stdout)["status"] == "revoked"

    cert = str(consortium.pki.participants["org-1"].cert_path)
    first = _fedsilo(consortium, "pki", "revoke", cert, "--reason", "key lost")
    assert "revoked" in first.stdout.lower()

    events = json.loads(_fedsilo(consortium, "audit", "list", "--json").stdout)
    actions = [(e["actor"], e["action"]) for e in events]
    assert ("admin", "participant.revoke") in actions
    assert ("admin", "certificate.revoke") in actions
    table = _fedsilo(consortium, "audit", "list").stdout
    assert "participant.revoke" in table and "certificate.revoke" in table


def test_admin_cli_runs_a_dp_job_until_its_budget_is_spent(consortium) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("dp_accounting", reason="the coordinator's accountant needs the dp extra")
    from coordinator.domain.privacy import epsilon_after
    from fedsilo.privacy import DifferentialPrivacy

    dp = DifferentialPrivacy(clip=0.1, noise_multiplier=1.0, delta=1e-5)
    budget = (epsilon_after(dp, 1) + epsilon_after(dp, 2)) / 2  # one round, not two
    consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    wait_for(
        lambda: len(json.loads(_fedsilo(consortium, "participants", "list", "--json").stdout)) == 3,
        60,
        "three organizations",
    )
    created = _fedsilo(
        consortium,
        "job",
        "create",
        "--task",
        "digits-linear",
        "--rounds",
        "3",
        "--min-participants",
        "3",
        "--dp-clip",
        "0.1",
        "--dp-noise-multiplier",
        "1.0",
        "--dp-epsilon-budget",
        repr(budget),
        "--start",
        "--json",
    )
    job = json.loads(created.stdout)
    assert job["spec"]["protection"] == "secagg"
    assert job["spec"]["dp"] == {
        "clip": 0.1,
        "noise_multiplier": 1.0,
        "delta": 1e-05,
        "epsilon_budget": budget,
    }
    watched = _fedsilo(consortium, "job", "watch", job["job_id"])
    assert "job completed at model version 1" in watched.stdout

    shown = _fedsilo(consortium, "job", "status", job["job_id"]).stdout
    assert f"privacy: epsilon {epsilon_after(dp, 1):.4g} of budget {budget:g}" in shown
    assert "after 1 released rounds" in shown
    assert "stopped: stopped by the privacy budget: after 1 released rounds" in shown
    status = json.loads(_fedsilo(consortium, "job", "status", job["job_id"], "--json").stdout)
    assert status["state"] == "completed"
    # Version 0 is what every organization builds from the seed, byte for byte.
    audit = _fedsilo(consortium, "audit", "list", "--limit", "100").stdout
    assert "job.initial_weights" in audit and status["model_version"] == 1
    assert status["privacy"]["rounds"] == 1
    assert status["privacy"]["epsilon"] == pytest.approx(epsilon_after(dp, 1))
