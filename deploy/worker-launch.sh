#!/usr/bin/env bash
# One polytune worker process per GPU in this pod (or POLYTUNE_WORKER_PROCESSES processes on CPU):
# process i gets CUDA_VISIBLE_DEVICES=i (when POLYTUNE_WORKER_GPUS > 0), POLYTUNE_LOCAL_RANK=i (so
# its metrics are on 9465 + i) and the worker id <pod>-<i>. Arguments are passed to every process.
# When one process exits, the others are stopped and the pod exits with its status, so Kubernetes
# restarts it; SIGTERM is forwarded to all of them.
set -uo pipefail
n="${POLYTUNE_WORKER_PROCESSES:-1}"
gpus="${POLYTUNE_WORKER_GPUS:-0}"
prefix="${POD_NAME:-$(hostname)}"
cli="${POLYTUNE_WORKER_CLI:-/app/dist/worker/cli.js}"
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap 'stop' TERM INT
for ((i = 0; i < n; i++)); do
  if [ "$gpus" -gt 0 ]; then
    CUDA_VISIBLE_DEVICES="$i" POLYTUNE_LOCAL_RANK="$i" node "$cli" --id "$prefix-$i" "$@" &
  else
    POLYTUNE_LOCAL_RANK="$i" node "$cli" --id "$prefix-$i" "$@" &
  fi
  pids+=("$!")
done
wait -n
status=$?
stop
wait
exit "$status"
