"""Benchmark: secagg masking and unmasking cost as ratios to plaintext numpy work, in one run.

Run from the repository root: ``python -m tests.bench.bench_secagg`` or
``python tests/bench/bench_secagg.py`` (``--help`` for sizes, repeats, threads and k). Prints:

(a) client masking, 1M parameters, 10 peers: ns per parameter per peer (target <= 2 ns), and
    the ratio to plain numpy adds of as many vectors (the same work with precomputed masks);
(b) server unmask-and-sum, 10 participants, 1M parameters, with no dropout (target <= 4x) and
    with 30% dropped after SHARES (target <= 7x), divided by the plaintext sum of the same
    vectors (uint32 adds, the arithmetic floor) and by the plaintext FedAvg running sum that
    fedsilo's ``none`` mode performs (``acc += x.astype(float64) * w``).

Every figure is the median of ``--repeats`` timings taken in this run next to its baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    import secagg  # noqa: F401
except ModuleNotFoundError:  # a script run from a checkout whose editable install predates it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric import ed25519

from secagg import (
    CohortPolicy,
    MaskedInput,
    ParticipantContext,
    RoundConfig,
    SecAggClient,
    SecAggServer,
)
from secagg.masking.client import SharesSent
from secagg.primitives.prg import MaskVector, expand

# The benchmark measures the protocol at every threshold RoundConfig allows.
_ANY_MAJORITY = CohortPolicy(min_threshold_fraction=Fraction(1, 2), min_cohort=2)

TARGET_CLIENT_NS = 2.0
TARGET_NO_DROPOUT = 4.0
TARGET_DROPOUT = 7.0


class _CounterRandom:
    """Deterministic bytes (SHA-256 in counter mode), so every run masks the same vectors."""

    def __init__(self, label: str) -> None:
        self._label = label.encode()
        self._counter = 0

    def __call__(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            out += hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return bytes(out[:count])


def _median(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up: page faults, OpenSSL contexts, thread start
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


class _Cohort:
    """``n`` organizations with Ed25519 org keys and deterministic inputs in Z_R."""

    def __init__(self, n: int, params: int, bits: int, workers: int, round_id: str) -> None:
        self.members = tuple(f"org-{index:02d}" for index in range(n))
        self.config = RoundConfig(
            "bench", round_id, self.members, n // 2 + 1, params, bits, context=bytes(32)
        )
        self.signing = {
            member: ed25519.Ed25519PrivateKey.from_private_bytes(
                hashlib.sha256(member.encode()).digest()
            )
            for member in self.members
        }
        self.verifying = {member: key.public_key() for member, key in self.signing.items()}
        self.workers = workers
        self.inputs = {
            member: expand(hashlib.sha256(member.encode()).digest(), params, bits)
            for member in self.members
        }

    def context(self, member: str) -> ParticipantContext:
        return ParticipantContext(
            participant_id=member,
            signing_key=self.signing[member],
            peer_keys=self.verifying,
            random=_CounterRandom(f"{self.config.round_id}/{member}"),
            workers=self.workers,
        )

    def through_shares(self) -> tuple[SecAggServer, dict[str, SecAggClient]]:
        """Rounds 0 and 1 (not timed)."""
        server = SecAggServer(self.config, verifying_keys=self.verifying, workers=self.workers)
        clients = {
            m: SecAggClient.start(self.config, self.context(m), _ANY_MAJORITY) for m in self.members
        }
        for member, client in clients.items():
            server.receive_keys(member, client.advertise_keys())
        keys = server.close_keys()
        for member, client in clients.items():
            server.receive_shares(member, client.share_keys(keys))
        server.close_shares()
        return server, clients


def bench_client(params: int, peers: int, bits: int, workers: int, repeats: int) -> None:
    """(a) One participant masks its input against ``peers`` peers (Bonawitz round 2)."""
    cohort = _Cohort(peers + 1, params, bits, workers, "client")
    server, clients = cohort.through_shares()
    me = cohort.members[0]
    client = clients[me]
    state = client.state
    assert isinstance(state, SharesSent)
    shares = server.shares_for(me)
    update = cohort.inputs[me]
    context = cohort.context(me)
    # Masking: decrypt the shares, 2 x `peers` X25519 + HKDF, 1 self mask + `peers` pairwise masks.
    masking = _median(lambda: state.mask_input(cohort.config, context, shares, update), repeats)
    # The whole request adds the SHA-256 of the update kept for R17 (never two inputs); after
    # the first answer it is served by the byte-identical recomputation path.
    client.mask_input(shares, update)
    request = _median(lambda: client.mask_input(shares, update), repeats)
    vectors = [cohort.inputs[member] for member in cohort.members]

    def plain_adds() -> MaskVector:
        total = update.copy()
        for vector in vectors:
            np.add(total, vector, out=total)
        return total

    baseline = _median(plain_adds, repeats)
    per = params * peers
    print(
        f"(a) client masking, {params:,} parameters, {peers} peers: "
        f"{masking / per * 1e9:.3f} ns/param/peer (target <= {TARGET_CLIENT_NS}); "
        f"whole mask_input request {request / per * 1e9:.3f} ns/param/peer; "
        f"{masking / baseline:.2f}x the {len(vectors)} plain numpy adds of the same vectors"
    )


def bench_server(
    n: int, params: int, dropped: int, bits: int, workers: int, repeats: int, target: float
) -> None:
    """(b) Add the masked inputs of U3 and unmask (rounds 2 and 4 at the server)."""
    rounds = []
    for repeat in range(repeats + 1):  # the first round is the warm-up
        cohort = _Cohort(n, params, bits, workers, f"server-{dropped}-{repeat}")
        server, clients = cohort.through_shares()
        masked = [
            clients[m].mask_input(server.shares_for(m), cohort.inputs[m])
            for m in cohort.members[dropped:]
        ]
        rounds.append((cohort, server, clients, masked))
    timings = []
    for index, (cohort, server, clients, masked) in enumerate(rounds):
        seconds = _time_inputs(server, masked)
        survivors = server.close_inputs()
        for member in survivors:
            server.receive_consistency(member, clients[member].sign_survivors(survivors))
        request = server.close_consistency()
        for member in survivors:
            server.receive_unmask(member, clients[member].unmask(request))
        start = time.perf_counter()
        total = server.finish()
        seconds += time.perf_counter() - start
        expected = np.zeros(params, dtype=cohort.config.dtype)
        for member in survivors:
            expected += cohort.inputs[member]
        if not np.array_equal(total, expected):
            raise AssertionError("the unmasked sum differs from the plaintext sum")
        if index:
            timings.append(seconds)
    secure = statistics.median(timings)
    plain = [rounds[0][0].inputs[m] for m in rounds[0][0].members[dropped:]]

    def plaintext_sum() -> MaskVector:
        total = plain[0].copy()
        for vector in plain[1:]:
            np.add(total, vector, out=total)
        return total

    floats = [vector.astype(np.float32) for vector in plain]

    def fedavg_sum() -> object:
        total = np.zeros(params, dtype=np.float64)
        for weight, vector in enumerate(floats, start=1):
            total += vector.astype(np.float64) * float(weight)
        return total

    uint_sum = _median(plaintext_sum, repeats)
    fedavg = _median(fedavg_sum, repeats)
    label = "no dropout" if not dropped else f"{dropped} of {n} dropped after SHARES"
    print(
        f"(b) server unmask-and-sum, {n} participants, {label}: {secure * 1e3:.2f} ms = "
        f"{secure / uint_sum:.2f}x the plaintext uint sum ({uint_sum * 1e3:.2f} ms), "
        f"{secure / fedavg:.2f}x the plaintext FedAvg sum ({fedavg * 1e3:.2f} ms); "
        f"target <= {target}x"
    )


def _time_inputs(server: SecAggServer, masked: list[MaskedInput]) -> float:
    start = time.perf_counter()
    for item in masked:
        server.receive_masked_input(item.participant, item)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="secagg benchmark (ratios in one run)")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--bits", type=int, choices=(32, 64), default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=sorted({1, min(4, os.cpu_count() or 1)}),
        help="mask-generation threads to measure (default: 1 and min(4, cores))",
    )
    args = parser.parse_args(argv)
    print(f"secagg benchmark: k={args.bits}, cores={os.cpu_count()}, median of {args.repeats}")
    dropped = round(args.dropout * args.participants)
    for workers in args.workers:
        print(f"-- workers={workers}")
        bench_client(args.params, args.peers, args.bits, workers, args.repeats)
        for count, target in ((0, TARGET_NO_DROPOUT), (dropped, TARGET_DROPOUT)):
            bench_server(
                args.participants, args.params, count, args.bits, workers, args.repeats, target
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
