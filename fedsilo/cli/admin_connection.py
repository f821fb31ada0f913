"""Command-line options for reaching the admin API: one definition for every admin command.

The environment variables carry an ``ADMIN`` prefix so they never collide with a daemon's own
``FEDSILO_*`` configuration overrides (``FEDSILO_TLS_CERT`` is a participant's ``tls.cert``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedsilo.errors import FedsiloError
from fedsilo.tls import TlsFiles

__all__ = ["ENV", "AdminConnectionError", "add_admin_connection", "admin_tls"]

ENV = {
    "coordinator": "FEDSILO_ADMIN_COORDINATOR",
    "ca_cert": "FEDSILO_ADMIN_CA_CERT",
    "cert": "FEDSILO_ADMIN_CERT",
    "key": "FEDSILO_ADMIN_KEY",
}


class AdminConnectionError(FedsiloError, ValueError):
    """The admin certificate files were not given."""


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def add_admin_connection(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    group = parser.add_argument_group("coordinator connection (admin certificate)")
    group.add_argument(
        "--coordinator",
        default=os.environ.get(ENV["coordinator"], "localhost:50051"),
        metavar="HOST:PORT",
        help=f"coordinator address (env {ENV['coordinator']})",
    )
    group.add_argument(
        "--ca-cert",
        type=Path,
        default=_env_path(ENV["ca_cert"]),
        metavar="FILE",
        help=f"consortium CA certificate (env {ENV['ca_cert']})",
    )
    group.add_argument(
        "--cert",
        type=Path,
        default=_env_path(ENV["cert"]),
        metavar="FILE",
        help=f"your admin certificate (env {ENV['cert']})",
    )
    group.add_argument(
        "--key",
        type=Path,
        default=_env_path(ENV["key"]),
        metavar="FILE",
        help=f"your admin private key (env {ENV['key']})",
    )
    group.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds")
    if json_flag:
        group.add_argument("--json", action="store_true", help="machine-readable output")


def admin_tls(args: argparse.Namespace) -> TlsFiles:
    if args.ca_cert and args.cert and args.key:
        return TlsFiles(args.ca_cert, args.cert, args.key)
    raise AdminConnectionError(
        f"admin commands need --ca-cert, --cert and --key (or {ENV['ca_cert']}, {ENV['cert']}, "
        f"{ENV['key']}): the admin API requires an admin certificate"
    )
