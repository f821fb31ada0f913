"""A bad ``job create`` value is one line naming its flag, before anything else happens."""

from __future__ import annotations

import pytest

from fedsilo.cli.main import main


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--rounds", "0", "must be a positive whole number, got 0"),
        ("--rounds", "three", "is not a whole number"),
        ("--min-participants", "0", "must be a positive whole number"),
        ("--epochs", "-2", "must be a positive whole number"),
        ("--batch-size", "0", "must be a positive whole number"),
        ("--learning-rate", "0", "must be a positive number"),
        ("--learning-rate", "nan", "must be a positive number"),
        ("--task", "digitz", "no task 'digitz' is installed"),
        ("--dp-clip", "0", "must be a positive number, got 0"),
        ("--dp-clip", "inf", "must be a positive number"),
        ("--dp-noise-multiplier", "-1", "must be a positive number"),
        ("--dp-noise-multiplier", "lots", "is not a number"),
        ("--dp-delta", "1", "must be between 0 and 1 (exclusive), got 1"),
        ("--dp-delta", "0", "must be between 0 and 1"),
        ("--dp-epsilon-budget", "nan", "must be a positive number"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["job", "create", "--task", "digits", flag, value]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"argument {flag}: " in line and message in line


@pytest.mark.parametrize(
    ("flags", "flag", "message"),
    [
        (["--dp-clip", "1.0"], "--dp-clip", "needs --dp-noise-multiplier"),
        (["--dp-noise-multiplier", "1.0"], "--dp-noise-multiplier", "needs --dp-clip"),
        (["--dp-delta", "1e-6"], "--dp-delta", "needs --dp-clip and --dp-noise-multiplier"),
        (["--dp-epsilon-budget", "3"], "--dp-epsilon-budget", "needs --dp-clip"),
    ],
)
def test_incomplete_dp_flags_are_one_line_naming_the_flag(
    flags: list[str], flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["job", "create", "--task", "digits", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"argument {flag}: " in line and message in line
