"""``fedsilo health``: a container health probe through the coordinator's gRPC health service.

It asks ``grpc.health.v1.Health/Check`` over mutual TLS and exits 0 only when the answer is
SERVING, so it fits Docker's ``HEALTHCHECK`` and Kubernetes exec probes:

- ``fedsilo health coordinator --config coordinator.yaml`` probes the coordinator from inside its
  own container: it dials ``localhost`` on the configured listen port with the coordinator's own
  certificate (which carries the client-auth usage and, in every deployment here, ``localhost``).
- ``fedsilo health participant --config org.yaml`` is for a participant daemon, which serves no
  port (it only dials out): it checks what the daemon depends on, namely that the coordinator
  answers SERVING to this organization's own certificate and key. Whether the daemon process
  itself runs is the container's state: the daemon is the container's only child of its init.

Exit codes: 0 SERVING, 1 not serving or unreachable, 2 the configuration could not be loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fedsilo.config import ConfigError, CoordinatorConfig, ParticipantConfig, load_config
from fedsilo.health import health_serving
from fedsilo.tls import TlsFiles

__all__ = ["probe_target", "register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``health`` to the top-level ``fedsilo`` subcommands."""
    parser = commands.add_parser(
        "health",
        help="exit 0 if the coordinator's gRPC health service answers SERVING (container probes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", choices=["coordinator", "participant"], help="whose configuration")
    parser.add_argument("--config", type=Path, help="the daemon's YAML configuration file")


def probe_target(role: str, config: Path | None) -> tuple[str, TlsFiles]:
    """The address to probe and the TLS files to probe it with, from a daemon's configuration."""
    if role == "coordinator":
        coordinator = load_config(CoordinatorConfig, config)
        tls_section = coordinator.tls
        # The listen host may be a wildcard such as 0.0.0.0; the probe runs beside the server.
        target = f"localhost:{coordinator.listen.rsplit(':', 1)[1]}"
    else:
        participant = load_config(ParticipantConfig, config)
        tls_section = participant.tls
        target = participant.coordinator
    if tls_section.ca_cert is None or tls_section.cert is None or tls_section.key is None:
        raise ConfigError("tls: the health probe needs ca_cert, cert and key (mutual TLS)")
    return target, TlsFiles(tls_section.ca_cert, tls_section.cert, tls_section.key)


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        target, tls = probe_target(args.role, args.config)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if health_serving(target, tls):
        console.print(f"{target}: SERVING")
        return 0
    console.print(f"{target}: not serving")
    return 1
