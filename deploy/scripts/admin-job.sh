#!/bin/sh
# admin-job.sh ORG...: as the consortium admin, wait for the organizations to connect, approve
# them, run the digits job of `fedsilo demo` (same task, rounds and training settings) under
# secure aggregation, follow it, print its final accuracy and exit with the job's result.
set -eu
# Prints the final accuracy once every organization has evaluated the final model; else exits 1.
REPORT='
import json, sys
job = json.load(sys.stdin)
version = int(job["model_version"])
final = {int(m["version"]): m for m in job.get("metrics", [])}.get(version)
if final is None or int(final.get("reports", 0)) < int(sys.argv[1]):
    sys.exit(1)
state = job["state"].removeprefix("JOB_STATE_").lower()
accuracy = float(final["accuracy"])
print(f"final accuracy: {accuracy:.4f} (model version {version}, job {state})")
'
[ "$#" -gt 0 ] || { echo "usage: admin-job.sh ORG..." >&2; exit 2; }
rounds=${JOB_ROUNDS:-10}
deadline=$(( $(date +%s) + ${CONNECT_TIMEOUT:-300} ))
for org in "$@"; do
    # An organization appears (pending) with the daemon's first call to the coordinator.
    until fedsilo participants list --json | grep "\"org_id\": \"$org\"" >/dev/null; do
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "admin-job: $org did not connect in time" >&2
            exit 1
        fi
        sleep 1
    done
    fedsilo participants approve "$org"
done
# The membership list the CA signed (pki-sign.sh): without it participants join no secure round.
fedsilo participants publish-membership "${MEMBERSHIP_LIST:-/pki/certs/membership.json}"
job=$(fedsilo job create --task digits --name digits-testbed --protection secagg \
    --rounds "$rounds" --epochs 2 --batch-size 16 --learning-rate 0.1 --seed 0 \
    --min-participants "$#" --round-timeout 300 --start --json)
job_id=$(printf '%s' "$job" | python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
echo "admin-job: started job $job_id ($rounds rounds, $# organizations, secagg)"
status=0
fedsilo job watch "$job_id" || status=$?
# The final model's accuracy is the mean over every organization's held-out data: wait until
# each has reported its evaluation, as the demo does.
deadline=$(( $(date +%s) + 120 ))
until fedsilo job status "$job_id" --json | python3 -c "$REPORT" "$#"; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "admin-job: the final evaluation reports did not all arrive" >&2
        exit 1
    fi
    sleep 1
done
exit "$status"
