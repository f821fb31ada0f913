"""A Kubeflow Pipelines pipeline that runs one federated fedsilo job end to end.

Steps, each a container of the fedsilo image acting as the consortium admin (certificate from the
Kubernetes Secret ``fedsilo-admin-tls``): create and start the job, follow it until it ends
(the step fails when the job fails), export the global model as a Keras file artifact, then
convert it for devices: a TF Lite model checked against Keras on held-out data. The
organizations' participant daemons run in their own clusters (deploy/k8s/participant); the
pipeline only talks to the coordinator.

Compile (in the kfp environment, ``make kfp-venv``):
``.venv-kfp/bin/python deploy/kubeflow/pipeline.py deploy/kubeflow/pipeline.yaml``
"""

# No "from __future__ import annotations": kfp reads the component signatures at run time.

import sys

from kfp import compiler, dsl, kubernetes

IMAGE = "fedsilo:latest"
ADMIN_CERTIFICATES = "fedsilo-admin-tls"
ADMIN_TLS_DIR = "/etc/fedsilo/admin"


@dsl.container_component
def create_job(
    coordinator: str,
    task: str,
    rounds: int,
    protection: str,
    min_participants: int,
    job_id: dsl.OutputPath(str),  # type: ignore[valid-type]
) -> dsl.ContainerSpec:
    """Create and start the job; its id is this step's output."""
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["/bin/sh", "-c"],
        args=[
            'set -eu; mkdir -p "$(dirname "$0")"; '
            'fedsilo job create --coordinator "$1" --task "$2" --rounds "$3" '
            '--protection "$4" --min-participants "$5" --start --json '
            '| python3 -c \'import json, sys; print(json.load(sys.stdin)["job_id"], end="")\' '
            '> "$0"',
            job_id,
            coordinator,
            task,
            rounds,
            protection,
            min_participants,
        ],
    )


@dsl.container_component
def wait_for_job(coordinator: str, job_id: str) -> dsl.ContainerSpec:
    """Follow the job round by round; exits non-zero when it fails."""
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["fedsilo", "job", "watch"],
        args=[job_id, "--coordinator", coordinator],
    )


@dsl.container_component
def export_model(
    coordinator: str,
    job_id: str,
    task: str,
    model: dsl.Output[dsl.Model],
) -> dsl.ContainerSpec:
    """Export the job's final global model as a Keras file (secagg jobs: the coordinator holds
    the aggregate; a paillier job's model is exported by an organization instead)."""
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["/bin/sh", "-c"],
        args=[
            'set -eu; mkdir -p "$(dirname "$0")"; '
            'fedsilo model export "$2" --coordinator "$1" --task "$3" --out "$0.keras" '
            '&& mv "$0.keras" "$0"',
            model.path,
            coordinator,
            job_id,
            task,
        ],
    )


@dsl.container_component
def convert_for_mobile(
    coordinator: str,
    job_id: str,
    quantization: str,
    task_config: str,
    tflite: dsl.Output[dsl.Model],
) -> dsl.ContainerSpec:
    """Export the same global model as TF Lite (``quantization``: float, dynamic or int8), written
    only if it agrees with the Keras model on the held-out split ``task_config`` selects."""
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["/bin/sh", "-c"],
        args=[
            'set -eu; mkdir -p "$(dirname "$0")"; '
            'fedsilo model export "$2" --coordinator "$1" --format tflite --quantization "$3" '
            '--task-config "$4" --out "$0.tflite" && mv "$0.tflite" "$0"',
            tflite.path,
            coordinator,
            job_id,
            quantization,
            task_config,
        ],
    )


def _as_admin(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Mount the admin certificate and point fedsilo's admin options at it."""
    kubernetes.use_secret_as_volume(task, secret_name=ADMIN_CERTIFICATES, mount_path=ADMIN_TLS_DIR)
    task.set_env_variable("FEDSILO_ADMIN_CA_CERT", f"{ADMIN_TLS_DIR}/ca.crt")
    task.set_env_variable("FEDSILO_ADMIN_CERT", f"{ADMIN_TLS_DIR}/tls.crt")
    task.set_env_variable("FEDSILO_ADMIN_KEY", f"{ADMIN_TLS_DIR}/tls.key")
    task.set_caching_options(False)
    return task


@dsl.pipeline(
    name="fedsilo-federated-job",
    description="Create a fedsilo job, follow it to the end, export the global model and "
    "convert it to TF Lite.",
)
def federated_job(
    coordinator: str = "fedsilo-coordinator.fedsilo.svc:50051",
    task: str = "digits",
    rounds: int = 10,
    protection: str = "secagg",
    min_participants: int = 3,
    mobile_quantization: str = "dynamic",
    mobile_check_task_config: str = '{"partition": 0, "num_partitions": 3}',
) -> dsl.Model:
    created = _as_admin(
        create_job(
            coordinator=coordinator,
            task=task,
            rounds=rounds,
            protection=protection,
            min_participants=min_participants,
        )
    )
    waited = _as_admin(wait_for_job(coordinator=coordinator, job_id=created.outputs["job_id"]))
    exported = _as_admin(
        export_model(coordinator=coordinator, job_id=created.outputs["job_id"], task=task)
    )
    exported.after(waited)
    mobile = _as_admin(
        convert_for_mobile(
            coordinator=coordinator,
            job_id=created.outputs["job_id"],
            quantization=mobile_quantization,
            task_config=mobile_check_task_config,
        )
    )
    mobile.after(exported)
    return exported.outputs["model"]


if __name__ == "__main__":
    compiler.Compiler().compile(federated_job, package_path=sys.argv[1])
