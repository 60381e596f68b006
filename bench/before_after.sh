#!/bin/bash
# Two strait-node builds on the ordinary path (no deferral), alternated run by run so
# that the machine's drift over time does not favour one: callgrind instructions per
# request (bench/profile.sh callgrind; repeatable on a busy machine), then closed-loop
# req/s beside nginx and a direct connection (bench/run.py --only wrk).
#
#   bench/before_after.sh BEFORE_BIN AFTER_BIN [CALLGRIND_RUNS] [WRK_RUNS] [ROUNDS]
#
# Defaults: 3 callgrind runs of each, 3 run.py invocations of each with 5 rounds
# (--full: 10 s per run). run.py's files go to bench-results/ab-<date>/ (OUT=dir to
# choose); a summary per invocation is printed: strait req/s and CPU per request, and
# the median of per-round strait/nginx ratios, which compares runs next to each other.
# Needs CARGO_TARGET_DIR (or target/) to hold the release strait-mock-upstream and
# strait-ttft-client (run.py checks for them), valgrind, oha, wrk and nginx.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
CG_RUNS=${3:-3}
WRK_RUNS=${4:-3}
ROUNDS=${5:-5}
OUT=${OUT:-$HERE/../bench-results/ab-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

echo "== callgrind, instructions per request (3,000 requests after a warm-up, limits on)"
for i in $(seq "$CG_RUNS"); do
    for which in before after; do
        bin=$BEFORE
        [ "$which" = after ] && bin=$AFTER
        line=$("$HERE/profile.sh" callgrind "$bin" | grep "instructions per request")
        echo "run $i $which: $line"
    done
done

echo "== closed loop, bench/run.py --full --no-build --only wrk --rounds $ROUNDS"
for i in $(seq "$WRK_RUNS"); do
    for which in before after; do
        bin=$BEFORE
        [ "$which" = after ] && bin=$AFTER
        python3 "$HERE/run.py" --full --no-build --only wrk --rounds "$ROUNDS" --strait-bin "$bin" \
            --label "$which" --out "$OUT" >"$OUT/run-$i-$which.log" 2>&1
        json=$(ls -t "$OUT"/*.json | head -1)
        python3 - "$json" "$i" "$which" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["throughput"]
s, n = r["summary"]["strait"], r["summary"]["nginx"]
ratio = r["ratios"]["strait_vs_nginx"]
print(f"run {sys.argv[2]} {sys.argv[3]:6s}: strait {s['rps']:>8,.0f} req/s {s['cpu_us_per_req']:.1f} us/req;"
      f" nginx {n['rps']:>8,.0f} req/s {n['cpu_us_per_req']:.1f} us/req;"
      f" strait/nginx req/s {ratio['rps']:.3f}, cpu/req {ratio['cpu_us_per_req']:.3f}  ({sys.argv[1].rsplit('/', 1)[1]})")
EOF
    done
done
