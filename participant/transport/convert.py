"""Protobuf conversions of the messages only the participant reads or writes.

Conversions both sides share (protection modes, training settings, round parameters) live in
:mod:`fedsilo.convert`; protobuf types never leave ``participant/transport/``. A message that
does not convert raises :class:`participant.errors.UntrustedMessage`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from fedsilo.convert import (
    privacy_from_pb,
    protection_from_pb,
    secagg_parameters_from_pb,
    strategy_parameters_from_pb,
    training_settings_from_pb,
)
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyChoice
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    AssignmentKind,
    EndedRound,
    KeyCeremonyStepData,
    RevokedKeyHolder,
    SecAggStepData,
    SubmissionReceipt,
    TaskReply,
)
from participant.errors import UntrustedMessage

__all__ = ["phase_to_pb", "receipt_from_pb", "task_reply_from_pb"]

_KINDS = {
    pb.TASK_KIND_WAIT: AssignmentKind.WAIT,
    pb.TASK_KIND_TRAIN: AssignmentKind.TRAIN,
    pb.TASK_KIND_EVALUATE: AssignmentKind.EVALUATE,
    pb.TASK_KIND_SECAGG_STEP: AssignmentKind.SECAGG_STEP,
    pb.TASK_KIND_KEY_CEREMONY: AssignmentKind.KEY_CEREMONY,
    pb.TASK_KIND_INITIAL_WEIGHTS: AssignmentKind.INITIAL_WEIGHTS,
}
_PHASES = {
    value: name.removeprefix("ROUND_PHASE_").lower() for name, value in pb.RoundPhase.items()
}
_PHASE_VALUES = {v: k for k, v in _PHASES.items()}


def phase_to_pb(phase: str) -> pb.RoundPhase.ValueType:
    """The wire value of an assignment's phase name."""
    return _PHASE_VALUES[phase]


def receipt_from_pb(response: pb.SubmitUpdateResponse) -> SubmissionReceipt:
    """The acknowledgement of an update, a phase message or a ceremony message."""
    return SubmissionReceipt(response.acknowledgement_id, response.duplicate)


def task_reply_from_pb(response: pb.GetTaskResponse) -> TaskReply:
    """The next assignment and the rounds the coordinator reports as ended."""
    finished = tuple(
        EndedRound(outcome.round_id, outcome.phase == pb.ROUND_PHASE_COMMITTED, outcome.reason)
        for outcome in response.finished_rounds
    )
    return TaskReply(_assignment_from_pb(response), finished, response.membership_list)


def _assignment_from_pb(response: pb.GetTaskResponse) -> Assignment:
    kind = _KINDS.get(response.kind, AssignmentKind.WAIT)
    if kind is AssignmentKind.WAIT:
        return Assignment(AssignmentKind.WAIT)
    try:
        task_config = json.loads(response.task_config_json or "{}")
    except ValueError:
        task_config = None
    if not isinstance(task_config, dict):
        raise UntrustedMessage("coordinator sent a task configuration that is not a JSON object")
    protection = protection_from_pb(response.protection, unspecified=Protection.NONE)
    if protection is None:
        raise UntrustedMessage("coordinator sent an unknown protection mode")
    secagg = None
    if kind is AssignmentKind.SECAGG_STEP or (
        kind is AssignmentKind.TRAIN and protection in (Protection.SECAGG, Protection.PAILLIER)
    ):
        if not response.HasField("secagg") or not response.secagg.HasField("parameters"):
            raise UntrustedMessage(
                "coordinator sent a secure-aggregation task without its parameters"
            )
        secagg = _secagg_step_from_pb(response.secagg)
    privacy = privacy_from_pb(response.dp)
    if privacy.problems():
        raise UntrustedMessage(
            "coordinator sent invalid differential-privacy settings: "
            + "; ".join(privacy.problems())
        )
    if privacy.enabled and kind is AssignmentKind.TRAIN and response.min_participants < 1:
        # The noise share of a plain round is sized by the job's minimum cohort.
        raise UntrustedMessage("coordinator sent a differentially private round without its cohort")
    ceremony = None
    if kind is AssignmentKind.KEY_CEREMONY:
        if not response.HasField("ceremony"):
            raise UntrustedMessage("coordinator sent a key-ceremony task without its step")
        ceremony = _ceremony_step_from_pb(response.ceremony)
    return Assignment(
        kind=kind,
        job_id=response.job_id,
        task_name=response.task_name,
        round_id=response.round_id,
        round_number=response.round_number,
        phase=_PHASES.get(response.phase, "unspecified"),
        model_version=response.model_version,
        training=training_settings_from_pb(response.training),
        task_config=task_config,
        seconds_left=response.seconds_left,
        protection=protection,
        secagg=secagg,
        ceremony=ceremony,
        strategy=StrategyChoice(
            response.algorithm or "fedavg", strategy_parameters_from_pb(response.strategy)
        ),
        min_participants=response.min_participants,
        privacy=privacy,
        initial_weights_from_seed=response.initial_weights_from_seed,
    )


def _advertised_keys_from_pb(keys: Iterable[pb.AdvertisedKeys]) -> tuple[AdvertisedKeys, ...]:
    return tuple(AdvertisedKeys(k.signed_keys, k.certificate_pem) for k in keys)


def _secagg_step_from_pb(step: pb.SecAggStep) -> SecAggStepData:
    return SecAggStepData(
        parameters=secagg_parameters_from_pb(step.parameters),
        keys=_advertised_keys_from_pb(step.keys),
        shares=tuple(step.shares),
        survivors=tuple(step.survivors),
        unmask_request=step.unmask_request,
        round_inputs=RoundInputsInfo(step.round_inputs.total_bytes, step.round_inputs.sha256)
        if step.HasField("round_inputs")
        else None,
    )


def _ceremony_step_from_pb(step: pb.KeyCeremonyStep) -> KeyCeremonyStepData:
    return KeyCeremonyStepData(
        action=step.action,
        dealer=step.dealer,
        key_bits=step.key_bits,
        job_keys=_advertised_keys_from_pb(step.job_keys),
        dealt_key=step.dealt_key,
        dealer_certificate_pem=step.dealer_certificate_pem,
        sealed_key=step.sealed_key,
        parameters=secagg_parameters_from_pb(step.parameters)
        if step.HasField("parameters")
        else None,
        generation=step.key_generation,
        revoked_holders=tuple(
            RevokedKeyHolder(
                holder.key_generation,
                AdvertisedKeys(holder.job_key.signed_keys, holder.job_key.certificate_pem),
            )
            for holder in step.revoked_holders
        ),
    )
