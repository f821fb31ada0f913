#!/usr/bin/env bash
# Start or stop a private Docker engine for the testbed.
#
#   engine.sh start RUN_DIR   start dockerd; its socket is RUN_DIR/docker.sock
#   engine.sh stop RUN_DIR    stop it by its pid and unmount everything it mounted
#
# The engine runs without iptables and without the default bridge (machines without an iptables
# binary), so containers use host networking. Its data root lives in the testbed cache so images
# and build layers survive between runs; the exec root, socket and pid file live in RUN_DIR.
set -euo pipefail

CACHE=${FEDSILO_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedsilo-testbed}
ROOT="$CACHE/engine-root"
DATA="$CACHE/docker-data"

usage() { echo "usage: $0 start|stop RUN_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
run_dir=$2
export PATH="$ROOT/usr/bin:$ROOT/usr/sbin:$PATH"

unmount_under() {
    # Deepest first, so nested mounts come off before their parents.
    local prefix=$1
    awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r mountpoint; do
            umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" || true
        done
}

stop_pid() {
    local pid_file=$1 name=$2
    [[ -f "$pid_file" ]] || return 0
    local pid
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "engine: $name ($pid) ignored SIGTERM for 30 s: killing it" >&2
            kill -KILL "$pid" || true
        fi
    fi
    rm -f "$pid_file"
}

case "$action" in
start)
    [[ -x "$ROOT/usr/sbin/dockerd" ]] || { echo "engine: run install-engine.sh first" >&2; exit 1; }
    mkdir -p "$run_dir" "$DATA"
    # Own cgroup and mount trees are not needed; a plain dockerd as root is enough here.
    "$ROOT/usr/sbin/dockerd" \
        --data-root "$DATA" \
        --exec-root "$run_dir/exec" \
        --pidfile "$run_dir/dockerd.pid" \
        --host "unix://$run_dir/docker.sock" \
        --iptables=false --ip-masq=false --bridge=none \
        --containerd-namespace fedsilo-testbed --containerd-plugins-namespace fedsilo-testbed-plugins \
        >"$run_dir/dockerd.log" 2>&1 &
    echo $! >"$run_dir/dockerd.launcher.pid"
    export DOCKER_HOST="unix://$run_dir/docker.sock"
    for _ in $(seq 1 300); do
        if docker version >/dev/null 2>&1; then
            echo "engine: dockerd running (socket $run_dir/docker.sock)"
            exit 0
        fi
        if ! kill -0 "$(cat "$run_dir/dockerd.launcher.pid")" 2>/dev/null; then
            echo "engine: dockerd exited; its log:" >&2
            tail -n 30 "$run_dir/dockerd.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "engine: dockerd did not answer within 60 s" >&2
    tail -n 30 "$run_dir/dockerd.log" >&2
    exit 1
    ;;
stop)
    [[ -d "$run_dir" ]] || exit 0
    export DOCKER_HOST="unix://$run_dir/docker.sock"
    if [[ -S "$run_dir/docker.sock" ]] && docker version >/dev/null 2>&1; then
        # Containers of an interrupted run must not outlive the engine.
        ids=$(docker ps -aq)
        [[ -z "$ids" ]] || docker rm -f $ids >/dev/null || true
    fi
    stop_pid "$run_dir/dockerd.pid" dockerd
    stop_pid "$run_dir/dockerd.launcher.pid" dockerd
    # dockerd stops the containerd it started; check by its pid file all the same.
    stop_pid "$run_dir/exec/containerd/containerd.pid" containerd
    unmount_under "$run_dir"
    unmount_under "$DATA"
    ;;
*) usage ;;
esac
