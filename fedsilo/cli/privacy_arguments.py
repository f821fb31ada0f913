"""The differential-privacy options ``job create`` and ``fedsilo simulate`` share."""

from __future__ import annotations

import argparse

from fedsilo.privacy import DifferentialPrivacy

__all__ = [
    "DEFAULT_DP_DELTA",
    "add_privacy_arguments",
    "positive_float",
    "positive_int",
    "privacy_argument_problem",
    "privacy_settings",
]

DEFAULT_DP_DELTA = 1e-5


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """The differential-privacy options; without ``--dp-clip`` a job has none."""
    group = parser.add_argument_group("differential privacy (docs/differential-privacy.md)")
    group.add_argument(
        "--dp-clip", type=positive_float, help="L2 bound C of each organization's update"
    )
    group.add_argument(
        "--dp-noise-multiplier",
        type=positive_float,
        help="noise standard deviation of the sum, in units of C (needs --dp-clip)",
    )
    group.add_argument(
        "--dp-delta",
        type=_probability,
        help=f"delta epsilon is reported for (default with --dp-clip: {DEFAULT_DP_DELTA:g})",
    )
    group.add_argument(
        "--dp-epsilon-budget",
        type=positive_float,
        help="stop the job before a round would spend more epsilon than this",
    )


def privacy_argument_problem(args: argparse.Namespace) -> str | None:
    """The one-line error of inconsistent differential-privacy flags, None when they fit."""
    clip, multiplier = args.dp_clip, args.dp_noise_multiplier
    if clip is None and multiplier is None:
        for flag, value in (
            ("--dp-delta", args.dp_delta),
            ("--dp-epsilon-budget", args.dp_epsilon_budget),
        ):
            if value is not None:
                return f"argument {flag}: needs --dp-clip and --dp-noise-multiplier"
        return None
    if clip is None:
        return "argument --dp-noise-multiplier: needs --dp-clip"
    if multiplier is None:
        return "argument --dp-clip: needs --dp-noise-multiplier"
    return None


def privacy_settings(args: argparse.Namespace) -> DifferentialPrivacy:
    """The settings the options of :func:`add_privacy_arguments` gave (none without a clip)."""
    if args.dp_clip is None:
        return DifferentialPrivacy()
    return DifferentialPrivacy(
        clip=args.dp_clip,
        noise_multiplier=args.dp_noise_multiplier,
        delta=DEFAULT_DP_DELTA if args.dp_delta is None else args.dp_delta,
        epsilon_budget=args.dp_epsilon_budget or 0.0,
    )


def positive_float(text: str) -> float:
    """A flag's positive finite number; argparse names the flag in the one-line error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    """A flag's positive whole number; argparse names the flag in the one-line error
    ("argument --rounds: must be ...")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value
