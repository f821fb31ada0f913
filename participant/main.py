"""``fedsilo participant run`` (the long-lived daemon of one organization) and ``export``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
from cryptography import x509

from fedsilo.config import ParticipantConfig, load_config
from fedsilo.logs import configure
from fedsilo.tasks import TaskNotFoundError, load_task
from fedsilo.tls import TlsFiles
from participant.domain.policy import AcceptPolicy
from participant.errors import ModelUnavailable, NotSupported, Revoked, SecAggUnavailable
from participant.metrics import ParticipantMetrics, serve_participant_metrics
from participant.service.answers import AnswerStore
from participant.service.calls import ModelCalls
from participant.service.identity import IdentityFiles
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_state import PaillierStateStore
from participant.service.private_files import remove_orphaned_writes
from participant.service.runner import ParticipantDaemon, WorkObserver
from participant.service.secagg_state import SecAggStateStore
from participant.service.state_lock import StateDirLock
from participant.transport.client import Backoff, ChannelSource, CoordinatorClient
from secagg.paillier import PaillierWorkers

__all__ = ["ModelExport", "build_client", "build_daemon", "export", "export_model", "run"]

log = logging.getLogger("participant")

Weights = list[npt.NDArray[Any]]
KerasExporter = Callable[[Weights, Path], None]


def _tls_files(config: ParticipantConfig) -> TlsFiles | None:
    if config.tls.insecure:
        return None
    assert config.tls.ca_cert and config.tls.cert and config.tls.key  # checked by config
    return TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)


def build_client(
    config: ParticipantConfig, stop: threading.Event, give_up_after: float | None = None
) -> tuple[CoordinatorClient, ChannelSource]:
    """The coordinator client of this organization's configuration, and its channels to close.

    The daemon retries transient failures until stopped; a command passes ``give_up_after``.
    """
    channels = ChannelSource(config.coordinator, _tls_files(config))
    client = CoordinatorClient(
        channels,
        config.rpc_timeout_seconds,
        Backoff(config.backoff.initial_seconds, config.backoff.max_seconds),
        stop,
        give_up_after,
    )
    return client, channels


def paillier_jobs(config: ParticipantConfig, client: CoordinatorClient) -> PaillierJobs:
    """This organization's paillier jobs outside the daemon (export): its state directory, and its
    CA and membership list, which the certificates and organizations of every version's
    transcript are checked against."""
    tls = _tls_files(config)
    if tls is None:
        return PaillierJobs(PaillierStateStore(config.state_dir), client)
    identity = IdentityFiles(tls)
    membership = MembershipStore(
        config.state_dir,
        lambda: identity().ca,
        required=config.require_membership_list,
        max_age=config.accept.membership_max_age(),
    )
    return PaillierJobs(
        PaillierStateStore(config.state_dir),
        client,
        identity=identity,
        membership=membership,
        ledger=ContributionLedger(config.state_dir),
    )


def build_daemon(
    config: ParticipantConfig, stop: threading.Event, observer: WorkObserver | None = None
) -> tuple[ParticipantDaemon, ChannelSource]:
    """Wire a daemon from its configuration; returns it and its channels, to close after.

    With TLS, the organization's TLS key and certificate are also its secure-aggregation
    identity (read when first needed and again after renewal); without TLS (loopback tests only)
    the daemon runs plain rounds and refuses secure ones. Paillier work runs on one pool of
    worker processes (all cores, started when first needed) for the daemon's lifetime.
    """
    tls = _tls_files(config)
    client, channels = build_client(config, stop)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = IdentityFiles(tls) if tls is not None else None

    def consortium_ca() -> x509.Certificate:
        # The CA the organization trusts for TLS is the one whose membership lists it accepts.
        if identity is None:
            raise SecAggUnavailable("without TLS there is no consortium CA to check lists with")
        return identity().ca

    daemon = ParticipantDaemon(
        client,
        AnswerStore(config.state_dir),
        SecAggStateStore(config.state_dir),
        identity,
        config.tasks,
        config.task_config,
        stop,
        config.poll_seconds,
        job_terms=JobTermsStore(config.state_dir, AcceptPolicy.from_config(config.accept)),
        ledger=ContributionLedger(config.state_dir),
        membership=MembershipStore(
            config.state_dir,
            consortium_ca,
            required=config.require_membership_list,
            max_age=config.accept.membership_max_age(),
        ),
        paillier_states=PaillierStateStore(config.state_dir),
        paillier_workers=PaillierWorkers(),
        observer=observer,
    )
    return daemon, channels


def run(config_path: Path | None) -> int:
    config = load_config(ParticipantConfig, config_path)
    configure(config.log_level, log_format=config.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with StateDirLock(config.state_dir):
        removed = remove_orphaned_writes(config.state_dir)
        if removed:
            log.info("removed %d unfinished state file write(s) left by an earlier run", removed)
        metrics, metrics_server = None, None
        if config.metrics_listen:
            metrics = ParticipantMetrics()
            metrics_server, port = serve_participant_metrics(metrics, config.metrics_listen)
            log.info(
                "Prometheus metrics on %s", f"{config.metrics_listen.rpartition(':')[0]}:{port}"
            )
        daemon, channels = build_daemon(config, stop, metrics)
        try:
            daemon.run()
        except Revoked as exc:
            log.error("%s; stopping (re-admission needs a new organization id)", exc)
            return 3
        finally:
            channels.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
    return 0


@dataclass(frozen=True)
class ModelExport:
    """What :func:`export_model` wrote: the job, the model version and the file; ``decrypted``
    says whether the version was rebuilt from encrypted versions (a paillier job)."""

    job_id: str
    version: int
    path: Path
    decrypted: bool


def export_model(
    client: ModelCalls,
    paillier: PaillierJobs,
    job_id: str,
    version: int,
    exporter: KerasExporter,
    out: Path,
) -> ModelExport:
    """Write a global model version (-1: the latest) with the task's Keras exporter.

    In a paillier job whose key this participant holds, the version is rebuilt from version 0
    by decrypting versions 1..v (each kept once decrypted); otherwise it is downloaded as is.
    """
    if paillier.is_paillier_job(job_id):
        got, weights = paillier.model(job_id, version)
        decrypted = True
    else:
        got, weights = client.retrying(lambda: client.download_model(job_id, version))
        decrypted = False
        if any(w.dtype.kind != "f" for w in weights):
            raise ModelUnavailable(
                f"model version {got} of job {job_id} is encrypted (a paillier job) and this "
                "participant holds no key for it"
            )
    exporter(weights, out)
    return ModelExport(job_id, got, out, decrypted)


def export(
    config_path: Path | None, job_id: str, task_name: str, out: Path, version: int = -1
) -> ModelExport:
    """``fedsilo participant export``: this organization's view of a job's global model."""
    config = load_config(ParticipantConfig, config_path)
    configure(config.log_level, log_format=config.log_format)
    try:
        task = load_task(task_name, config.tasks or None)
    except TaskNotFoundError as exc:
        raise NotSupported(str(exc)) from None
    exporter = getattr(task, "export_keras", None)
    if exporter is None:
        raise NotSupported(f"task {task_name!r} has no Keras model to export")
    client, channels = build_client(
        config, threading.Event(), give_up_after=config.rpc_timeout_seconds
    )
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paillier = paillier_jobs(config, client)
    try:
        return export_model(client, paillier, job_id, version, exporter, out)
    finally:
        paillier.close()
        channels.close()
