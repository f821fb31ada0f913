"""``fedsilo participant run``: the long-lived participant daemon of one organization."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from fedsilo.config import ParticipantConfig, load_config
from fedsilo.logs import configure
from fedsilo.tls import TlsFiles
from participant.service.answers import AnswerStore
from participant.service.runner import ParticipantDaemon
from participant.service.secagg_state import SecAggStateStore
from participant.service.secure_rounds import IdentityFiles
from participant.transport.client import Backoff, ChannelSource, CoordinatorClient

__all__ = ["build_daemon", "run"]

log = logging.getLogger("participant")


def build_daemon(
    config: ParticipantConfig, stop: threading.Event
) -> tuple[ParticipantDaemon, ChannelSource]:
    """Wire a daemon from its configuration; returns it and its channels, to close after.

    With TLS, the organization's TLS key and certificate are also its secure-aggregation
    identity (read when first needed and again after renewal); without TLS (loopback tests only)
    the daemon runs plain rounds and refuses secure ones.
    """
    tls = None
    if not config.tls.insecure:
        assert config.tls.ca_cert and config.tls.cert and config.tls.key  # checked by config
        tls = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
    channels = ChannelSource(config.coordinator, tls)
    client = CoordinatorClient(
        channels,
        config.rpc_timeout_seconds,
        Backoff(config.backoff.initial_seconds, config.backoff.max_seconds),
        stop,
    )
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    daemon = ParticipantDaemon(
        client,
        AnswerStore(config.state_dir),
        SecAggStateStore(config.state_dir),
        IdentityFiles(tls) if tls is not None else None,
        config.tasks,
        config.task_config,
        stop,
        config.poll_seconds,
    )
    return daemon, channels


def run(config_path: Path | None) -> int:
    config = load_config(ParticipantConfig, config_path)
    configure(config.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon, channels = build_daemon(config, stop)
    try:
        daemon.run()
    finally:
        channels.close()
    return 0
