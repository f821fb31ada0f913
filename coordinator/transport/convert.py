"""Protobuf conversions only the coordinator needs: jobs, rounds, tasks, submissions, members.

Conversions both sides share (protection, training settings, secure-aggregation parameters)
come from ``fedsilo.convert``. Protobuf types never leave ``transport/``.
"""

from __future__ import annotations

import dataclasses

import fedsilo
from coordinator.domain.jobs import JobSpec, MetricReport, Participant, SecAggSettings
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidRequest
from coordinator.service.engines.paillier_ceremony import CeremonyStep
from coordinator.service.engines.secure_rounds import SecAggStep
from coordinator.service.membership import AuditEvent
from coordinator.service.views import (
    Acknowledgement,
    JobView,
    MessageSubmission,
    RoundOutcomeView,
    UpdateSubmission,
    WorkItem,
    WorkKind,
)
from fedsilo.codec import PayloadHeader, header_from_proto, header_to_proto
from fedsilo.convert import (
    privacy_from_pb,
    privacy_to_pb,
    protection_from_pb,
    protection_to_pb,
    secagg_parameters_to_pb,
    strategy_parameters_from_pb,
    strategy_parameters_to_pb,
    training_settings_from_pb,
    training_settings_to_pb,
)
from fedsilo.tasks import TrainingSettings
from fedsilo.tls import PeerIdentity
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "acknowledgement_to_pb",
    "audit_events_to_pb",
    "job_view_to_pb",
    "message_from_pb",
    "metric_report_from_pb",
    "model_info_to_pb",
    "participant_to_pb",
    "phase_from_pb",
    "server_info_to_pb",
    "spec_from_pb",
    "update_from_pb",
    "work_to_pb",
]

PHASE_TO_PB = {phase: getattr(pb, f"ROUND_PHASE_{phase.name}") for phase in Phase}
PHASE_FROM_PB = {v: k for k, v in PHASE_TO_PB.items()}
JOB_STATE_TO_PB = {
    "created": pb.JOB_STATE_CREATED,
    "running": pb.JOB_STATE_RUNNING,
    "completed": pb.JOB_STATE_COMPLETED,
    "failed": pb.JOB_STATE_FAILED,
    "paused": pb.JOB_STATE_PAUSED,
    "aborted": pb.JOB_STATE_ABORTED,
}
KIND_TO_PB = {
    WorkKind.WAIT: pb.TASK_KIND_WAIT,
    WorkKind.TRAIN: pb.TASK_KIND_TRAIN,
    WorkKind.EVALUATE: pb.TASK_KIND_EVALUATE,
    WorkKind.SECAGG_STEP: pb.TASK_KIND_SECAGG_STEP,
    WorkKind.KEY_CEREMONY: pb.TASK_KIND_KEY_CEREMONY,
    WorkKind.INITIAL_WEIGHTS: pb.TASK_KIND_INITIAL_WEIGHTS,
}


def phase_from_pb(value: int) -> Phase:
    if value not in PHASE_FROM_PB:
        raise InvalidRequest("unknown round phase")
    return PHASE_FROM_PB[value]


# -- participants' requests and their answers ------------------------------------------------------


def update_from_pb(h: pb.UpdateHeader) -> UpdateSubmission:
    """An update's header message (its payload follows in data chunks)."""
    phase = phase_from_pb(h.phase)
    return UpdateSubmission(
        job_id=h.job_id,
        round_id=h.round_id,
        phase=phase,
        base_version=h.base_version,
        num_examples=h.num_examples,
        train_loss=h.train_loss,
        header=header_from_proto(h.payload),
    )


def message_from_pb(request: pb.SubmitMessageRequest) -> MessageSubmission:
    return MessageSubmission(
        job_id=request.job_id,
        round_id=request.round_id,
        phase=phase_from_pb(request.phase),
        body=request.body,
    )


def metric_report_from_pb(request: pb.ReportMetricsRequest, org_id: str) -> MetricReport:
    return MetricReport(
        job_id=request.job_id,
        version=request.model_version,
        org_id=org_id,
        num_examples=request.num_examples,
        loss=request.loss,
        accuracy=request.accuracy,
        created_at=0.0,
    )


def acknowledgement_to_pb(ack: Acknowledgement) -> pb.SubmitUpdateResponse:
    return pb.SubmitUpdateResponse(
        acknowledgement_id=ack.acknowledgement_id, duplicate=ack.duplicate
    )


def work_to_pb(
    item: WorkItem, finished: list[RoundOutcomeView] | None = None
) -> pb.GetTaskResponse:
    """A GetTask answer: the work item and the held rounds that ended."""
    response = pb.GetTaskResponse(kind=KIND_TO_PB[item.kind])
    if item.job is not None:
        spec = item.job.spec
        response.job_id = item.job.job_id
        response.task_name = spec.task_name
        response.model_version = item.model_version
        response.training.CopyFrom(training_settings_to_pb(spec.training))
        response.protection = protection_to_pb(spec.protection)
        response.task_config_json = spec.task_config_json
        response.algorithm = spec.algorithm
        response.strategy.CopyFrom(strategy_parameters_to_pb(spec.strategy))
        if spec.dp.enabled:
            response.dp.CopyFrom(privacy_to_pb(spec.dp))
        response.min_participants = spec.min_participants
        response.initial_weights_from_seed = spec.initial_weights_from_seed
    if item.round is not None:
        response.round_id = item.round.round_id
        response.round_number = item.round.number
        response.phase = PHASE_TO_PB[item.round.phase]
        response.seconds_left = item.seconds_left
    if item.secagg is not None:
        response.secagg.CopyFrom(_step_to_pb(item.secagg))
    if item.ceremony is not None:
        response.ceremony.CopyFrom(_ceremony_to_pb(item.ceremony))
    for outcome in finished or []:
        response.finished_rounds.add(
            round_id=outcome.round_id, phase=PHASE_TO_PB[outcome.phase], reason=outcome.reason
        )
    return response


def _ceremony_to_pb(step: CeremonyStep) -> pb.KeyCeremonyStep:
    message = pb.KeyCeremonyStep(
        action=step.action,
        dealer=step.dealer,
        key_bits=step.key_bits,
        job_keys=_advertised_to_pb(step.job_keys),
        dealt_key=step.dealt_key,
        dealer_certificate_pem=step.dealer_certificate_pem,
        sealed_key=step.sealed_key,
        key_generation=step.generation,
        revoked_holders=[
            pb.RevokedKeyHolder(
                key_generation=generation,
                job_key=pb.AdvertisedKeys(signed_keys=key, certificate_pem=pem),
            )
            for generation, key, pem in step.revoked_holders
        ],
    )
    if step.parameters is not None:
        message.parameters.CopyFrom(secagg_parameters_to_pb(step.parameters))
    return message


def _step_to_pb(step: SecAggStep) -> pb.SecAggStep:
    message = pb.SecAggStep(
        parameters=secagg_parameters_to_pb(step.parameters),
        keys=_advertised_to_pb(step.keys),
        shares=list(step.shares),
        survivors=list(step.survivors),
        unmask_request=step.unmask_request,
    )
    if step.round_inputs is not None:
        message.round_inputs.CopyFrom(
            pb.RoundInputsInfo(
                total_bytes=step.round_inputs.total_bytes, sha256=step.round_inputs.sha256
            )
        )
    return message


def _advertised_to_pb(keys: tuple[tuple[bytes, bytes], ...]) -> list[pb.AdvertisedKeys]:
    return [pb.AdvertisedKeys(signed_keys=k, certificate_pem=c) for k, c in keys]


def model_info_to_pb(job_id: str, version: int, header: PayloadHeader) -> pb.ModelChunk:
    """The first message of a DownloadModel stream."""
    info = pb.ModelInfo(job_id=job_id, version=version, header=header_to_proto(header))
    return pb.ModelChunk(info=info)


# -- jobs ------------------------------------------------------------------------------------------


def job_view_to_pb(view: JobView) -> pb.JobStatus:
    job = view.job
    thresholds = view.thresholds or (0,) * len(view.rounds)
    return pb.JobStatus(
        job_id=job.job_id,
        spec=_spec_to_pb(job.spec),
        state=JOB_STATE_TO_PB[job.state.value],
        model_version=job.model_version,
        rounds=[_round_to_pb(r, t) for r, t in zip(view.rounds, thresholds, strict=True)],
        metrics=[
            pb.VersionMetrics(
                version=m.version,
                reports=m.reports,
                num_examples=m.num_examples,
                loss=m.loss,
                accuracy=m.accuracy,
                organizations=[
                    pb.OrganizationMetrics(
                        org_id=r.org_id,
                        num_examples=r.num_examples,
                        loss=r.loss,
                        accuracy=r.accuracy,
                    )
                    for r in m.organizations
                ],
            )
            for m in view.metrics
        ],
        created_at=job.created_at,
        failure_reason=job.failure_reason or "",
        waiting_reason=view.waiting_reason,
        threshold=view.threshold,
        privacy=None
        if view.privacy is None
        else pb.PrivacySpent(
            epsilon=view.privacy.epsilon,
            delta=view.privacy.delta,
            rounds=view.privacy.rounds,
            epsilon_budget=view.privacy.epsilon_budget,
        ),
    )


def _round_to_pb(round_: Round, threshold: int) -> pb.RoundStatus:
    return pb.RoundStatus(
        round_id=round_.round_id,
        number=round_.number,
        phase=PHASE_TO_PB[round_.phase],
        base_version=round_.base_version,
        cohort=list(round_.cohort),
        contributors=list(round_.contributors),
        started_at=round_.created_at,
        finished_at=round_.finished_at or 0.0,
        abort_reason=round_.abort_reason or "",
        train_loss=round_.train_loss,
        threshold=threshold,
    )


def _spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        name=spec.name,
        task_name=spec.task_name,
        protection=protection_to_pb(spec.protection),
        algorithm=spec.algorithm,
        num_rounds=spec.num_rounds,
        min_participants=spec.min_participants,
        round_timeout_seconds=spec.round_timeout_seconds,
        training=training_settings_to_pb(spec.training),
        task_config_json=spec.task_config_json,
        max_failed_rounds=spec.max_failed_rounds,
        secagg=pb.SecAggSettings(
            threshold=spec.secagg.threshold,
            modulus_bits=spec.secagg.modulus_bits,
            clip=spec.secagg.clip,
            levels_bits=spec.secagg.levels_bits,
            max_participants=spec.secagg.max_participants,
            max_weight=spec.secagg.max_weight,
        ),
        phase_timeout_seconds=spec.phase_timeout_seconds,
        paillier_key_bits=spec.paillier_key_bits,
        strategy=strategy_parameters_to_pb(spec.strategy),
        dp=privacy_to_pb(spec.dp) if spec.dp.enabled else None,
        initial_weights_from_seed=spec.initial_weights_from_seed,
    )


def spec_from_pb(message: pb.JobSpec) -> JobSpec:
    """Decode a job spec; unset numeric fields take the documented defaults."""
    defaults = JobSpec(name="", task_name="")
    protection = protection_from_pb(message.protection, unspecified=defaults.protection)
    if protection is None:
        raise InvalidRequest("unknown protection mode")
    return JobSpec(
        name=message.name,
        task_name=message.task_name,
        protection=protection,
        algorithm=message.algorithm or defaults.algorithm,
        num_rounds=message.num_rounds or defaults.num_rounds,
        min_participants=message.min_participants or defaults.min_participants,
        round_timeout_seconds=message.round_timeout_seconds or defaults.round_timeout_seconds,
        max_failed_rounds=(
            message.max_failed_rounds
            if message.HasField("max_failed_rounds")
            else defaults.max_failed_rounds
        ),
        training=_with_defaults(training_settings_from_pb(message.training), TrainingSettings()),
        task_config_json=message.task_config_json or "{}",
        secagg=_secagg_from_pb(message.secagg),
        phase_timeout_seconds=message.phase_timeout_seconds or defaults.phase_timeout_seconds,
        paillier_key_bits=message.paillier_key_bits or defaults.paillier_key_bits,
        strategy=strategy_parameters_from_pb(message.strategy),
        dp=privacy_from_pb(message.dp),
        initial_weights_from_seed=message.initial_weights_from_seed,
    )


def _with_defaults(settings: TrainingSettings, defaults: TrainingSettings) -> TrainingSettings:
    """Unset (zero) hyper-parameters take the defaults; a seed of 0 is a seed."""
    return dataclasses.replace(
        settings,
        local_epochs=settings.local_epochs or defaults.local_epochs,
        batch_size=settings.batch_size or defaults.batch_size,
        learning_rate=settings.learning_rate or defaults.learning_rate,
    )


def _secagg_from_pb(message: pb.SecAggSettings) -> SecAggSettings:
    d = SecAggSettings()
    return SecAggSettings(
        threshold=message.threshold or d.threshold,
        modulus_bits=message.modulus_bits or d.modulus_bits,
        clip=message.clip or d.clip,
        levels_bits=message.levels_bits or d.levels_bits,
        max_participants=message.max_participants or d.max_participants,
        max_weight=message.max_weight or d.max_weight,
    )


# -- membership and audit --------------------------------------------------------------------------


def server_info_to_pb(identity: PeerIdentity, membership: str, now: float) -> pb.ServerInfo:
    return pb.ServerInfo(
        server_time=now,
        version=fedsilo.__version__,
        org_id=identity.org_id,
        role=identity.role.value,
        membership=membership,
    )


def participant_to_pb(p: Participant) -> pb.ParticipantInfo:
    return pb.ParticipantInfo(
        org_id=p.org_id,
        status=p.status.value,
        first_seen=p.first_seen,
        last_seen=p.last_seen,
        certificate_sha256=p.certificate_sha256,
    )


def audit_events_to_pb(events: list[AuditEvent]) -> pb.ListAuditEventsResponse:
    return pb.ListAuditEventsResponse(
        events=[
            pb.AuditEvent(
                id=e.event_id,
                at=e.at,
                actor=e.actor,
                action=e.action,
                outcome=e.outcome,
                detail=e.detail,
            )
            for e in events
        ]
    )
