"""``fedsilo coordinator serve`` and ``migrate``: run the coordinator, or upgrade its database."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from coordinator.errors import StorageUnavailable
from coordinator.persistence import migrate as schema_revisions
from coordinator.transport.server import start_coordinator
from fedsilo.config import CoordinatorConfig, load_config
from fedsilo.logs import configure

__all__ = ["migrate", "serve"]

log = logging.getLogger("coordinator")


def serve(config_path: Path | None, port_file: Path | None = None) -> int:
    config = load_config(CoordinatorConfig, config_path)
    configure(config.log_level, log_format=config.log_format)
    try:
        if config.database.auto_migrate:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            before = schema_revisions.upgrade(config.database_url())
            if not before.is_current:
                log.info(
                    "database schema: %s upgraded to revision %s", before.describe(), before.head
                )
        running = start_coordinator(config)
    except StorageUnavailable as exc:
        # One line that says what to do (migrate, upgrade fedsilo, fix the URL), no traceback.
        log.error("cannot serve: %s", exc)
        return 1
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


def migrate(config_path: Path | None, database_url: str | None = None) -> int:
    """Upgrade the coordinator's database (``database_url``, else the configuration's) to head."""
    if database_url:
        url = database_url
    else:
        config = load_config(CoordinatorConfig, config_path)
        url = config.database_url()
        config.data_dir.mkdir(parents=True, exist_ok=True)  # where serve would create it
    try:
        before = schema_revisions.upgrade(url)
    except StorageUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if before.is_current:
        print(f"database schema already at revision {before.head}")
    else:
        print(f"database schema: {before.describe()} upgraded to revision {before.head}")
    return 0
