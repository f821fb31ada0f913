"""``fedsilo health``: exit 0 only when the coordinator answers SERVING over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from inproc_consortium import ConsortiumPki, free_port

from coordinator.transport.server import RunningCoordinator
from fedsilo.cli import main
from fedsilo.tls import TlsFiles


def _coordinator_yaml(path: Path, listen: str, tls: TlsFiles) -> Path:
    config = {
        "listen": listen,
        "data_dir": str(path.parent / "unused-data"),
        "tls": {"ca_cert": str(tls.ca_cert), "cert": str(tls.cert), "key": str(tls.key)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _participant_yaml(path: Path, coordinator: str, tls: TlsFiles) -> Path:
    config = {
        "coordinator": coordinator,
        "state_dir": str(path.parent / "unused-state"),
        "tls": {"ca_cert": str(tls.ca_cert), "cert": str(tls.cert), "key": str(tls.key)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _coordinator_tls(pki: ConsortiumPki) -> TlsFiles:
    demo = pki.demo
    return TlsFiles(demo.ca_cert, demo.coordinator_cert, demo.coordinator_key)


def test_coordinator_probe_dials_localhost_on_the_listen_port_with_its_own_certificate(
    coordinator: RunningCoordinator,
    pki: ConsortiumPki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A container listens on a wildcard address; the probe beside it dials localhost.
    config = _coordinator_yaml(
        tmp_path / "coordinator.yaml", f"0.0.0.0:{coordinator.port}", _coordinator_tls(pki)
    )
    assert main(["health", "coordinator", "--config", str(config)]) == 0
    assert f"localhost:{coordinator.port}: SERVING" in capsys.readouterr().out


def test_participant_probe_uses_the_organizations_certificate(
    coordinator: RunningCoordinator, pki: ConsortiumPki, target: str, tmp_path: Path
) -> None:
    tls = pki.participant_tls("org-a")
    config = _participant_yaml(tmp_path / "org-a.yaml", target, tls)
    assert main(["health", "participant", "--config", str(config)]) == 0


def test_a_certificate_from_another_ca_is_not_serving(
    coordinator: RunningCoordinator, pki: ConsortiumPki, target: str, tmp_path: Path
) -> None:
    tls = pki.foreign_tls()
    config = _participant_yaml(tmp_path / "foreign.yaml", target, tls)
    assert main(["health", "participant", "--config", str(config)]) == 1


def test_no_coordinator_listening_is_not_serving(
    pki: ConsortiumPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = pki.participant_tls("org-a")
    config = _participant_yaml(tmp_path / "org-a.yaml", f"localhost:{free_port()}", tls)
    assert main(["health", "participant", "--config", str(config)]) == 1
    assert "not serving" in capsys.readouterr().out


def test_a_configuration_without_tls_files_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(yaml.safe_dump({"listen": "0.0.0.0:50051"}))
    assert main(["health", "coordinator", "--config", str(config)]) == 2
