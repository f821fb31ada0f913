"""A real coordinator's plaintext health listener answers SERVING and serves nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
import yaml

from fedsilo.cli.daemons import Process, fedsilo_command, wait_for
from fedsilo.health import SERVING, serving_status
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

pytestmark = pytest.mark.system


def _health_port(log_path: Path) -> int | None:
    found = re.search(r"plaintext health listener on port (\d+)", log_path.read_text())
    return int(found.group(1)) if found else None


def test_the_health_listener_answers_serving_in_plaintext_and_nothing_else(tmp_path: Path) -> None:
    config = {
        "listen": "127.0.0.1:0",
        "health_listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "tls": {"insecure": True},
    }
    (tmp_path / "coordinator.yaml").write_text(yaml.safe_dump(config))
    args = fedsilo_command(
        "coordinator", "serve", "--config", str(tmp_path / "coordinator.yaml"),
        "--port-file", str(tmp_path / "coordinator.port"),
    )  # fmt: skip
    process = Process("coordinator", args, tmp_path / "coordinator.log")
    try:
        wait_for(
            lambda: (tmp_path / "coordinator.port").exists() or process.popen.poll() is not None,
            60,
            "the coordinator to listen",
        )
        port = _health_port(process.log_path)
        assert port is not None, process.log_path.read_text()
        main_port = int((tmp_path / "coordinator.port").read_text())
        assert port != main_port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert serving_status(channel, timeout=10) == (SERVING, "SERVING")
            admin = pb_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                admin.ListJobs(pb.ListJobsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert process.stop() == 0, process.log_path.read_text()
