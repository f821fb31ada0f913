"""The command's choices and defaults are the job's own: Protection, JobSpec and the task list."""

from __future__ import annotations

import pytest

from coordinator.domain.jobs import JobSpec, SecAggSettings
from fedsilo.cli.demo import DemoOptions
from fedsilo.cli.main import _parser, main
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings, installed_tasks


def test_job_create_defaults_are_the_job_spec_defaults() -> None:
    args = _parser().parse_args(["job", "create", "--task", "digits"])
    job, secagg, training = JobSpec(name="", task_name=""), SecAggSettings(), TrainingSettings()
    assert args.protection == job.protection.value
    assert args.rounds == job.num_rounds
    assert args.min_participants == job.min_participants
    assert args.round_timeout == job.round_timeout_seconds
    assert args.phase_timeout == job.phase_timeout_seconds
    assert args.paillier_key_bits == job.paillier_key_bits
    assert args.task_config == job.task_config_json
    assert (args.threshold, args.clip, args.levels_bits, args.modulus_bits) == (
        secagg.threshold,
        secagg.clip,
        secagg.levels_bits,
        secagg.modulus_bits,
    )
    assert (args.max_participants, args.max_weight) == (secagg.max_participants, secagg.max_weight)
    assert (args.epochs, args.batch_size, args.learning_rate, args.seed) == (
        training.local_epochs,
        training.batch_size,
        training.learning_rate,
        training.seed,
    )


@pytest.mark.parametrize("command", [["job", "create", "--task", "digits"], ["demo"]])
def test_every_protection_mode_is_offered_and_no_other(command: list[str]) -> None:
    parser = _parser()
    for mode in Protection:
        assert parser.parse_args([*command, "--protection", mode.value]).protection == mode.value
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--protection", "plaintext"])


def test_demo_offers_the_installed_tasks_with_the_demo_defaults() -> None:
    args = _parser().parse_args(["demo"])
    defaults = DemoOptions()
    assert (args.task, args.participants, args.protection, args.seed) == (
        defaults.task,
        defaults.participants,
        defaults.protection,
        defaults.seed,
    )
    for name in installed_tasks():
        assert _parser().parse_args(["demo", "--task", name]).task == name
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo", "--task", "not-installed"])


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--min-participants", "0"], "--min-participants"),
        (["--task", "digitz"], "--task"),
    ],
)
def test_bad_job_create_values_are_one_line_errors_naming_the_flag(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 on loopback has no coordinator: reaching it would fail with UNAVAILABLE (exit 1),
    # so exit 2 with the flag's name shows the value was refused before anything was sent.
    argv = ["job", "create", "--task", "digits", "--coordinator", "127.0.0.1:1", *flags]
    assert main(argv) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert out.startswith("error:") and named in out
    assert "Traceback" not in out
