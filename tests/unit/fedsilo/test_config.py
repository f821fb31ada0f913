"""Daemon configuration: YAML, FEDSILO_* overrides, and errors that name the key and the reason."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsilo.config import (
    ConfigError,
    CoordinatorConfig,
    ParticipantConfig,
    TlsSection,
    env_name,
    format_duration,
    load_config,
    parse_duration,
)

INSECURE = {"FEDSILO_TLS_INSECURE": "true"}


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """Relative names of three existing files next to the YAML file."""
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        (pki / name).write_text("placeholder")
    return {"ca_cert": "pki/ca.pem", "cert": "pki/server.pem", "key": "pki/server.key"}


def write_yaml(tmp_path: Path, content: Any, name: str = "daemon.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def load_coordinator(
    tmp_path: Path, content: Any, environ: dict[str, str] | None = None
) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, write_yaml(tmp_path, content), environ or {})


# -- loading ---------------------------------------------------------------------------------------


def test_yaml_is_loaded_and_relative_paths_follow_the_file(
    tmp_path: Path, tls_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not depend on the working directory
    config = load_coordinator(
        tmp_path,
        {
            "listen": "0.0.0.0:6000",
            "data_dir": "state",
            "database": {"url": "postgresql+psycopg://fed@db/fed"},
            "tls": tls_files,
            "limits": {"max_payload_bytes": 1024, "liveness_seconds": 12.5, "max_workers": 4},
            "auto_approve": False,
            "tick_seconds": 0.25,
            "log_level": "DEBUG",
        },
    )
    assert config.listen == "0.0.0.0:6000"
    assert config.data_dir == tmp_path / "state"
    assert config.database.url == "postgresql+psycopg://fed@db/fed"
    assert config.database_url() == "postgresql+psycopg://fed@db/fed"
    assert config.tls == TlsSection(
        tmp_path / "pki/ca.pem", tmp_path / "pki/server.pem", tmp_path / "pki/server.key", False
    )
    assert (config.limits.max_payload_bytes, config.limits.liveness_seconds) == (1024, 12.5)
    assert config.limits.max_workers == 4
    assert config.limits.max_concurrent_rpcs == 256  # untouched keys keep their defaults
    assert config.auto_approve is False
    assert config.tick_seconds == 0.25
    assert config.grace_seconds == 10.0
    assert config.log_level == "DEBUG"


def test_absolute_and_home_paths_are_kept(tmp_path: Path, tls_files: dict[str, str]) -> None:
    config = load_coordinator(tmp_path, {"data_dir": "/srv/fedsilo", "tls": tls_files})
    assert config.data_dir == Path("/srv/fedsilo")
    config = load_coordinator(tmp_path, {"data_dir": "~/fed", "tls": tls_files})
    assert config.data_dir == Path("~/fed").expanduser()


def test_tensorboard_dir_is_off_unless_set_and_follows_the_file(tmp_path: Path) -> None:
    assert load_coordinator(tmp_path, "", INSECURE).tensorboard_dir is None
    config = load_coordinator(tmp_path, {"tensorboard_dir": "runs"}, INSECURE)
    assert config.tensorboard_dir == tmp_path / "runs"
    config = load_coordinator(tmp_path, "", {**INSECURE, "FEDSILO_TENSORBOARD_DIR": "/srv/tb"})
    assert config.tensorboard_dir == Path("/srv/tb")


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    config = load_coordinator(tmp_path, {"data_dir": "data"}, INSECURE)
    assert config.database_url() == f"sqlite:///{tmp_path / 'data' / 'coordinator.db'}"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_coordinator(tmp_path, "", INSECURE)
    assert config == CoordinatorConfig(tls=TlsSection(insecure=True))


def test_no_file_uses_only_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        CoordinatorConfig, None, {**INSECURE, "FEDSILO_DATA_DIR": "here", "FEDSILO_LISTEN": ":1"}
    )
    assert config.data_dir == tmp_path / "here"
    assert config.listen == ":1"


def test_participant_config_loads(tmp_path: Path, tls_files: dict[str, str]) -> None:
    path = write_yaml(
        tmp_path,
        {
            "coordinator": "coord.example:443",
            "state_dir": "state",
            "tls": tls_files,
            "tasks": {"digits": "examples.digits.task:task"},
            "task_config": {"data_dir": "/data", "shards": [1, 2]},
            "poll_seconds": 5,
            "backoff": {"initial_seconds": 1, "max_seconds": 8},
        },
        "participant.yaml",
    )
    config = load_config(ParticipantConfig, path, {})
    assert config.coordinator == "coord.example:443"
    assert config.state_dir == tmp_path / "state"
    assert config.tasks == {"digits": "examples.digits.task:task"}
    assert config.task_config == {"data_dir": "/data", "shards": [1, 2]}
    assert config.poll_seconds == 5.0 and isinstance(config.poll_seconds, float)
    assert (config.backoff.initial_seconds, config.backoff.max_seconds) == (1.0, 8.0)


# -- environment overrides -------------------------------------------------------------------------


def test_env_name() -> None:
    assert env_name("database.url") == "FEDSILO_DATABASE_URL"
    assert env_name("limits.max_workers") == "FEDSILO_LIMITS_MAX_WORKERS"
    assert env_name("tls.ca_cert") == "FEDSILO_TLS_CA_CERT"


def test_environment_overrides_yaml(tmp_path: Path, tls_files: dict[str, str]) -> None:
    (tmp_path / "other.key").write_text("placeholder")
    config = load_coordinator(
        tmp_path,
        {"listen": "127.0.0.1:1", "tls": tls_files, "limits": {"max_workers": 4}},
        {
            "FEDSILO_LISTEN": "127.0.0.1:2",
            "FEDSILO_LIMITS_MAX_WORKERS": "9",
            "FEDSILO_AUTO_APPROVE": "off",
            "FEDSILO_TICK_SECONDS": "1.5",
            "FEDSILO_DATABASE_URL": "sqlite:///x.db",
            "FEDSILO_TLS_KEY": str(tmp_path / "other.key"),
            "FEDSILO_UNRELATED": "ignored",
        },
    )
    assert config.listen == "127.0.0.1:2"
    assert config.limits.max_workers == 9
    assert config.auto_approve is False
    assert config.tick_seconds == 1.5
    assert config.database.url == "sqlite:///x.db"
    assert config.tls.key == tmp_path / "other.key"
    assert config.tls.cert == tmp_path / "pki/server.pem"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("No", False)],
)
def test_boolean_spellings_from_the_environment(tmp_path: Path, text: str, expected: bool) -> None:
    config = load_coordinator(tmp_path, "", {**INSECURE, "FEDSILO_AUTO_APPROVE": text})
    assert config.auto_approve is expected


def test_mappings_come_from_json_in_the_environment(tmp_path: Path) -> None:
    config = load_config(
        ParticipantConfig,
        write_yaml(tmp_path, {"tasks": {"a": "m:a"}}),
        {**INSECURE, "FEDSILO_TASKS": '{"b": "m:b"}', "FEDSILO_TASK_CONFIG": '{"n": 3}'},
    )
    assert config.tasks == {"b": "m:b"}
    assert config.task_config == {"n": 3}


def test_explicit_environ_replaces_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSILO_LISTEN", "no-port-here")
    config = load_coordinator(tmp_path, {"listen": "127.0.0.1:7"}, INSECURE)
    assert config.listen == "127.0.0.1:7"
    with pytest.raises(ConfigError, match="listen"):
        load_config(CoordinatorConfig, write_yaml(tmp_path, {"tls": {"insecure": True}}), None)


# -- errors name the key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"listn": "127.0.0.1:1"}, "listn"),
        ({"tls": {"insecure": True, "certificate": "x"}}, "tls.certificate"),
        ({"limits": {"max_worker": 3}}, "limits.max_worker"),
        ({"database": {"url": "", "pool": 3}}, "database.pool"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, content: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: unknown configuration key"):
        load_coordinator(tmp_path, content, INSECURE)


def test_non_string_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1"):
        load_coordinator(tmp_path, "1: x\ntls: {insecure: true}\n")


@pytest.mark.parametrize(
    ("content", "environ", "key"),
    [
        ({"limits": {"max_workers": "many"}}, {}, "limits.max_workers"),
        ({"limits": {"max_workers": 2.5}}, {}, "limits.max_workers"),
        ({"limits": {"max_workers": True}}, {}, "limits.max_workers"),
        ({}, {"FEDSILO_LIMITS_MAX_WORKERS": "1.5"}, "limits.max_workers"),
        ({"tick_seconds": "soon"}, {}, "tick_seconds"),
        ({"tick_seconds": False}, {}, "tick_seconds"),
        ({"auto_approve": "maybe"}, {}, "auto_approve"),
        ({}, {"FEDSILO_AUTO_APPROVE": "2"}, "auto_approve"),
        ({"listen": ["127.0.0.1:1"]}, {}, "listen"),
        ({"data_dir": 5}, {}, "data_dir"),
        ({"data_dir": ""}, {}, "data_dir"),
        ({"tls": "on"}, {}, "tls"),
        ({"limits": [1, 2]}, {}, "limits"),
    ],
)
def test_bad_type_is_named(
    tmp_path: Path, content: dict[str, Any], environ: dict[str, str], key: str
) -> None:
    content = {"tls": {"insecure": True}, **content}
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_coordinator(tmp_path, content, {**environ})


@pytest.mark.parametrize(
    ("content", "environ", "key"),
    [
        ({"tasks": {"a": 1}}, {}, "tasks"),
        ({"tasks": ["a"]}, {}, "tasks"),
        ({}, {"FEDSILO_TASKS": "{not json"}, "tasks"),
        ({}, {"FEDSILO_TASK_CONFIG": "[1]"}, "task_config"),
        ({"backoff": {"initial_seconds": 0}}, {}, "backoff.initial_seconds"),
        ({"backoff": {"initial_seconds": 5, "max_seconds": 1}}, {}, "backoff.max_seconds"),
        ({"coordinator": "localhost"}, {}, "coordinator"),
        ({"poll_seconds": -1}, {}, "poll_seconds"),
    ],
)
def test_bad_participant_setting_is_named(
    tmp_path: Path, content: dict[str, Any], environ: dict[str, str], key: str
) -> None:
    path = write_yaml(tmp_path, {"tls": {"insecure": True}, **content})
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(ParticipantConfig, path, environ)


@pytest.mark.parametrize(
    "key",
    [
        "tick_seconds",
        "grace_seconds",
        "limits.max_payload_bytes",
        "limits.liveness_seconds",
        "limits.max_workers",
        "limits.max_concurrent_rpcs",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_limits_are_named(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be positive"):
        load_coordinator(tmp_path, "", {**INSECURE, env_name(key): value})


def test_spool_budgets_default_to_multiples_of_the_payload_limit(tmp_path: Path) -> None:
    limits = load_coordinator(
        tmp_path, "", {**INSECURE, "FEDSILO_LIMITS_MAX_PAYLOAD_BYTES": "1000"}
    ).limits
    assert (limits.spool_org_budget(), limits.spool_total_budget()) == (2000, 8000)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"FEDSILO_LIMITS_SPOOL_BYTES_PER_ORG": "-1"}, "limits.spool_bytes_per_org"),
        ({"FEDSILO_LIMITS_SPOOL_BYTES_TOTAL": "-1"}, "limits.spool_bytes_total"),
        # Budgets that could never hold one payload of the largest size.
        ({"FEDSILO_LIMITS_SPOOL_BYTES_PER_ORG": "999"}, "limits.spool_bytes_per_org"),
        (
            {
                "FEDSILO_LIMITS_SPOOL_BYTES_PER_ORG": "3000",
                "FEDSILO_LIMITS_SPOOL_BYTES_TOTAL": "2000",
            },
            "limits.spool_bytes_total",
        ),
    ],
)
def test_unusable_spool_budgets_are_named(
    tmp_path: Path, settings: dict[str, str], key: str
) -> None:
    environ = {**INSECURE, "FEDSILO_LIMITS_MAX_PAYLOAD_BYTES": "1000", **settings}
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_coordinator(tmp_path, "", environ)


def test_nan_is_not_a_positive_number(tmp_path: Path) -> None:
    try:
        config = load_coordinator(tmp_path, "", {**INSECURE, "FEDSILO_TICK_SECONDS": "nan"})
    except ConfigError as exc:
        assert str(exc).startswith("tick_seconds: ")
        return
    assert not math.isnan(config.tick_seconds), "tick_seconds=nan was accepted"


@pytest.mark.parametrize("listen", ["localhost", "", "6000"])
def test_listen_without_port_is_named(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="^listen: "):
        load_coordinator(tmp_path, {"listen": listen, "tls": {"insecure": True}})


# -- TLS files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["ca_cert", "cert", "key"])
def test_absent_tls_setting_is_named(
    tmp_path: Path, tls_files: dict[str, str], missing: str
) -> None:
    given = {k: v for k, v in tls_files.items() if k != missing}
    with pytest.raises(ConfigError, match=rf"^tls\.{missing}: required"):
        load_coordinator(tmp_path, {"tls": given})


@pytest.mark.parametrize("missing", ["ca_cert", "cert", "key"])
def test_missing_tls_file_is_named(tmp_path: Path, tls_files: dict[str, str], missing: str) -> None:
    given = {**tls_files, missing: "pki/nowhere.pem"}
    with pytest.raises(ConfigError, match=rf"^tls\.{missing}: file .*nowhere\.pem does not exist"):
        load_coordinator(tmp_path, {"tls": given})


def test_tls_path_that_is_a_directory_is_refused(tmp_path: Path, tls_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.cert: "):
        load_coordinator(tmp_path, {"tls": {**tls_files, "cert": "pki"}})


def test_tls_files_are_checked_for_the_participant_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.ca_cert: required"):
        load_config(ParticipantConfig, write_yaml(tmp_path, {}), {})


def test_relative_tls_file_is_found_from_another_working_directory(
    tmp_path: Path, tls_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    config = load_coordinator(tmp_path, {"tls": tls_files})
    assert config.tls.ca_cert == tmp_path / "pki" / "ca.pem"


# -- the file itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path, content: str) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_coordinator(tmp_path, content, INSECURE)


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_coordinator(tmp_path, "listen: [unclosed\n", INSECURE)


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    # safe_load only: a python tag is a YAML error, never an object.
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_coordinator(tmp_path, "listen: !!python/object/apply:os.getcwd []\n", INSECURE)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(CoordinatorConfig, tmp_path / "absent.yaml", INSECURE)


def test_config_error_is_a_value_error() -> None:
    # fedsilo.cli turns ValueError subclasses into a one-line message and exit code 2.
    assert issubclass(ConfigError, ValueError)


# -- the membership list's age limit ---------------------------------------------------------------


def test_the_membership_list_ages_out_after_30_days_unless_configured(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"tls": {"insecure": True}})
    assert load_config(ParticipantConfig, path, {}).accept.membership_max_age() == dt.timedelta(
        days=30
    )
    widened = write_yaml(
        tmp_path, {"tls": {"insecure": True}, "accept": {"max_membership_age": "90d"}}
    )
    assert load_config(ParticipantConfig, widened, {}).accept.membership_max_age() == dt.timedelta(
        days=90
    )
    # The variable wins over the file, as for every key.
    environ = {"FEDSILO_ACCEPT_MAX_MEMBERSHIP_AGE": "1.5h"}
    config = load_config(ParticipantConfig, widened, environ)
    assert config.accept.membership_max_age() == dt.timedelta(minutes=90)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", dt.timedelta(days=30)),
        ("12h", dt.timedelta(hours=12)),
        (" 90M ", dt.timedelta(minutes=90)),
        ("45s", dt.timedelta(seconds=45)),
        ("0.5s", dt.timedelta(milliseconds=500)),
        ("31d 2h 5s", dt.timedelta(days=31, hours=2, seconds=5)),
    ],
)
def test_durations_read_and_print_alike(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected
    if expected.total_seconds().is_integer():
        assert parse_duration(format_duration(expected)) == expected


def test_durations_print_in_their_largest_units() -> None:
    assert format_duration(dt.timedelta(days=31, hours=2, seconds=5)) == "31d 2h 5s"
    assert format_duration(dt.timedelta(0)) == "0s"
    assert format_duration(dt.timedelta(minutes=-4)) == "-4m"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0d", "must be positive"),
        ("0s", "must be positive"),
        ("30", "is not a duration"),  # a bare number: days or seconds? refused, not guessed
        ("-1d", "is not a duration"),
        ("a month", "is not a duration"),
        ("", "is not a duration"),
        ("1e3d", "is not a duration"),
        ("2h 30", "is not a duration"),
        ("3651d", "must be at most 3650d"),
        ("9" * 400 + "d", "is too long a duration"),
        ("99999999999d", "is too long a duration"),
    ],
)
def test_a_bad_membership_age_limit_is_named(tmp_path: Path, value: str, reason: str) -> None:
    path = write_yaml(tmp_path, {"tls": {"insecure": True}})
    with pytest.raises(ConfigError, match=r"^accept\.max_membership_age: ") as raised:
        load_config(ParticipantConfig, path, {"FEDSILO_ACCEPT_MAX_MEMBERSHIP_AGE": value})
    assert reason in str(raised.value)


def test_a_membership_age_limit_from_yaml_needs_a_unit(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"tls": {"insecure": True}, "accept": {"max_membership_age": 30}})
    with pytest.raises(ConfigError, match=r"^accept\.max_membership_age: '30' is not a duration"):
        load_config(ParticipantConfig, path, {})
