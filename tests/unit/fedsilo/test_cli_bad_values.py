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
