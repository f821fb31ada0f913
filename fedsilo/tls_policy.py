"""Process-wide TLS policy: TLS 1.3 only, set before gRPC's C core reads its configuration.

gRPC's Python API cannot set a minimum TLS version. What it does read, once, when ``grpc`` is
first imported, is ``GRPC_SSL_CIPHER_SUITES``: the TLS 1.2 cipher list (TLS 1.3's suites are
fixed by BoringSSL). Restricting that list to a pre-shared-key suite, for which fedsilo never
configures a key, leaves TLS 1.2 nothing to negotiate, so every listener and every client of a
fedsilo process speaks TLS 1.3 only. The packages ``fedsilo``, ``coordinator`` and
``participant`` apply this in their ``__init__``, which runs before any of their modules imports
``grpc``. An operator who sets ``GRPC_SSL_CIPHER_SUITES`` explicitly keeps their own choice.
"""

from __future__ import annotations

import os
import sys

__all__ = ["TLS13_ONLY_CIPHER_SUITES", "apply_tls13_only", "tls13_only_in_effect"]

TLS13_ONLY_CIPHER_SUITES = "ECDHE-PSK-CHACHA20-POLY1305"

_applied_before_grpc = False


def apply_tls13_only() -> None:
    global _applied_before_grpc
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", TLS13_ONLY_CIPHER_SUITES)
        _applied_before_grpc = True


def tls13_only_in_effect() -> bool:
    """Whether this process's gRPC core was initialised with the TLS 1.3-only policy."""
    return _applied_before_grpc and os.environ.get("GRPC_SSL_CIPHER_SUITES") == (
        TLS13_ONLY_CIPHER_SUITES
    )
