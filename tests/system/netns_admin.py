"""The admin side of a network-fault test, run inside the coordinator's network namespace.

``ip netns exec NS python netns_admin.py COMMAND ...``: the test process lives in the root
namespace, from which the coordinator's addresses are not reachable without traffic leaving
the machine, so every admin call runs here, next to the coordinator, over its loopback. The
admin's TLS files come from ``FEDSILO_ADMIN_CA_CERT``, ``FEDSILO_ADMIN_CERT`` and
``FEDSILO_ADMIN_KEY``. Results go to stdout: protobuf messages base64-encoded, models as .npz
files (numpy arrays only, no pickle).

Commands:
  wait-serving TARGET               until health is SERVING (60 s deadline)
  watch-health TARGET OUT           append each Health.Watch status to OUT until the stream ends
  publish-membership TARGET FILE    publish the consortium CA's membership list
  wait-orgs TARGET COUNT            until COUNT organizations registered (60 s deadline)
  create-job TARGET SPEC_B64 NPZ    create and start a job with these initial weights; job id
  status TARGET JOB                 the JobStatus, base64
  model TARGET JOB VERSION OUT_NPZ  a model version (-1: the latest) into OUT_NPZ; its version
  models TARGET JOB OUT_NPZ         every version, as arrays v<version>_w<tensor>
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsilo.admin import AdminClient
from fedsilo.health import health_serving
from fedsilo.tls import TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb

DEADLINE_S = 60.0


def _tls() -> TlsFiles:
    return TlsFiles(
        Path(os.environ["FEDSILO_ADMIN_CA_CERT"]),
        Path(os.environ["FEDSILO_ADMIN_CERT"]),
        Path(os.environ["FEDSILO_ADMIN_KEY"]),
    )


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def _watch_health(target: str, out: Path) -> None:
    """Follow Health.Watch(""), appending each status name to ``out`` until the stream ends."""
    with grpc.secure_channel(target, channel_credentials(_tls())) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                with out.open("a") as lines:
                    lines.write(f"{name}\n")
        except grpc.RpcError as exc:
            with out.open("a") as lines:
                lines.write(f"stream ended: {exc.code().name}\n")


def main(argv: list[str]) -> int:
    command, target, *rest = argv
    if command == "wait-serving":
        _poll(lambda: health_serving(target, _tls()), "the coordinator to serve")
        return 0
    if command == "watch-health":
        _watch_health(target, Path(rest[0]))
        return 0
    with AdminClient(target, _tls()) as admin:
        if command == "publish-membership":
            admin.publish_membership_list(Path(rest[0]).read_bytes())
        elif command == "wait-orgs":
            count = int(rest[0])
            _poll(lambda: len(admin.list_participants()) >= count, f"{count} organizations")
        elif command == "create-job":
            spec = pb.JobSpec.FromString(base64.b64decode(rest[0]))
            with np.load(rest[1], allow_pickle=False) as saved:
                weights = [saved[f"w{i}"] for i in range(len(saved.files))]
            job = admin.create_job(spec, weights)
            admin.start_job(job.job_id)
            print(job.job_id)
        elif command == "status":
            print(base64.b64encode(admin.get_job(rest[0]).SerializeToString()).decode())
        elif command == "models":
            latest = admin.get_job(rest[0]).model_version
            arrays = {}
            for version in range(latest + 1):
                got, weights = admin.download_model(rest[0], version)
                arrays.update({f"v{got}_w{i}": w for i, w in enumerate(weights)})
            np.savez(rest[1], **arrays)
        elif command == "model":
            version, weights = admin.download_model(rest[0], int(rest[1]))
            np.savez(rest[2], **{f"w{i}": w for i, w in enumerate(weights)})
            print(version)
        else:
            raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
