#!/usr/bin/env bash
# Read-path and moderate-load benchmark: one baseline and one candidate `magnetar` binary, each
# through the same shapes in the same run, each shape on a fresh `magnetar standalone` (own
# data directory, loopback ports 16650/18080), measured by `magnetar-perf`:
#
#   tail-1     e2e, one producer at full speed (batches of 100), 1 subscription tailing
#   tail-4     the same with 4 subscriptions
#   catch-up   e2e --backlog 500000 (1 KiB messages): subscription connects after the backlog
#              is written, reads it while a producer publishes 5,000 msgs/s
#   rate-5k    produce at 5,000 msgs/s (no batching): publish p50/p99, server CPU per message
#   rate-20k   the same at 20,000 msgs/s
#   topics-1k  e2e over 1,000 topics at 2,000 msgs/s in all, one subscription each
#
# Every shape reports the disk's own 4 KiB write + fdatasync latency measured on the same file
# system right after it. Figures go to OUT/<binary label>-<shape>.json and a table to stdout.
# Benchmarks print figures; nothing here asserts on speed.
#
#   bash benches/read-path.sh BASELINE_BIN CANDIDATE_BIN [OUT_DIR]
#   (MAGNETAR_PERF: the magnetar-perf binary, default target/release/magnetar-perf;
#    SECONDS_PER_SHAPE: the measured window, default 10)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASELINE=${1:?usage: read-path.sh BASELINE_BIN CANDIDATE_BIN [OUT_DIR]}
CANDIDATE=${2:?usage: read-path.sh BASELINE_BIN CANDIDATE_BIN [OUT_DIR]}
OUT=${3:-$(mktemp -d /tmp/magnetar-read-path.XXXX)}
PERF=${MAGNETAR_PERF:-$REPO/target/release/magnetar-perf}
WINDOW=${SECONDS_PER_SHAPE:-10}
mkdir -p "$OUT"

declare -A SHAPES=(
    [tail-1]="e2e --rate 0 --batch-max-messages 100 --subscriptions 1"
    [tail-4]="e2e --rate 0 --batch-max-messages 100 --subscriptions 4"
    [catch-up]="e2e --backlog 500000 --rate 5000 --subscriptions 1"
    [rate-5k]="produce --rate 5000"
    [rate-20k]="produce --rate 20000"
    [topics-1k]="e2e --topics 1000 --rate 2000 --subscriptions 1"
)
ORDER=(tail-1 tail-4 catch-up rate-5k rate-20k topics-1k)

run_shape() { # label binary shape
    local label=$1 binary=$2 shape=$3 dir pid
    dir=$(mktemp -d /tmp/magnetar-bench.XXXX)
    "$binary" standalone --data-dir "$dir/data" --pulsar-port 16650 --http-port 18080 \
        --bind-address 127.0.0.1 >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do
        curl -sf http://127.0.0.1:18080/admin/v2/brokers/health >/dev/null 2>&1 && break
        sleep 0.5
    done
    # shellcheck disable=SC2086 # the shape is a list of flags
    if ! "$PERF" ${SHAPES[$shape]} --topic "bench-$shape" --seconds "$WINDOW" -u pulsar://127.0.0.1:16650 \
        --server-pid "$pid" --disk-dir "$dir" --json >"$OUT/$label-$shape.json" 2>"$OUT/$label-$shape.err"; then
        echo "$label $shape failed: see $OUT/$label-$shape.err" >&2
    fi
    curl -s http://127.0.0.1:18080/metrics >"$OUT/$label-$shape.metrics" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    cp "$dir/log" "$OUT/$label-$shape.log"
    rm -rf "$dir"
}

for shape in "${ORDER[@]}"; do
    run_shape baseline "$BASELINE" "$shape"
    run_shape candidate "$CANDIDATE" "$shape"
done

python3 - "$OUT" "${ORDER[@]}" <<'EOF'
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
fields = [
    ("published_msgs_per_sec", "pub/s", "{:.0f}"), ("msgs_per_sec", "pub/s", "{:.0f}"),
    ("keep_up_min", "keep-up", "{:.3f}"), ("catch_up_msgs_per_sec_min", "catch-up/s", "{:.0f}"),
    ("publish_p50_ms", "p50 ms", "{:.3f}"), ("p50_ms", "p50 ms", "{:.3f}"),
    ("publish_p99_ms", "p99 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}"),
    ("e2e_p50_ms", "e2e p50", "{:.1f}"), ("cpu_us_per_message", "cpu us/msg", "{:.1f}"),
    ("disk_fdatasync_p50_ms", "sync p50", "{:.3f}"), ("disk_fdatasync_p99_ms", "sync p99", "{:.3f}"),
]
for shape in shapes:
    print(f"== {shape}")
    for label in ("baseline", "candidate"):
        try:
            figures = json.load(open(f"{out}/{label}-{shape}.json"))
        except (OSError, ValueError):
            print(f"  {label:9}  (no figures)")
            continue
        row = [f"{name} " + fmt.format(figures[key]) for key, name, fmt in fields
               if isinstance(figures.get(key), (int, float))]
        print(f"  {label:9}  " + "  ".join(row))
print(f"figures: {out}")
EOF
