"""``fedsilo participant doctor`` on the command line: its options, exit code and printout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedsilo.cli.doctor.checks import diagnose
from fedsilo.cli.doctor.results import (
    CHECKS,
    CONFIGURATION,
    DEFAULT_TIMEOUT_S,
    EXIT_BAD_CONFIG,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CheckResult,
    Outcome,
    skipped_result,
)
from fedsilo.config import ConfigError, ParticipantConfig, load_config

__all__ = ["register", "run"]


def register(participant_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` to the ``participant`` subcommands (dispatch: ``args.action == "doctor"``)."""
    parser = participant_subparsers.add_parser(
        "doctor",
        help="check that this organization can reach and join the coordinator",
        description=(
            "Preflight before joining: TLS files, certificate, DNS, TCP, mutual TLS, the "
            "coordinator's health, how it sees this organization, clock skew, membership, and "
            "that this organization's data loads. "
            "Each problem is printed with its fix. Exit 0: all passed (warnings allowed); "
            "1: a check failed; 2: the configuration cannot be loaded."
        ),
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the participant's YAML configuration"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="seconds allowed for each network step (default %(default)s)",
    )
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME",
        help="load this task's data with the configured task_config (repeatable; default: the "
        "tasks listed under tasks:)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def run(args: argparse.Namespace, console: Console) -> int:
    """Execute ``participant doctor``: print the diagnosis, return the exit code."""
    try:
        config = load_config(ParticipantConfig, args.config)
    except ConfigError as exc:
        results = [
            CheckResult(
                CONFIGURATION,
                False,
                str(exc),
                "fix the key named above in the configuration file (or its FEDSILO_* variable)",
            ),
            *(skipped_result(name, CONFIGURATION) for name in CHECKS[1:]),
        ]
        _print(console, results, as_json=args.json)
        return EXIT_BAD_CONFIG
    results = diagnose(config, timeout=args.timeout, tasks=args.task)
    _print(console, results, as_json=args.json)
    return EXIT_OK if all(result.ok for result in results) else EXIT_CHECK_FAILED


_STYLES = {
    Outcome.PASS: "bold green",
    Outcome.WARN: "bold yellow",
    Outcome.FAIL: "bold red",
    Outcome.SKIPPED: "dim",
}


def _print(console: Console, results: list[CheckResult], *, as_json: bool) -> None:
    if as_json:
        # console.out: no markup, no wrapping, no highlighting -- the bytes a script parses.
        console.out(json.dumps([r.as_dict() for r in results], indent=2), highlight=False)
        return
    table = Table(title="fedsilo participant doctor")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail / fix")
    for result in results:
        # Text, not markup strings: details quote paths, [v6] addresses and server messages.
        detail = Text(result.detail)
        if result.fix:
            detail.append("\nfix: ", style="bold")
            detail.append(result.fix)
        outcome = result.outcome
        table.add_row(result.name, Text(outcome.value.upper(), style=_STYLES[outcome]), detail)
    console.print(table)
    failed = [r.name for r in results if not r.ok and not r.skipped]
    warned = [r.name for r in results if r.warning]
    if failed:
        console.print(Text(f"failed: {', '.join(failed)}", style="bold red"))
    elif warned:
        console.print(Text(f"all checks passed, with warnings: {', '.join(warned)}"))
    else:
        console.print(Text("all checks passed", style="bold green"))
