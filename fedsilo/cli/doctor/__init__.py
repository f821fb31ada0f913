"""``fedsilo participant doctor``: a connectivity preflight an organization runs before joining.

The checks run in order and each one says PASS, or what is wrong and how to fix it:

1. configuration       the TLS files exist and parse, the key belongs to the certificate
2. certificate         signed by the configured CA, within its validity, role participant
3. name resolution     the coordinator host resolves
4. tcp connection      host:port accepts a TCP connection (refused and timeout told apart)
5. tls handshake       mutual TLS with the coordinator works; on failure Python's ``ssl`` module
                       repeats the handshake to name the cause (untrusted server certificate,
                       host name not in its SANs, our certificate refused, no TLS at all)
6. coordinator health  grpc.health.v1 Check("") answers SERVING
7. identity            GetServerInfo: who the coordinator thinks we are
8. clock               our clock against the coordinator's (it decides round deadlines)
9. membership          active, pending an admin's approval, or revoked
10. task data          the task (``--task`` or the configured ``tasks``) loads this
                       organization's data with its ``task_config``, with a training split

A check whose prerequisite failed is reported as skipped. Like the daemon's first call,
GetServerInfo registers an organization the coordinator has not seen yet (as pending, or active
when the coordinator runs with ``auto_approve``), so an admin can approve it right after.

Wiring: :func:`register` adds ``doctor`` to the ``participant`` subcommands and :func:`run`
executes it (``command.py``); the checks are in ``checks.py``, their network probes in
``probes.py`` and the result types in ``results.py``. Exit codes: 0 every check passed (warnings
allowed), 1 a check failed, 2 the configuration could not be loaded.

``participant run`` runs checks 1 and 2 before it starts (:func:`startup_refusal`).
"""

from fedsilo.cli.doctor.checks import diagnose, startup_refusal
from fedsilo.cli.doctor.command import register, run
from fedsilo.cli.doctor.results import (
    CERTIFICATE,
    CHECKS,
    CLOCK,
    CONFIGURATION,
    COORDINATOR_HEALTH,
    DEFAULT_TIMEOUT_S,
    EXPIRY_WARNING_DAYS,
    IDENTITY,
    MAX_CLOCK_SKEW_S,
    MEMBERSHIP,
    NAME_RESOLUTION,
    TASK_DATA,
    TCP_CONNECTION,
    TLS_HANDSHAKE,
    CheckResult,
    Outcome,
)

__all__ = [
    "CERTIFICATE",
    "CHECKS",
    "CLOCK",
    "CONFIGURATION",
    "COORDINATOR_HEALTH",
    "DEFAULT_TIMEOUT_S",
    "EXPIRY_WARNING_DAYS",
    "IDENTITY",
    "MAX_CLOCK_SKEW_S",
    "MEMBERSHIP",
    "NAME_RESOLUTION",
    "TASK_DATA",
    "TCP_CONNECTION",
    "TLS_HANDSHAKE",
    "CheckResult",
    "Outcome",
    "diagnose",
    "register",
    "run",
    "startup_refusal",
]
