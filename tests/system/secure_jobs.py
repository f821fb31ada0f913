"""Secure jobs run by real processes: the job, its oracle, and the scans of the coordinator.

Shared by the dropout tests (docs/fault-matrix.md R1-R5, R17) and the key-ceremony crash
tests. Every organization trains the ``digits-linear`` numpy task on its partition with fixed
seeds, so a test can train exactly like each daemon: the oracle is an honest FedAvg over exactly the
recorded contributors, within the quantization bound. Under ``paillier`` protection the
coordinator holds only ciphertexts after version 0: the model is rebuilt by participants
(``participant.main.export_model`` over an organization's configuration and state directory).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.cli.daemons import wait_for
from fedsilo.codec import specs_of
from fedsilo.config import ParticipantConfig, load_config
from fedsilo.faults import ENV_VAR
from fedsilo.protection import flatten, unflatten
from fedsilo.tasks import TrainingSettings, TrainResult, as_float32, load_task
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.main import build_client, export_model, paillier_jobs
from participant.service.paillier_state import PaillierStateStore

__all__ = [
    "BOUND",
    "aggregate_traces",
    "assert_aggregate_hidden",
    "assert_model",
    "assert_no_individual_update",
    "committed_model",
    "expected_model",
    "killed",
    "logged",
    "register",
    "run_secure_job",
    "running",
    "secure_spec",
    "start_job",
    "start_participant",
    "trained",
    "wait_for_end",
]

Consortium = Any  # tests/system/conftest.py's Consortium (conftest modules are not imported)
Weights = list[npt.NDArray[Any]]

SEED = 3
TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=SEED)
ROUND_1 = dataclasses.replace(TRAINING, seed=SEED * 1_000_003 + 1)  # what daemons train in round 1
CLIP = 1.0
LEVELS_BITS = 13
BOUND = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-6
LINEAR_TASK = {"digits-linear": "examples.synthetic.task:task"}
TASK = load_task("digits-linear", LINEAR_TASK)
BASE = as_float32(TASK.initial_weights(SEED))


# -- running a job ----------------------------------------------------------------------------


def secure_spec(
    protection: pb.Protection.ValueType,
    *,
    min_participants: int = 3,
    phase_timeout: float = 3.0,
    round_timeout: float = 60.0,
) -> pb.JobSpec:
    """One round of ``digits-linear`` under secure aggregation (``paillier``: 2048-bit key)."""
    return pb.JobSpec(
        name="secure-dropouts",
        task_name="digits-linear",
        protection=protection,
        num_rounds=1,
        min_participants=min_participants,
        round_timeout_seconds=round_timeout,
        phase_timeout_seconds=phase_timeout,
        max_failed_rounds=0,
        training=pb.TrainingSettings(
            local_epochs=TRAINING.local_epochs,
            batch_size=TRAINING.batch_size,
            learning_rate=TRAINING.learning_rate,
            seed=SEED,
        ),
        secagg=pb.SecAggSettings(clip=CLIP, levels_bits=LEVELS_BITS),
    )


def start_job(consortium: Consortium, spec: pb.JobSpec, *, seeded: bool = False) -> str:
    """Create and start the job once every organization of the consortium registered: with
    ``BASE`` as version 0, or (``seeded``) with version 0 built by the organizations from the
    job's seed."""
    count = len(consortium.orgs)
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == count, 60, f"{count} organizations")
        job = admin.create_job(spec, None if seeded else BASE)
        admin.start_job(job.job_id)
    return str(job.job_id)


def wait_for_end(consortium: Consortium, job_id: str) -> pb.JobStatus:
    with consortium.admin() as admin:
        done = (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED)
        status: pb.JobStatus = wait_for(
            lambda: (s := admin.get_job(job_id)).state in done and s,
            120,
            "the secure job to end",
        )
    return status


def run_secure_job(
    consortium: Consortium,
    crashing: dict[str, str],
    *,
    protection: pb.Protection.ValueType = pb.PROTECTION_SECAGG,
    phase_timeout: float = 3.0,
    round_timeout: float = 60.0,
    restart: bool = False,
    coordinator_fault: str | None = None,
) -> pb.JobStatus:
    """Run one secure round with the given organizations crashing at the given points; with
    ``restart``, each crashed organization is started again (same state directory). With
    ``coordinator_fault``, the coordinator kills itself there and is started again."""
    coordinator = consortium.start_coordinator(
        {ENV_VAR: coordinator_fault} if coordinator_fault else None
    )
    spec = secure_spec(protection, phase_timeout=phase_timeout, round_timeout=round_timeout)
    for org in consortium.orgs:
        start_participant(consortium, org, crashing)
    job_id = start_job(consortium, spec)
    if restart:
        killed(consortium, list(crashing))
        for org in crashing:
            consortium.start_participant(org)
    if coordinator_fault:
        wait_for(lambda: coordinator.popen.poll() is not None, 60, "the coordinator to crash")
        assert coordinator.popen.returncode == -9
        consortium.start_coordinator()  # the same command, without the fault
    return wait_for_end(consortium, job_id)


def start_participant(consortium: Consortium, org: str, crashing: dict[str, str]) -> None:
    point = crashing.get(org)
    consortium.start_participant(org, {ENV_VAR: point} if point else None)


def logged(consortium: Consortium, org: str, text: str) -> bool:
    """Whether the log of ``org``'s current process has ``text``."""
    return text in consortium.processes[org].log_path.read_text()


def register(consortium: Consortium, org: str) -> None:
    """Register ``org`` with the coordinator (its first call) without starting its daemon."""
    config = load_config(ParticipantConfig, consortium.participant_config(org))
    client, channels = build_client(config, threading.Event(), config.rpc_timeout_seconds)
    try:
        client.retrying(lambda: client.get_assignment(0))
    finally:
        channels.close()


def killed(consortium: Consortium, orgs: Sequence[str]) -> None:
    """Wait until each of ``orgs`` killed itself at its crash point."""
    for org in orgs:
        process = consortium.processes[org]
        wait_for(lambda p=process: p.popen.poll() is not None, 60, f"{org} to crash")
        assert process.popen.returncode == -9, process.log_path.read_text()[-2000:]


def running(consortium: Consortium) -> list[str]:
    return [o for o in consortium.orgs if consortium.processes[o].popen.poll() is None]


# -- the oracle -------------------------------------------------------------------------------


def _local_training(orgs: Sequence[str], org: str) -> TrainResult:
    """What ``org``'s daemon trains in round 1 (its partition of ``orgs``' data)."""
    data = TASK.load_data({"partition": orgs.index(org), "num_partitions": len(orgs)})
    return TASK.train(BASE, data, ROUND_1)


def trained(orgs: Sequence[str], org: str) -> Weights:
    """The weights ``org`` trained in round 1: its individual update, which must stay private."""
    return as_float32(_local_training(orgs, org).weights)


def expected_model(orgs: Sequence[str], contributors: Sequence[str]) -> Weights:
    """What an honest FedAvg over exactly ``contributors`` gives (each trains like its daemon)."""
    total = 0
    summed = [np.zeros(w.shape, dtype=np.float64) for w in BASE]
    for org in contributors:
        result = _local_training(orgs, org)
        for acc, new, old in zip(summed, result.weights, BASE, strict=True):
            delta = np.asarray(new, dtype=np.float64) - old
            acc += np.clip(delta, -CLIP, CLIP) * result.num_examples
        total += result.num_examples
    return [(old + acc / total).astype(np.float32) for old, acc in zip(BASE, summed, strict=True)]


def committed_model(consortium: Consortium, status: pb.JobStatus) -> Weights:
    """Version 1 as the admin API serves it (secagg), or as every organization still running
    rebuilds it from the encrypted versions (paillier; the admin API refuses it)."""
    if status.spec.protection != pb.PROTECTION_PAILLIER:
        with consortium.admin() as admin:
            version, weights = admin.download_model(status.job_id, -1)
        assert version == 1
        return weights
    with consortium.admin() as admin, pytest.raises(grpc.RpcError) as refused:
        admin.download_model(status.job_id, 1)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    exported = [exported_model(consortium, org, status.job_id) for org in running(consortium)]
    assert exported
    for other in exported[1:]:  # every key holder decrypts the same bits
        assert all(np.array_equal(a, b) for a, b in zip(exported[0], other, strict=True))
    return exported[0]


def exported_model(consortium: Consortium, org: str, job_id: str) -> Weights:
    """``fedsilo participant export`` of the latest version with ``org``'s configuration."""
    config = load_config(ParticipantConfig, consortium.participant_config(org))
    client, channels = build_client(config, threading.Event(), config.rpc_timeout_seconds)
    paillier = paillier_jobs(config, client)
    captured: list[Weights] = []
    try:
        export = export_model(
            client,
            paillier,
            job_id,
            -1,
            lambda weights, _out: captured.append(weights),
            consortium.root / f"{org}-model.keras",
        )
    finally:
        paillier.close()
        channels.close()
    assert export.decrypted and export.version == 1, export
    (weights,) = captured
    return weights


def assert_model(
    consortium: Consortium, status: pb.JobStatus, contributors: Sequence[str]
) -> Weights:
    """The committed model is the FedAvg of exactly ``contributors``, within the bound."""
    got = committed_model(consortium, status)
    for tensor, want in zip(got, expected_model(consortium.orgs, contributors), strict=True):
        assert np.max(np.abs(tensor.astype(np.float64) - want)) <= BOUND
    return got


# -- privacy scans of the coordinator ---------------------------------------------------------


def coordinator_contents(consortium: Consortium) -> list[bytes]:
    """The coordinator's database, blob store and logs."""
    files = [p for p in (consortium.root / "coordinator").rglob("*") if p.is_file()]
    files += sorted(consortium.root.glob("coordinator-*.log"))
    contents = [p.read_bytes() for p in files]
    assert len(contents) >= 3
    return contents


def _needle(values: npt.NDArray[Any], start: npt.NDArray[Any]) -> bytes:
    """Eight consecutive entries that all differ from ``start``, as raw bytes."""
    # Weights of always-zero pixels never change; look only at values training moved.
    changed = np.flatnonzero(values != start)
    runs = [i for i in changed if np.all(values[i : i + 8] != start[i : i + 8])]
    assert runs
    return values[runs[0] : runs[0] + 8].tobytes()


def assert_no_individual_update(consortium: Consortium) -> None:
    """Privacy scan: the coordinator's database, blob store and log hold no org's update."""
    contents = coordinator_contents(consortium)
    orgs = consortium.orgs
    base = [w.ravel() for w in BASE]
    for org in orgs:
        for start, tensor in zip(base, trained(orgs, org), strict=True):
            needle = _needle(tensor.ravel(), start)
            assert all(needle not in data for data in contents), org
    # Nothing decodes to an update either, nor to an update times its example count (what a
    # plain running sum holds after its first input), within the quantization bound.
    updates = {org: flatten(trained(orgs, org)) for org in orgs}
    examples = {org: _local_training(orgs, org).num_examples for org in orgs}
    for org, update in updates.items():
        for scale in (1.0, float(examples[org])):
            assert not _decodes_to(contents, update * scale, BOUND * scale), org


def _decodes_to(contents: list[bytes], vector: npt.NDArray[Any], tolerance: float) -> bool:
    """Whether a file of exactly that many float32 or float64 values is within ``tolerance``."""
    for data in contents:
        for dtype in (np.float32, np.float64):
            if len(data) == vector.size * np.dtype(dtype).itemsize:
                decoded = np.frombuffer(data, dtype=dtype).astype(np.float64)
                if np.max(np.abs(decoded - vector)) <= tolerance:
                    return True
    return False


def aggregate_traces(consortium: Consortium, status: pb.JobStatus, model: Weights) -> list[str]:
    """The forms of round 1's plaintext aggregate found in the coordinator's files and logs.

    ``model`` is the committed version 1; its bytes, a file that decodes to it and its values
    as text are looked for. Under paillier also what a decryption would give, computed exactly
    from the contributors' training: the aggregate words ``S + C mod R`` (the weighted
    quantized deltas and the weight sum), the weighted sum of the deltas and their mean.
    """
    contents = coordinator_contents(consortium)
    logs = b"\n".join(p.read_bytes() for p in consortium.root.glob("coordinator-*.log"))
    flat, start = flatten(model).astype(np.float32), flatten(BASE).astype(np.float32)
    found = _found(contents, {"the model": flat}, start)
    moved = [str(v) for v in flat[flat != start] if len(str(v)) >= 9][:8]
    assert moved
    if any(text.encode() in logs for text in moved):
        found.append("the model's values as text")
    if _decodes_to(contents, flat.astype(np.float64), 0.0):
        found.append("a file of the model")
    if status.spec.protection == pb.PROTECTION_PAILLIER:
        found += _decrypted_traces(consortium, status, model, contents)
    return found


def _found(
    contents: list[bytes],
    forms: dict[str, npt.NDArray[Any]],
    start: npt.NDArray[Any] | None = None,
) -> list[str]:
    """The names of the forms whose bytes (a run of entries that moved from ``start``, zero by
    default) occur in ``contents``."""
    found = []
    for name, values in forms.items():
        origin = np.zeros_like(values) if start is None else start.astype(values.dtype)
        needle = _needle(values, origin)
        if any(needle in data for data in contents):
            found.append(name)
    return found


def _decrypted_traces(
    consortium: Consortium, status: pb.JobStatus, model: Weights, contents: list[bytes]
) -> list[str]:
    """What a participant's decryption gives, looked for in the coordinator's ``contents``."""
    (round_,) = status.rounds
    state = PaillierStateStore(consortium.root / running(consortium)[0]).load(status.job_id)
    assert state is not None and state.parameters is not None
    spec = state.parameters.quantization()
    words = np.zeros(flatten(BASE).size + 1, dtype=spec.dtype)
    for org in round_.contributors:
        result = _local_training(consortium.orgs, org)
        pairs = zip(result.weights, BASE, strict=True)
        delta = flatten([np.asarray(w, np.float64) - b for w, b in pairs])
        words += spec.quantize(delta, min(result.num_examples, spec.max_weight))
    mean = spec.dequantize(words)
    deltas = unflatten(mean.mean, specs_of(BASE), "float64")
    rebuilt = [
        (np.asarray(b, np.float64) + d).astype(np.float32)
        for b, d in zip(BASE, deltas, strict=True)
    ]
    # Exactly the aggregate the participants decrypted: it rebuilds their model bit for bit.
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt, model, strict=True))
    weighted = mean.mean * mean.total_weight
    forms = {
        "the aggregate words": words,
        "the weighted sum of the deltas": weighted,
        "the weighted sum of the deltas (float32)": weighted.astype(np.float32),
        "the mean delta": mean.mean,
        "the mean delta (float32)": mean.mean.astype(np.float32),
    }
    # The control: each form is found where it is.
    assert _found([b"".join(v.tobytes() for v in forms.values())], forms) == list(forms)
    found = _found(contents, forms)
    if any(data == words.tobytes() for data in contents):
        found.append("a file of the aggregate words")
    if _decodes_to(contents, weighted, BOUND * mean.total_weight):
        found.append("a file of the weighted sum of the deltas")
    if _decodes_to(contents, mean.mean, BOUND):
        found.append("a file of the mean delta")
    return found


def assert_aggregate_hidden(consortium: Consortium, status: pb.JobStatus, model: Weights) -> None:
    """The plaintext aggregate of a paillier round exists only at the participants."""
    assert aggregate_traces(consortium, status, model) == []
