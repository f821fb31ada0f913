"""Benchmark: packed Paillier (secagg.paillier) against per-value ``phe``, as ratios in one run.

Run from the repository root: ``python -m tests.bench.bench_paillier`` or
``python tests/bench/bench_paillier.py`` (``--help`` for sizes, key size, workers, repeats).
With a 2048-bit key, k = 32 and n_max = 16 (55 values per ciphertext) it prints:

(a) parameters encrypted per second, packed with the short-exponent table (target >= 500x)
    and packed with the classic ``r^n`` randomizer (target >= 45x), each divided by ``phe``'s
    per-value ``encrypt`` rate;
(b) parameters decrypted per second, packed CRT decryption divided by ``phe``'s per-value
    ``decrypt`` rate (target >= 45x);
(c) bytes on the wire per parameter divided by 4 (a float32), from the encoded
    ``PaillierCiphertexts`` (target <= 2.5).

``phe`` is timed per value on a small sample in this process (it has no batch or parallel
mode); the packed figures are the median of ``--repeats`` timings of whole vectors with each
``--workers`` setting (a warm pool: processes started and the fixed-base table built before
timing, as in a long-running participant). The targets are judged on the last (largest)
setting, by default all cores. Every packed result is checked against the input.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import secagg  # noqa: F401
except ModuleNotFoundError:  # a script run from a checkout whose editable install predates it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from secagg.paillier import (
    ClassicRandomizer,
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierWorkers,
    Randomizer,
    ShortExponentRandomizer,
    decrypt_vector,
    encrypt_vector,
    generate_private_key,
)
from secagg.primitives.prg import expand

TARGET_SHORT = 500.0
TARGET_CLASSIC = 45.0
TARGET_DECRYPT = 45.0
TARGET_WIRE = 2.5


def _median_seconds(action: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def _phe_rates(key: PaillierPrivateKey, sample: int) -> tuple[float, float]:
    """Per-value ``phe`` encryptions and decryptions per second (one process, as phe runs)."""
    public, private = key.public_key.to_phe(), key.to_phe()
    values = [int(v) for v in expand(hashlib.sha256(b"phe").digest(), sample, 32)]
    public.encrypt(values[0])  # warm-up
    start = time.perf_counter()
    encrypted = [public.encrypt(value) for value in values]
    encrypt_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decrypted = [private.decrypt(item) for item in encrypted]
    decrypt_seconds = time.perf_counter() - start
    if decrypted != values:
        raise AssertionError("phe round trip failed")
    return sample / encrypt_seconds, sample / decrypt_seconds


def _packed_encrypt_rate(
    key: PaillierPrivateKey,
    layout: PackingLayout,
    vector: np.ndarray,
    randomizer: Randomizer,
    pool: PaillierWorkers,
    repeats: int,
) -> tuple[float, PaillierCiphertexts]:
    public = key.public_key
    # Warm-up: start the worker processes and let each build its table for this key.
    encrypt_vector(public, layout, vector[: layout.slots * 4 * pool.workers], workers=pool)
    results: list[PaillierCiphertexts] = []

    def run() -> None:
        results.append(encrypt_vector(public, layout, vector, randomizer=randomizer, workers=pool))

    seconds = _median_seconds(run, repeats)
    return vector.size / seconds, results[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="packed Paillier benchmark (ratios in one run)")
    parser.add_argument("--params", type=int, default=100_000, help="packed vector length")
    parser.add_argument(
        "--classic-params",
        type=int,
        default=20_000,
        help="vector length for the classic r^n randomizer (about 40x slower per ciphertext)",
    )
    parser.add_argument("--sample", type=int, default=100, help="values timed with phe")
    parser.add_argument("--bits", type=int, default=2048, help="key size")
    parser.add_argument("--modulus-bits", type=int, choices=(32, 64), default=32)
    parser.add_argument("--max-participants", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=sorted({1, os.cpu_count() or 1}),
        help="worker processes to measure (default: 1 and all cores); targets use the last",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    key = generate_private_key(args.bits)
    keygen = time.perf_counter() - start
    public = key.public_key
    layout = PackingLayout(args.modulus_bits, args.max_participants, public.bits)
    print(
        f"packed Paillier benchmark: {public.bits}-bit key (generated in {keygen:.2f} s), "
        f"k={layout.modulus_bits}, n_max={layout.max_participants}: slots of "
        f"{layout.slot_bits} bits, {layout.slots} values per ciphertext; cores={os.cpu_count()}, "
        f"median of {args.repeats}"
    )
    phe_encrypt, phe_decrypt = _phe_rates(key, args.sample)
    print(
        f"phe per value ({args.sample} values, 1 process): {phe_encrypt:.1f} encryptions/s "
        f"({1e3 / phe_encrypt:.2f} ms), {phe_decrypt:.1f} decryptions/s "
        f"({1e3 / phe_decrypt:.2f} ms)"
    )
    vector = expand(hashlib.sha256(b"packed").digest(), args.params, layout.modulus_bits)
    classic_vector = vector[: args.classic_params]
    verdicts: dict[str, bool] = {}
    for workers in args.workers:
        with PaillierWorkers(workers) as pool:
            short_rate, encrypted = _packed_encrypt_rate(
                key, layout, vector, ShortExponentRandomizer(), pool, args.repeats
            )
            classic_rate, classic = _packed_encrypt_rate(
                key, layout, classic_vector, ClassicRandomizer(), pool, args.repeats
            )
            decrypted: list[np.ndarray] = []
            decrypt_seconds = _median_seconds(
                lambda: decrypted.append(decrypt_vector(key, encrypted, workers=pool)),
                args.repeats,
            )
            if not np.array_equal(decrypted[-1], vector.astype(np.uint64)):
                raise AssertionError("packed decryption differs from the input")
            if not np.array_equal(decrypt_vector(key, classic, workers=pool), classic_vector):
                raise AssertionError("classic packed decryption differs from the input")
        decrypt_rate = vector.size / decrypt_seconds
        short_ratio = short_rate / phe_encrypt
        classic_ratio = classic_rate / phe_encrypt
        decrypt_ratio = decrypt_rate / phe_decrypt
        print(f"-- workers={workers}")
        print(
            f"(a) encryption, short exponent ({ShortExponentRandomizer().exponent_bits_for(public)}"
            f"-bit a, 8-bit window table), {vector.size:,} params: {short_rate:,.0f} params/s = "
            f"{short_ratio:,.0f}x phe per value (target >= {TARGET_SHORT:.0f}x)"
        )
        print(
            f"(a) encryption, classic r^n, {classic_vector.size:,} params: {classic_rate:,.0f} "
            f"params/s = {classic_ratio:,.1f}x phe per value (target >= {TARGET_CLASSIC:.0f}x)"
        )
        print(
            f"(b) decryption (CRT), {vector.size:,} params: {decrypt_rate:,.0f} params/s = "
            f"{decrypt_ratio:,.1f}x phe per value (target >= {TARGET_DECRYPT:.0f}x)"
        )
        verdicts = {
            "(a) short exponent": short_ratio >= TARGET_SHORT,
            "(a) classic": classic_ratio >= TARGET_CLASSIC,
            "(b) decryption": decrypt_ratio >= TARGET_DECRYPT,
        }
    wire = len(encrypted.to_bytes())
    per_param = wire / vector.size
    wire_ratio = per_param / 4
    verdicts["(c) wire"] = wire_ratio <= TARGET_WIRE
    print(
        f"(c) wire: {wire:,} bytes for {vector.size:,} params = {per_param:.2f} B/param = "
        f"{wire_ratio:.2f}x float32 (target <= {TARGET_WIRE}); phe per value: "
        f"{public.ciphertext_bytes} B/param = {public.ciphertext_bytes / 4:.0f}x"
    )
    print(
        f"targets (workers={args.workers[-1]}): "
        + ", ".join(f"{name} {_verdict(met)}" for name, met in verdicts.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
