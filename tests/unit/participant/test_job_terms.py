"""The organization's accept: bounds and the terms each job is pinned to when first seen."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from secure_round_harness import ORGS, PHASES, TRAINING, Coordinator, make_participant, parameters

from fedsilo.config import ConfigError, ParticipantConfig, load_config
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection
from participant.domain.assignments import Assignment, AssignmentKind, StepOutcome
from participant.domain.policy import AcceptPolicy
from participant.errors import UntrustedMessage
from participant.service.job_terms import JobTermsStore
from secagg import CohortPolicy


def _train(**training: object) -> Assignment:
    return Assignment(
        AssignmentKind.TRAIN,
        job_id="job-1",
        task_name="digits-linear",
        round_id="r-1",
        round_number=1,
        phase="inputs",
        training=replace(TRAINING, **training),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


def test_settings_outside_the_bounds_are_named() -> None:
    policy = AcceptPolicy(learning_rate=(1e-4, 0.1), local_epochs=(1, 5), batch_size=(8, 64))
    assert policy.settings_problems(TRAINING.__class__(5, 64, 0.1, 0)) == []
    problems = policy.settings_problems(TRAINING.__class__(6, 4, 1.0, 0))
    assert problems == [
        "learning_rate=1.0 is outside this organization's [0.0001, 0.1]",
        "local_epochs=6 is outside this organization's [1, 5]",
        "batch_size=4 is outside this organization's [8, 64]",
    ]
    assert policy.settings_problems(TRAINING.__class__(1, 8, float("nan"), 0)) != []


def test_the_first_terms_are_pinned_and_survive_a_restart(tmp_path: Path) -> None:
    JobTermsStore(tmp_path, AcceptPolicy()).check(_train())
    restarted = JobTermsStore(tmp_path, AcceptPolicy())
    restarted.check(_train())  # the same terms again
    with pytest.raises(UntrustedMessage, match=r"learning_rate is 1e-05, .* accepted with 0\.5"):
        restarted.check(_train(learning_rate=1e-5))
    with pytest.raises(UntrustedMessage, match="seed is 8"):
        restarted.check(_train(seed=8))
    with pytest.raises(UntrustedMessage, match="protection is 'secagg'"):
        restarted.check(replace(_train(), protection=Protection.SECAGG))
    assert oct((tmp_path / "jobs" / "job-1.json").stat().st_mode & 0o777) == "0o600"


def test_terms_outside_the_bounds_are_refused_and_not_pinned(tmp_path: Path) -> None:
    store = JobTermsStore(tmp_path, AcceptPolicy(local_epochs=(1, 3)))
    with pytest.raises(UntrustedMessage, match=r"local_epochs=4 is outside .* \[1, 3\]"):
        store.check(_train(local_epochs=4))
    assert store.load("job-1") is None


def test_secure_parameters_are_pinned_at_the_first_secure_round(tmp_path: Path) -> None:
    store = JobTermsStore(tmp_path, AcceptPolicy())
    store.check(_train())
    store.check_secure("job-1", parameters())
    store.check_secure("job-1", parameters())
    with pytest.raises(UntrustedMessage, match="secagg clip is 0.5, the job was accepted with 1.0"):
        JobTermsStore(tmp_path, AcceptPolicy()).check_secure("job-1", parameters(clip=0.5))


_BASE = "coordinator: localhost:1\nstate_dir: state\ntls:\n  insecure: true\n"


def test_the_accept_section_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "participant.yaml"
    path.write_text(
        _BASE + "accept:\n  min_threshold_fraction: 3/4\n  min_cohort: 4\n  local_epochs: [1, 10]\n"
    )
    config = load_config(ParticipantConfig, path, {})
    policy = AcceptPolicy.from_config(config.accept)
    assert policy.cohort == CohortPolicy(Fraction(3, 4), 4)
    assert policy.local_epochs == (1, 10)
    assert policy.batch_size == (1, 4096)
    assert policy.min_paillier_key_bits == 2048
    from_env = load_config(
        ParticipantConfig,
        path,
        {
            "FEDSILO_ACCEPT_BATCH_SIZE": "[4, 64]",
            "FEDSILO_ACCEPT_MIN_THRESHOLD_FRACTION": "0.7",
            "FEDSILO_ACCEPT_MIN_PAILLIER_KEY_BITS": "3072",
        },
    )
    assert AcceptPolicy.from_config(from_env.accept).min_paillier_key_bits == 3072
    assert from_env.accept.batch_size == (4, 64)
    assert from_env.accept.threshold_fraction() == Fraction(7, 10)
    path.write_text(_BASE + "accept:\n  min_cohort: 1\n")
    with pytest.raises(ConfigError, match="accept.min_cohort: must be at least 2"):
        load_config(ParticipantConfig, path, {})
    path.write_text(_BASE + "accept:\n  min_paillier_key_bits: 1024\n")
    with pytest.raises(ConfigError, match="accept.min_paillier_key_bits: must be at least 2048"):
        load_config(ParticipantConfig, path, {})
    path.write_text(_BASE + "accept:\n  min_threshold_fraction: 1/2\n")
    with pytest.raises(ConfigError, match="above 1/2"):
        load_config(ParticipantConfig, path, {})


def test_a_round_whose_learning_rate_changed_is_refused_at_keys(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    first = Coordinator(pki)
    for phase in PHASES:
        first.run_phase(phase, participants)
    changed = Coordinator(
        pki, round_number=2, model_version=1, training=replace(TRAINING, learning_rate=1e-6)
    )
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participants[0].step(changed.keys_task()) is StepOutcome.REFUSED
    assert "learning_rate is 1e-06, the job was accepted with 0.5" in caplog.text


def test_a_threshold_below_the_policy_is_refused_at_keys(pki: DemoPki, tmp_path: Path) -> None:
    strict = AcceptPolicy(cohort=CohortPolicy(Fraction(1, 1), 3))
    participant = make_participant(ORGS[0], tmp_path / ORGS[0], pki, accept=strict)
    assert participant.step(Coordinator(pki).keys_task()) is StepOutcome.REFUSED
    assert participant.transport.sent == []


def test_the_jobs_differential_privacy_is_pinned(tmp_path: Path) -> None:
    privacy = DifferentialPrivacy(clip=0.5, noise_multiplier=1.0, delta=1e-5)
    store = JobTermsStore(tmp_path, AcceptPolicy())
    store.check(replace(_train(), privacy=privacy))
    restarted = JobTermsStore(tmp_path, AcceptPolicy())
    restarted.check(replace(_train(), privacy=privacy))
    # Less noise for everyone in a later round: every organization refuses it.
    with pytest.raises(UntrustedMessage, match=r"dp_noise_multiplier is 0\.5, .* with 1\.0"):
        restarted.check(replace(_train(), privacy=replace(privacy, noise_multiplier=0.5)))
    with pytest.raises(UntrustedMessage, match=r"dp_clip is 0\.0"):
        restarted.check(_train())


def test_terms_recorded_before_the_seed_flag_was_pinned_take_it_from_the_next_round(
    tmp_path: Path,
) -> None:
    # A job accepted by the previous release (no flag in its file) keeps running after an
    # upgrade; the flag of its next round is pinned from then on.
    JobTermsStore(tmp_path, AcceptPolicy()).check(_train())
    path = tmp_path / "jobs" / "job-1.json"
    recorded = json.loads(path.read_text())
    del recorded["initial_weights_from_seed"]
    path.write_text(json.dumps(recorded))

    upgraded = JobTermsStore(tmp_path, AcceptPolicy())
    assert upgraded.seeded("job-1") is None
    upgraded.check(replace(_train(), initial_weights_from_seed=True))
    assert upgraded.seeded("job-1") == ("digits-linear", TRAINING.seed)
    with pytest.raises(UntrustedMessage, match="initial_weights_from_seed is False"):
        upgraded.check(_train())
