"""The commented example configurations in examples/config/ load, and mention every key."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsilo.config import CoordinatorConfig, ParticipantConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "config"


def _keys(cls: type[Any], prefix: str = "") -> list[str]:
    """Every dotted leaf key of a configuration dataclass."""
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if callable(field.default_factory) else field.default
        if dataclasses.is_dataclass(default):
            keys.extend(_keys(type(default), f"{prefix}{field.name}."))
        else:
            keys.append(prefix + field.name)
    return keys


def _leaves(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in mapping.items():
        if isinstance(value, dict) and key not in ("tasks", "task_config"):
            found |= _leaves(value, f"{prefix}{key}.")
        else:
            found.add(prefix + key)
    return found


@pytest.mark.parametrize(
    ("name", "cls"),
    [("coordinator.yaml", CoordinatorConfig), ("participant.yaml", ParticipantConfig)],
)
def test_example_sets_every_key_and_loads(
    name: str, cls: type[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [v for v in os.environ if v.startswith("FEDSILO_")]:
        monkeypatch.delenv(variable)
    text = (EXAMPLES / name).read_text()
    assert _leaves(yaml.safe_load(text)) == set(_keys(cls)), "the example must show every key"

    # With the TLS files it names in place, the example is a valid configuration as it stands.
    shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / "pki").mkdir()
    for key in ("ca_cert", "cert", "key"):
        (tmp_path / yaml.safe_load(text)["tls"][key]).write_text("placeholder\n")
    config = load_config(cls, tmp_path / name)
    assert config.tls.ca_cert == tmp_path / "pki" / "ca.crt"
    assert not config.tls.insecure
