#!/bin/bash
# Per-request cost of one strait-node binary, for before/after comparisons of a change
# (current figures in docs/benchmarks.md; the trims in docs/benchmarks-history.md). The canned
# nginx upstream of bench/run.py runs on CPU 1; the proxy under test on CPU 0.
#
#   bench/profile.sh callgrind BIN [REQUESTS]  user-space instructions per request
#                                              (valgrind; repeatable on a busy machine)
#   bench/profile.sh callgrind-nginx [REQUESTS] the same for nginx (one process, no master)
#   bench/profile.sh cpu BIN [SECONDS]         CPU time per request (user + system, and
#                                              user alone) under wrk -c32, from /proc
#   bench/profile.sh cpu-nginx [SECONDS]       the same for nginx (bench/nginx/proxy.conf)
#   bench/profile.sh syscalls BIN              system calls per request (strace -c)
#   bench/profile.sh kernel BIN [SECONDS]      system calls and TCP segments per request
#                                              under wrk -c32 (perf tracepoints, no strace
#                                              slowdown; needs linux-perf)
#   bench/profile.sh kernel-nginx [SECONDS]    the same for nginx
#   bench/profile.sh samples BIN [SECONDS]     where the CPU goes: nanoseconds per request
#                                              by function, user and kernel ([k]), from
#                                              perf cpu-clock samples at 10 kHz under
#                                              wrk -c32 (sampling slows the process: for
#                                              comparing with samples-nginx, not absolute)
#   bench/profile.sh samples-nginx [SECONDS]   the same for nginx's worker
#   bench/profile.sh copies BIN [SECONDS]      memmove/memcpy calls per request by size
#                                              and calling line (uprobes on glibc's
#                                              copy routines, DWARF stacks; needs
#                                              linux-perf and libc6-dbg), under wrk -c4
#
# Strait runs with limits far above the load (as in bench/run.py) unless
# PROFILE_NO_LIMITS=1, and without its access log unless PROFILE_ACCESS_LOG=1 (which
# turns nginx's on too: its default combined format to a file). PROFILE_KEEP=FILE keeps the callgrind profile. Ports:
# PROFILE_PORT (default 18180) and the next five.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/strait-profile.XXXXXX)
BASE=${PROFILE_PORT:-18180}
UP=$BASE UP_H2=$((BASE + 1)) PX=$((BASE + 2)) PX_ADMIN=$((BASE + 3)) NX=$((BASE + 4)) NX_H2=$((BASE + 5))
LIMITS=(--default-limits "rpm=1000000000,itpm=1000000000000,otpm=1000000000000,concurrency=1000000")
[ "${PROFILE_NO_LIMITS:-0}" = 1 ] && LIMITS=()
BODY='{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello, Claude"}]}'
HDRS=(-H content-type:application/json -H x-api-key:c1 -H anthropic-version:2023-06-01)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

start_upstream() {
    sed -e "s|{{DIR}}|$WORK|g; s|{{PORT}}|$UP|; s|{{H2PORT}}|$UP_H2|" \
        "$HERE/nginx/upstream.conf" >"$WORK/up.conf"
    taskset -c 1 nginx -c "$WORK/up.conf" -p "$WORK" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$UP"
}

# start_strait WRAPPER... : runs strait-node (under WRAPPER, e.g. valgrind) on CPU 0.
# The upstream path's active probes (one request every 2 s, binaries with [health]) are
# slowed to one an hour: a fixed cost per second, not per request, which valgrind's
# slowdown would otherwise charge to the requests fifty times over.
start_strait() {
    local extra=(--state-dir "$WORK/state")
    printf '[health]\nprobe_interval = "1h"\n' >"$WORK/quiet-probes.toml"
    if STRAIT_UPSTREAM_KEYS=k1 STRAIT_CLIENT_KEYS=c1 "$BIN" --config "$WORK/quiet-probes.toml" \
        --state-dir "$WORK/state" --check-config >/dev/null 2>&1; then
        extra+=(--config "$WORK/quiet-probes.toml")
    fi
    # PROFILE_ACCESS_LOG=1: the access log on, its default text line, to a file (older
    # binaries without --access-log-file: through stdout to strait.log, at level info).
    local logs=(--no-access-log --log-format json --log-level warn)
    if [ "${PROFILE_ACCESS_LOG:-0}" = 1 ]; then
        if "$BIN" --help | grep -q -- --access-log-file; then
            logs=(--log-format text --log-level warn --access-log-file "$WORK/access.log")
        else
            logs=(--log-format text --log-level info)
        fi
    fi
    STRAIT_UPSTREAM_KEYS=k1 STRAIT_CLIENT_KEYS=c1 "$@" "$BIN" \
        --listen "127.0.0.1:$PX" --admin-listen "127.0.0.1:$PX_ADMIN" --workers 1 \
        "${logs[@]}" \
        --upstream "http://127.0.0.1:$UP" "${LIMITS[@]}" "${extra[@]}" >"$WORK/strait.log" 2>&1 &
    SP=$!
    PIDS+=($SP)
    wait_port "$PX"
}

# nginx_conf: writes the nginx contender's config (bench/nginx/proxy.conf) to px.conf.
nginx_conf() {
    local log=off
    [ "${PROFILE_ACCESS_LOG:-0}" = 1 ] && log="$WORK/nginx-access.log combined"
    sed -e "s|{{DIR}}|$WORK|g; s|{{PORT}}|$NX|; s|{{H2PORT}}|$NX_H2|; s|{{UPSTREAM}}|127.0.0.1:$UP|; s|{{BUFFERING}}|on|; s|{{WORKERS}}|1|; s|{{ACCESS_LOG}}|$log|" \
        "$HERE/nginx/proxy.conf" >"$WORK/px.conf"
    mkdir -p "$WORK/px"
}

# start_nginx_proxy: the nginx contender on CPU 0; sets `worker` to its worker process.
start_nginx_proxy() {
    nginx_conf
    taskset -c 0 nginx -c "$WORK/px.conf" -p "$WORK/px" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$NX"
    worker=$(pgrep -P "${PIDS[-1]}" | head -1)
}

# oha_load N [PORT]: N requests, 8 at a time, to strait (or PORT).
oha_load() { oha --no-tui -n "$1" -c 8 -m POST "${HDRS[@]}" -d "$BODY" "http://127.0.0.1:${2:-$PX}/v1/messages"; }

# callgrind_count PID PORT N: zeroes PID's counters after a warm-up, sends N requests
# to PORT, dumps, and prints instructions per request. A process asleep in epoll_wait
# takes a valgrind command only when it wakes, so each command is followed by a
# request (counted in N's divisor).
callgrind_count() {
    local pid=$1 port=$2 n=$3
    oha_load 500 "$port" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1 &
    sleep 0.3
    oha_load 1 "$port" >/dev/null
    wait $!
    oha_load "$n" "$port" | grep -E "Success rate"
    callgrind_control -d "$pid" >/dev/null 2>&1 &
    sleep 0.3
    oha_load 1 "$port" >/dev/null
    wait $!
    sleep 1
    local total
    total=$(callgrind_annotate "$(ls -S "$WORK"/cg.*.1 | head -1)" 2>/dev/null |
        awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "instructions per request: $((total / (n + 1)))  ($total over $((n + 1)) requests)"
    # PROFILE_KEEP=FILE keeps the profile for callgrind_annotate --inclusive=yes.
    [ -n "${PROFILE_KEEP:-}" ] && cp "$(ls -S "$WORK"/cg.*.1 | head -1)" "$PROFILE_KEEP"
    return 0
}

# cpu_of PID PORT SECONDS: wrk -c32 against PORT; prints CPU per request.
cpu_of() {
    local pid=$1 port=$2 secs=$3
    taskset -c 1 wrk -t1 -c32 -d1s -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    req=$(echo "$out" | grep -o '"requests":[0-9]*' | cut -d: -f2)
    tick=$(getconf CLK_TCK)
    awk -v r="$req" -v s="$secs" -v u=$((u1 - u0)) -v k=$((s1 - s0)) -v t="$tick" 'BEGIN {
        printf "requests/s %d  cpu per request %.2f us  (user %.2f us, system %.2f us)\n",
            r / s, (u + k) * 1e6 / t / r, u * 1e6 / t / r, k * 1e6 / t / r }'
}

# kernel_of PID PORT SECONDS: wrk -c32 against PORT; prints system calls (by kind) and
# TCP segments sent on loopback (by every process, both directions) per request.
kernel_of() {
    local pid=$1 port=$2 secs=$3
    taskset -c 1 wrk -t1 -c32 -d1s -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages" >/dev/null
    local ev=raw_syscalls:sys_enter
    for s in sendto recvfrom writev readv read write epoll_wait epoll_ctl; do ev+=",syscalls:sys_enter_$s"; done
    segs0=$(awk '/^Tcp:/ {getline; print $12}' /proc/net/snmp)
    perf stat -x, -e "$ev" -p "$pid" -o "$WORK/perf.out" -- sleep "$secs" &
    local ps=$!
    out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages")
    wait "$ps"
    segs1=$(awk '/^Tcp:/ {getline; print $12}' /proc/net/snmp)
    req=$(echo "$out" | grep -o '"requests":[0-9]*' | cut -d: -f2)
    awk -F, -v r="$req" '/sys_enter/ && $1 + 0 > 0 {
        n = $3; sub(/.*sys_enter_?/, "", n); if (n == "") n = "all system calls";
        printf "%-18s %6.3f per request\n", n, $1 / r }' "$WORK/perf.out"
    awk -v r="$req" -v s=$((segs1 - segs0)) 'BEGIN { printf "%-18s %6.3f per request (all processes; segments, not calls)\n", "TCP segments", s / r }'
}

# samples_of PID PORT SECS: cpu-clock samples of PID (10 kHz, so one sample is 100 us)
# during SECS of wrk -c32, as nanoseconds per request by function; the 40 largest
# (SAMPLES_TOP=N for more).
samples_of() {
    local pid=$1 port=$2 secs=$3
    taskset -c 1 wrk -t1 -c32 -d1s -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages" >/dev/null
    perf record -e cpu-clock -F 10000 -p "$pid" -o "$WORK/samples.data" -- sleep "$secs" >/dev/null 2>&1 &
    local pr=$!
    out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages")
    wait "$pr"
    req=$(echo "$out" | grep -o '"requests":[0-9]*' | cut -d: -f2)
    perf report -i "$WORK/samples.data" --no-children --sort sym -F sample,sym --stdio 2>/dev/null |
        awk -v r="$req" '$1 ~ /^[0-9]+$/ && NF >= 3 {
            ns = $1 * 100000 / r; kind = $2; $1 = ""; $2 = ""; sub(/^ +/, "");
            total += ns; if (kind == "[k]") kernel += ns;
            printf "%9.1f ns  %s %s\n", ns, kind, $0 }
            END { printf "%9.1f ns  total per request (kernel %.1f, user %.1f), %d requests\n",
                  total, kernel, total - kernel, r }' | sort -k1 -nr | head -$((${SAMPLES_TOP:-40} + 1))
}

# copies_of PID PORT SECONDS: every call PID makes to glibc's memmove routines while
# wrk -c4 runs, by size and by the line that called it; calls made at least once per
# two requests are listed. The routine glibc picked for this CPU is internal, so each
# candidate is probed by its address in the debug symbols (libc6-dbg).
copies_of() {
    local pid=$1 port=$2 secs=$3 libc id dbg
    libc=$(awk '$NF ~ /libc\.so/ {print $NF; exit}' "/proc/$pid/maps")
    id=$(readelf -n "$libc" | awk '/Build ID/ {print $3}')
    dbg=/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug
    if [ ! -f "$dbg" ]; then
        echo "no glibc debug symbols (apt-get install libc6-dbg)" >&2
        exit 1
    fi
    perf probe -q -d 'strait_copy:*' 2>/dev/null || true
    local events=() i=0
    while read -r addr name; do
        perf probe -q -x "$libc" -a "strait_copy:c$i=0x$addr len=%dx:u64" >/dev/null 2>&1 &&
            events+=(-e "strait_copy:c$i") && i=$((i + 1))
    done < <(nm "$dbg" | awk '$3 ~ /^__memmove_[a-z0-9]+_unaligned(_erms)?$/ {print $1, $3}')
    taskset -c 1 wrk -t1 -c4 -d1s -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages" >/dev/null
    perf record "${events[@]}" --call-graph dwarf,1024 -m 2048 -p "$pid" -o "$WORK/copies.data" \
        -- sleep "$((secs + 1))" >/dev/null 2>&1 &
    local pr=$!
    sleep 0.5
    out=$(taskset -c 1 wrk -t1 -c4 -d"${secs}s" -s "$HERE/wrk_post.lua" "http://127.0.0.1:$port/v1/messages")
    wait "$pr"
    perf probe -q -d 'strait_copy:*' 2>/dev/null || true
    req=$(echo "$out" | grep -o '"requests":[0-9]*' | cut -d: -f2)
    # Caller addresses are offsets in the binary's file; the text segment's virtual
    # addresses lie `shift` above them.
    local shift
    shift=$(readelf -lW "$BIN" | awk '$1 == "LOAD" && $8 == "E" {print $3, $2}' | { read -r v o; echo $((v - o)); })
    perf script -i "$WORK/copies.data" -F trace,ip 2>/dev/null | awk -v r="$req" '
        /len=/ { len = $NF; n = 0; next }
        NF == 0 { if (len != "") { key[len " " ip]++; total++ }; len = ""; ip = ""; next }
        { n++; if (n == 2) ip = $1 }
        END {
            printf "%.1f calls per request (%d requests)\n", total / r, r
            for (k in key) if (key[k] >= r / 2) printf "%.2f %s\n", key[k] / r, k
        }' >"$WORK/copies.txt"
    head -1 "$WORK/copies.txt"
    tail -n +2 "$WORK/copies.txt" | while read -r per len ip; do
        line=$(addr2line -i -e "$BIN" "$(printf '0x%x' $((0x$ip + shift - 1)))" 2>/dev/null |
            grep -v '/rustc/\|/registry/' | head -1 || true)
        printf "%5s per request  %-9s %s\n" "$per" "${len#len=} B" "${line#"$(dirname "$HERE")"/}"
    done | sort -k1,1nr -k4,4nr
}

cmd=${1:-}
case "$cmd" in
callgrind)
    BIN=$2
    start_upstream
    start_strait valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p"
    callgrind_count "$SP" "$PX" "${3:-3000}"
    ;;
callgrind-nginx)
    start_upstream
    nginx_conf
    # One process: the worker's work without a fork for valgrind to follow.
    echo "master_process off;" >>"$WORK/px.conf"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" nginx -c "$WORK/px.conf" -p "$WORK/px" \
        >"$WORK/nginx.log" 2>&1 &
    PIDS+=($!)
    wait_port "$NX"
    callgrind_count "${PIDS[-1]}" "$NX" "${2:-3000}"
    ;;
cpu)
    BIN=$2
    start_upstream
    start_strait taskset -c 0
    cpu_of "$SP" "$PX" "${3:-5}"
    ;;
cpu-nginx)
    start_upstream
    start_nginx_proxy
    cpu_of "$worker" "$NX" "${2:-5}"
    ;;
kernel)
    BIN=$2
    start_upstream
    start_strait taskset -c 0
    kernel_of "$SP" "$PX" "${3:-4}"
    ;;
kernel-nginx)
    start_upstream
    start_nginx_proxy
    kernel_of "$worker" "$NX" "${2:-4}"
    ;;
samples)
    BIN=$2
    start_upstream
    start_strait taskset -c 0
    samples_of "$SP" "$PX" "${3:-5}"
    ;;
samples-nginx)
    start_upstream
    start_nginx_proxy
    samples_of "$worker" "$NX" "${2:-5}"
    ;;
copies)
    BIN=$2
    start_upstream
    start_strait taskset -c 0
    copies_of "$SP" "$PX" "${3:-1}"
    ;;
syscalls)
    BIN=$2
    start_upstream
    start_strait env
    oha_load 500 >/dev/null
    strace -f -c -p "$SP" -o "$WORK/strace.out" &
    ST=$!
    sleep 0.5
    oha_load 2000 | grep -E "Success rate"
    sleep 0.3
    kill -INT "$ST"
    wait "$ST" 2>/dev/null || true
    awk 'NR > 2 && $NF != "total" && $4 + 0 > 0 { printf "%-16s %6.2f per request\n", $NF, $4 / 2000 }' \
        "$WORK/strace.out" | sort -k2 -nr | head -12
    ;;
*)
    sed -n '2,29p' "$0"
    exit 2
    ;;
esac
