"""fedsilo: cross-silo federated learning for TensorFlow/Keras with secure aggregation.

This package is the base every role shares (wire code, tensor codec and chunking, TLS and PKI,
configuration, tasks, protection modes, the admin API client); it imports neither the daemons
(``coordinator``, ``participant``) nor ``examples``. The ``fedsilo`` command sits above them in
:mod:`fedsilo.cli`.

Errors raised on purpose derive from ``FedsiloError`` (``fedsilo.errors``). Each also keeps the
built-in class in brackets as a second base, because callers across the daemons catch it::

    FedsiloError
    ├── ConfigError              config: bad configuration file, key or value  [ValueError]
    ├── TlsConfigError           tls: TLS files missing, unreadable, unmatched [ValueError]
    ├── InsecureTransportError   tls: plaintext asked for off loopback         [ValueError]
    ├── CodecError               codec: tensors that do not decode or fit      [ValueError]
    ├── ChunkError               chunking: a stream that does not add up       [ValueError]
    ├── TaskNotFoundError        tasks: the named task is not installed        [LookupError]
    ├── PkiError                 pki: bad org id, subject, CSR, key or CA      [ValueError]
    │   ├── PeerCertificateError   a peer's certificate is not acceptable
    │   │   └── NotAMember             membership: a peer the CA-signed list does not admit
    │   └── MembershipListError    membership: a list that is malformed or not the CA's
    └── UnknownCrashPoint        faults: a crash point that is not declared    [ValueError]
"""

from fedsilo.tls_policy import apply_tls13_only

apply_tls13_only()  # before any fedsilo module imports grpc: see fedsilo/tls_policy.py

__version__ = "0.1.0"
