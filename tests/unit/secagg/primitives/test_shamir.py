"""Shamir sharing over GF(2^521 - 1): recovery from any t, consistency checks, validation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidInput, InvalidShare
from secagg.primitives.shamir import (
    FIELD_PRIME,
    MAX_X,
    SHARE_BYTES,
    LagrangeBasis,
    Share,
    combine_shares,
    split_secret,
)


class CounterRandom:
    def __init__(self, prefix: bytes = b"") -> None:
        self.queue = prefix
        self.counter = 0

    def __call__(self, count: int) -> bytes:
        if self.queue:
            out, self.queue = self.queue[:count], self.queue[count:]
            return out
        self.counter += 1
        return (self.counter.to_bytes(8, "big") * (count // 8 + 1))[:count]


SECRET = bytes(range(32))


def test_the_field_prime_is_m521_and_prime() -> None:
    assert FIELD_PRIME == 2**521 - 1 > 2**256
    for base in (2, 3, 5, 7, 11):  # Fermat witnesses; M521 is a known Mersenne prime
        assert pow(base, FIELD_PRIME - 1, FIELD_PRIME) == 1


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, MAX_X), min_size=n, max_size=n, unique=True))
    shares = split_secret(secret, t, xs, CounterRandom())
    assert [share.x for share in shares] == xs
    subset = data.draw(st.permutations(shares)).__getitem__(slice(data.draw(st.integers(t, n))))
    assert combine_shares(subset, t) == secret


def test_every_subset_of_size_t_agrees() -> None:
    shares = split_secret(SECRET, 3, [1, 2, 3, 4, 5], CounterRandom())
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(subset, 3) == SECRET


def test_fewer_than_t_shares_are_refused() -> None:
    shares = split_secret(SECRET, 3, [1, 2, 3], CounterRandom())
    with pytest.raises(InvalidShare, match="fewer than the threshold"):
        combine_shares(shares[:2], 3)


def test_t_minus_one_shares_fit_every_secret() -> None:
    # Perfect hiding, concretely: for t=2 one share is consistent with any other secret too.
    share = split_secret(SECRET, 2, [5, 6], CounterRandom())[0]
    other = bytes(32)
    slope = (share.y - int.from_bytes(other, "big")) * pow(5, -1, FIELD_PRIME) % FIELD_PRIME
    fake = Share(7, (int.from_bytes(other, "big") + slope * 7) % FIELD_PRIME)
    assert combine_shares([share, fake], 2) == other


def test_an_inconsistent_extra_share_is_detected() -> None:
    shares = list(split_secret(SECRET, 2, [1, 2, 3], CounterRandom()))
    shares[2] = Share(3, (shares[2].y + 1) % FIELD_PRIME)
    with pytest.raises(InvalidShare, match="one polynomial"):
        combine_shares(shares, 2)


def test_a_value_above_256_bits_is_detected() -> None:
    # The constant line f(x) = p - 1: its "secret" p - 1 is far above 2^256.
    with pytest.raises(InvalidShare, match="not a 32-byte secret"):
        combine_shares([Share(1, FIELD_PRIME - 1), Share(2, FIELD_PRIME - 1)], 2)


def test_duplicate_and_out_of_range_shares() -> None:
    with pytest.raises(InvalidShare, match="same x"):
        combine_shares([Share(1, 5), Share(1, 5)], 2)
    with pytest.raises(InvalidShare, match="outside the field"):
        Share(1, FIELD_PRIME)
    with pytest.raises(InvalidShare, match="outside the field"):
        Share(1, -1)
    with pytest.raises(InvalidShare, match="share x"):
        Share(0, 1)
    with pytest.raises(InvalidShare, match="share x"):
        Share(MAX_X + 1, 1)


def test_basis_validation() -> None:
    with pytest.raises(InvalidShare, match="at least 1"):
        LagrangeBasis([1], 0)
    with pytest.raises(InvalidShare, match="share x"):
        LagrangeBasis([0, 1], 2)
    basis = LagrangeBasis([1, 2], 2)
    with pytest.raises(InvalidShare, match="expected 2 share values"):
        basis.combine([1])
    with pytest.raises(InvalidShare, match="outside the field"):
        basis.combine([1, FIELD_PRIME])


def test_share_bytes_round_trip_and_validation() -> None:
    share = split_secret(SECRET, 1, [300], CounterRandom())[0]
    encoded = share.to_bytes()
    assert len(encoded) == SHARE_BYTES == 68
    assert Share.from_bytes(encoded) == share
    assert str(share.y) not in repr(share)
    with pytest.raises(InvalidShare, match="68 bytes"):
        Share.from_bytes(encoded[:-1])
    with pytest.raises(InvalidShare, match="outside the field"):
        Share.from_bytes(b"\x00\x01" + b"\xff" * 66)


def test_split_validation() -> None:
    with pytest.raises(InvalidInput, match="exactly 32 bytes"):
        split_secret(SECRET[:31], 1, [1], CounterRandom())
    with pytest.raises(InvalidInput, match="distinct"):
        split_secret(SECRET, 1, [1, 1], CounterRandom())
    with pytest.raises(InvalidInput, match="1..65535"):
        split_secret(SECRET, 1, [0], CounterRandom())
    with pytest.raises(InvalidInput, match="threshold must be in 1..2"):
        split_secret(SECRET, 3, [1, 2], CounterRandom())


def test_coefficients_are_rejection_sampled() -> None:
    # The first 66-byte draw masks to 2^521 - 1 = p, which is not a field element: redrawn.
    source = CounterRandom(prefix=b"\xff" * 66)
    shares = split_secret(SECRET, 2, [1, 2], source)
    assert source.queue == b"" and source.counter == 1
    assert combine_shares(shares, 2) == SECRET
