"""Low-level primitives (the ``hazmat`` layer): agreement, HKDF, AEAD, PRG, Shamir, signatures.

Protocol code in :mod:`secagg.masking` is built from these; applications use the masking API.
"""
