"""secagg: pairwise-masked secure aggregation (Bonawitz et al., CCS 2017) as a pure library.

No gRPC, SQL, TensorFlow or ``numpy.random``: functions take bytes, ints, numpy arrays and
dataclasses and return dataclasses; randomness is injected as a ``Callable[[int], bytes]`` such as
``os.urandom``. :mod:`secagg.masking` is the protocol (what applications use);
:mod:`secagg.primitives` holds the building blocks (X25519, HKDF, AES-GCM, AES-CTR PRG, Shamir,
signatures); the few of them other packages need (organization signing and verifying keys,
signing and verifying with them, the injected random source, X25519 key pairs and the canonical
field encoding) are re-exported here,
so nothing outside ``secagg`` imports ``secagg.primitives``. The protocol, encodings and
quantization bound are described in ``docs/secagg.md``. A participant starts every round with
its own ``CohortPolicy`` (the smallest threshold fraction and cohort it accepts) and refuses a
round below it; ``secure_threshold(n)`` is the threshold docs/threat-model.md recommends.
:mod:`secagg.paillier` (imported on its own, not by this package) adds packed Paillier encryption
for the ``paillier`` protection mode (``docs/paillier.md``).

Errors (all raised on purpose derive from ``SecAggError``; messages never hold secrets)::

    SecAggError
    ├── InvalidInput            malformed argument or message, bad config, NaN/Inf
    │   └── BitBudgetExceeded   n_max * w_max * rint(c * 2^q) does not fit in 2^(k-1) - 1
    ├── WrongPhase              server: a submission that does not fit the current phase
    ├── InvalidSignature        a key list or survivor set signature does not verify
    ├── DecryptionFailed        an AES-GCM share ciphertext does not authenticate
    ├── InvalidShare            a Shamir share is malformed or the shares are inconsistent
    ├── ProtocolViolation       the server asked for what an honest server never asks
    └── NotEnoughSurvivors      fewer than t participants remain: the round aborts

A participant that raises anything while answering a server request has aborted the round.
"""

from secagg.errors import (
    BitBudgetExceeded,
    DecryptionFailed,
    InvalidInput,
    InvalidShare,
    InvalidSignature,
    NotEnoughSurvivors,
    ProtocolViolation,
    SecAggError,
    WrongPhase,
)
from secagg.masking import (
    ClientPhase,
    CohortPolicy,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    ParticipantContext,
    QuantizationSpec,
    RevealedShare,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    ServerPhase,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    WeightedMean,
    check_bit_budget,
    default_threshold,
    secure_threshold,
)
from secagg.primitives.agreement import AgreementKeyPair
from secagg.primitives.encoding import (
    decode_fields,
    decode_text,
    decode_uint,
    encode_fields,
    encode_text,
    encode_uint,
)
from secagg.primitives.randomness import RandomSource
from secagg.primitives.signatures import SigningKey, VerifyingKey, sign, verify, verifying_key

__all__ = [
    "AgreementKeyPair",
    "BitBudgetExceeded",
    "ClientPhase",
    "CohortPolicy",
    "ConsistencySignature",
    "DecryptionFailed",
    "EncryptedShare",
    "InvalidInput",
    "InvalidShare",
    "InvalidSignature",
    "MaskedInput",
    "NotEnoughSurvivors",
    "ParticipantContext",
    "ProtocolViolation",
    "QuantizationSpec",
    "RandomSource",
    "RevealedShare",
    "RoundConfig",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "ServerPhase",
    "SignedKeys",
    "SigningKey",
    "UnmaskRequest",
    "UnmaskResponse",
    "VerifyingKey",
    "WeightedMean",
    "WrongPhase",
    "check_bit_budget",
    "decode_fields",
    "decode_text",
    "decode_uint",
    "default_threshold",
    "encode_fields",
    "encode_text",
    "encode_uint",
    "secure_threshold",
    "sign",
    "verify",
    "verifying_key",
]
