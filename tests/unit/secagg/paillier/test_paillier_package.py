"""The secagg.paillier surface: its exports, and that importing it stays pure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import secagg.paillier

PUBLIC = {
    "DEFAULT_KEY_BITS",
    "MAX_PARTICIPANTS",
    "MIN_KEY_BITS",
    "ClassicRandomizer",
    "DealtKey",
    "JobKey",
    "PackingLayout",
    "PaillierCiphertexts",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "PaillierWorkers",
    "Randomizer",
    "SealedKey",
    "ShortExponentRandomizer",
    "add_ciphertexts",
    "check_ciphertexts",
    "decrypt_integers",
    "decrypt_vector",
    "default_exponent_bits",
    "encrypt_integers",
    "encrypt_vector",
    "generate_private_key",
    "input_tag",
    "make_job_key",
    "open_private_key",
    "seal_private_key",
    "sign_public_key",
    "tag_matches",
    "tag_weights",
}


def test_public_api_is_exactly_the_documented_names() -> None:
    assert set(secagg.paillier.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(secagg.paillier, name) is not None


def test_importing_paillier_loads_no_grpc_sql_tensorflow_or_numpy_random() -> None:
    code = (
        "import json, sys, secagg.paillier\n"
        "banned = ('grpc', 'sqlalchemy', 'tensorflow', 'keras', 'torch')\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in banned or m.startswith('numpy.random'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(secagg.paillier.__file__).resolve().parents[2],
        timeout=60,
    )
    assert json.loads(result.stdout) == []
