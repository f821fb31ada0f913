"""The command's choices and defaults are the job's own: Protection, JobSpec and the task list."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.domain.jobs import JobSpec, SecAggSettings
from fedsilo.cli.admin_commands import privacy_line
from fedsilo.cli.demo import DemoOptions
from fedsilo.cli.main import _parser
from fedsilo.cli.privacy_arguments import DEFAULT_DP_DELTA, privacy_settings
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyParameters
from fedsilo.tasks import TrainingSettings, installed_tasks
from fedsilo.v1 import fedsilo_pb2 as pb


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
    assert args.strategy == job.algorithm
    # Unset strategy parameters: the strategy's defaults, filled in by the coordinator.
    assert dataclasses.asdict(job.strategy) == {
        name: getattr(args, name) for name in dataclasses.asdict(StrategyParameters())
    }


def test_job_create_strategy_options_reach_the_job_spec() -> None:
    args = _parser().parse_args(
        ["job", "create", "--task", "digits", "--strategy", "fedprox", "--proximal-mu", "0.1"]
    )
    assert args.strategy == "fedprox" and args.proximal_mu == 0.1
    assert args.server_learning_rate is None and args.tau is None
    args = _parser().parse_args(
        ["job", "create", "--task", "digits", "--strategy", "fedadam"]
        + ["--server-learning-rate", "0.01", "--beta1", "0.8", "--beta2", "0.9", "--tau", "0.01"]
    )
    assert (args.server_learning_rate, args.beta1, args.beta2, args.tau) == (0.01, 0.8, 0.9, 0.01)


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


def test_job_create_dp_options_become_the_job_spec_settings() -> None:
    plain = _parser().parse_args(["job", "create", "--task", "digits"])
    assert privacy_settings(plain) == JobSpec(name="", task_name="").dp == DifferentialPrivacy()
    args = _parser().parse_args(
        ["job", "create", "--task", "digits", "--dp-clip", "0.5", "--dp-noise-multiplier", "1.1"]
        + ["--dp-epsilon-budget", "8"]
    )
    assert privacy_settings(args) == DifferentialPrivacy(0.5, 1.1, DEFAULT_DP_DELTA, 8.0)
    with_delta = _parser().parse_args(
        ["job", "create", "--task", "digits", "--dp-clip", "1", "--dp-noise-multiplier", "2"]
        + ["--dp-delta", "1e-7"]
    )
    assert privacy_settings(with_delta) == DifferentialPrivacy(1.0, 2.0, 1e-7, 0.0)


def test_job_status_shows_epsilon_delta_rounds_and_budget() -> None:
    line = privacy_line(pb.PrivacySpent(epsilon=3.21, delta=1e-5, rounds=4, epsilon_budget=8))
    assert line == (
        "privacy: epsilon 3.21 of budget 8 at delta 1e-05 after 4 released rounds "
        "(organization-level)"
    )
    assert "budget" not in privacy_line(pb.PrivacySpent(epsilon=1.0, delta=1e-5, rounds=1))
