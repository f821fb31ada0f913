"""``fedsilo coordinator serve``: run the coordinator until SIGTERM, then stop gracefully."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from coordinator.transport.server import start_coordinator
from fedsilo.config import CoordinatorConfig, load_config
from fedsilo.logs import configure

__all__ = ["serve"]

log = logging.getLogger("coordinator")


def serve(config_path: Path | None, port_file: Path | None = None) -> int:
    config = load_config(CoordinatorConfig, config_path)
    configure(config.log_level)
    running = start_coordinator(config)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(running.port))
        os.replace(tmp, port_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    running.stop(grace=config.grace_seconds)
    log.info("coordinator stopped")
    return 0
