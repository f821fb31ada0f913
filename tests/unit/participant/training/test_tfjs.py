"""Without its own environment a TF.js export stops at once, with one line saying how to get it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fedsilo.cli.model_export import export_in_format
from fedsilo.config import ConfigError
from participant.training.tfjs import TfjsEnvironment, convert_savedmodel, tfjs_environment


def _fake_environment(root: Path) -> Path:
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (root / "node" / "node_modules" / "@tensorflow" / "tfjs-core").mkdir(parents=True)
    return python


def test_a_missing_environment_names_make_tfjs_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDSILO_TFJS_PYTHON", raising=False)
    with pytest.raises(ValueError, match="run `make tfjs-venv`") as raised:
        tfjs_environment(tmp_path / "absent" / "bin" / "python")
    assert str(tmp_path / "absent" / "bin" / "python") in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_environment_variable_names_the_converter_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = _fake_environment(tmp_path / "env")
    monkeypatch.setenv("FEDSILO_TFJS_PYTHON", str(python))
    environment = tfjs_environment()
    assert environment.python == python
    assert environment.node_modules == tmp_path / "env" / "node" / "node_modules"


def test_an_environment_without_tfjs_for_node_names_make_tfjs_venv(tmp_path: Path) -> None:
    python = _fake_environment(tmp_path / "env")
    (tmp_path / "env" / "node" / "node_modules" / "@tensorflow" / "tfjs-core").rmdir()
    with pytest.raises(ValueError, match="TF.js for checking .* `make tfjs-venv`"):
        tfjs_environment(python)


def test_without_node_the_check_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = _fake_environment(tmp_path / "env")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="node .* not on PATH"):
        tfjs_environment(python)


class _UnusedTask:
    def load_data(self, config: Any) -> Any:
        raise AssertionError("the data was loaded before the environment was checked")


def test_the_export_stops_before_downloading_the_model(tmp_path: Path) -> None:
    downloads: list[Path] = []
    with pytest.raises(ConfigError, match=r"^not written: .*make tfjs-venv"):
        export_in_format(
            downloads.append,
            _UnusedTask(),  # type: ignore[arg-type]
            {},
            tmp_path / "model-tfjs",
            "tfjs",
            tfjs_python=str(tmp_path / "absent" / "python"),
        )
    assert downloads == []
    assert not (tmp_path / "model-tfjs").exists()


def test_a_python_without_the_converter_fails_with_its_last_error_line(tmp_path: Path) -> None:
    environment = TfjsEnvironment(Path(sys.executable), Path("node"), tmp_path)
    with pytest.raises(ValueError, match="the TF.js converter failed: .*tensorflowjs") as raised:
        convert_savedmodel(environment, tmp_path / "saved", tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()
