#!/usr/bin/env bash
# A whole Strait cluster on one machine: etcd, Redis (AOF), a private RabbitMQ, the mock
# Anthropic API, three regions of nodes on 127.0.0.1, the coordinator with its dashboard
# (and its DNS server when the binary has one), a client key and a little traffic.
# Ctrl-C stops everything it started, by PID.
#
#   deploy/demo.sh                     # release binaries from target/release
#   deploy/demo.sh --debug             # target/debug (what the test suite builds)
#   ANTHROPIC_API_KEY=sk-ant-... deploy/demo.sh --real-api   # the real API instead of the mock
#
# Options:
#   --debug               use target/debug instead of target/release
#   --bin-dir DIR         take the binaries from DIR (or STRAIT_DEMO_BIN_DIR)
#   --real-api            forward to https://api.anthropic.com with $ANTHROPIC_API_KEY
#                         (the traffic generator is then off unless --traffic: it spends tokens)
#   --traffic / --no-traffic   force the traffic generator on or off
#   --nodes-per-region N  nodes in each of the three regions (default 2)
#   --duration SECS       stop by itself after SECS seconds (default: run until Ctrl-C)
#   --workdir DIR         where data and logs go (default: a new directory under /tmp)
#
# Needs: etcd, redis-server, rabbitmq-server (Debian: apt-get install etcd-server
# etcd-client redis-server rabbitmq-server), python3 and curl.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROFILE=release
BIN_DIR="${STRAIT_DEMO_BIN_DIR:-}"
REAL_API=0
TRAFFIC=""
PER_REGION=2
DURATION=0
WORK=""
REGIONS=(us-east eu-west ap-south)

while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --bin-dir) BIN_DIR="$2"; shift ;;
    --real-api) REAL_API=1 ;;
    --traffic) TRAFFIC=1 ;;
    --no-traffic) TRAFFIC=0 ;;
    --nodes-per-region) PER_REGION="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --workdir) WORK="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$TRAFFIC" ]; then TRAFFIC=$((1 - REAL_API)); fi
if [ -z "$BIN_DIR" ]; then BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"; fi

NODE="$BIN_DIR/strait-node"
COORD="$BIN_DIR/strait-coordinator"
MOCK="$BIN_DIR/strait-mock-upstream"

die() { echo "demo: $*" >&2; exit 1; }

need_bins=("$NODE" "$COORD")
if [ "$REAL_API" = 0 ]; then need_bins+=("$MOCK"); fi
for b in "${need_bins[@]}"; do
  if [ ! -x "$b" ]; then
    flag=""; [ "$PROFILE" = release ] && flag=" --release"
    die "$b is missing. Build the binaries first (a cold release build takes about 12 minutes on two cores):
  cargo build$flag -p strait-node -p strait-coordinator -p strait-chaos
or use the debug ones with --debug."
  fi
done
for t in etcd redis-server python3 curl epmd; do
  command -v "$t" >/dev/null || die "$t is not installed (Debian: apt-get install etcd-server etcd-client redis-server rabbitmq-server python3 curl)"
done
RABBIT_SBIN=""
# The newest installed version (globs expand sorted).
for d in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do [ -d "$d" ] && RABBIT_SBIN="$d"; done
[ -x "$RABBIT_SBIN/rabbitmq-server" ] || die "RabbitMQ is not installed (Debian: apt-get install rabbitmq-server)"
if [ "$REAL_API" = 1 ] && [ -z "${ANTHROPIC_API_KEY:-}" ]; then
  die "--real-api needs ANTHROPIC_API_KEY in the environment"
fi

if [ -z "$WORK" ]; then WORK="$(mktemp -d /tmp/strait-demo.XXXXXX)"; fi
mkdir -p "$WORK/logs"
: >"$WORK/pids"

# Every process started, stopped in reverse order by PID.
PIDS=()
NAMES=()
EPMD_PORT=""
SLEEP_PID=""
STOPPING=0

# setsid: a Ctrl-C in the terminal reaches only this script, which then stops the
# others in order (nodes drain before the services they use go away).
start() {
  local name=$1; shift
  setsid "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  PIDS+=("$!"); NAMES+=("$name")
  echo "$! $name" >>"$WORK/pids"
}

stop_pid() {
  local pid=$1 name=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "demo: $name ($pid) did not stop within 10 s: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  [ "$STOPPING" = 1 ] && return
  STOPPING=1
  trap '' INT TERM
  echo
  echo "demo: stopping ${#PIDS[@]} processes"
  local i
  if [ -n "$SLEEP_PID" ]; then kill "$SLEEP_PID" 2>/dev/null || true; fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[$i]}" "${NAMES[$i]}"
  done
  # The Erlang VM started its own epmd, which detaches: stop it through its port.
  if [ -n "$EPMD_PORT" ]; then ERL_EPMD_PORT="$EPMD_PORT" epmd -kill >/dev/null 2>&1 || true; fi
  echo "demo: stopped; data and logs kept in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name pid [seconds]
  local deadline=$((SECONDS + ${4:-30}))
  until port_open "$1"; do
    kill -0 "$3" 2>/dev/null || die "$2 exited at start; see $WORK/logs/$2.log"
    [ $SECONDS -lt $deadline ] || die "$2 did not open port $1; see $WORK/logs/$2.log"
    sleep 0.1
  done
}

wait_http() { # url name [seconds]
  local deadline=$((SECONDS + ${3:-30}))
  until curl -sf -o /dev/null --max-time 2 "$1"; do
    [ $SECONDS -lt $deadline ] || die "$2 did not answer $1; see $WORK/logs/"
    sleep 0.2
  done
}

# Free ports, all held open at once so that they differ.
N_PORTS=$((9 + 2 * 3 * PER_REGION))
read -r -a P <<<"$(python3 - "$N_PORTS" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
ETCD_PORT=${P[0]}; ETCD_PEER=${P[1]}; REDIS_PORT=${P[2]}; AMQP_PORT=${P[3]}; DIST_PORT=${P[4]}
EPMD_PORT_WANT=${P[5]}; MOCK_PORT=${P[6]}; COORD_PORT=${P[7]}; DNS_PORT=${P[8]}

hex32() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
ADMIN_TOKEN="$(hex32)"
KEK="$(hex32)"
CLUSTER_SECRET="$(hex32)"
# Secrets go to files readable by this user only, never onto command lines.
umask 077
printf %s "$ADMIN_TOKEN" >"$WORK/admin-token"
printf %s "$KEK" >"$WORK/kek"
printf %s "$CLUSTER_SECRET" >"$WORK/cluster-secret"

echo "demo: binaries from $BIN_DIR; data and logs in $WORK"

# --- RabbitMQ first: it takes the longest to boot (about 5 s) ---
MQ="$WORK/rabbitmq"
mkdir -p "$MQ/home"
echo "[]." >"$MQ/enabled_plugins"
printf 'disk_free_limit.absolute = 1MB\nloopback_users.guest = true\n' >"$MQ/rabbitmq.conf"
mq_env=(env HOME="$MQ/home" RABBITMQ_NODENAME="straitdemo$$@localhost"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$DIST_PORT"
  ERL_EPMD_PORT="$EPMD_PORT_WANT" RABBITMQ_MNESIA_BASE="$MQ/mnesia" RABBITMQ_LOG_BASE="$MQ/log"
  RABBITMQ_ENABLED_PLUGINS_FILE="$MQ/enabled_plugins" RABBITMQ_CONFIG_FILE="$MQ/rabbitmq"
  RABBITMQ_PID_FILE="$MQ/broker.pid"
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
  RUNNING_UNDER_SYSTEMD=true)
EPMD_PORT="$EPMD_PORT_WANT"
# RUNNING_UNDER_SYSTEMD makes the script exec the VM: the PID is the broker's own.
start rabbitmq "${mq_env[@]}" "$RABBIT_SBIN/rabbitmq-server"
MQ_PID=$!

# --- etcd ---
start etcd etcd --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" --logger=zap --log-outputs=stderr
ETCD="http://127.0.0.1:$ETCD_PORT"

# --- Redis with AOF (the deferred store must not lose acknowledged writes) ---
mkdir -p "$WORK/redis"
start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK/redis" --save '' \
  --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
REDIS="redis://127.0.0.1:$REDIS_PORT/"
wait_port "$REDIS_PORT" redis "${PIDS[-1]}"

# --- the upstream ---
if [ "$REAL_API" = 1 ]; then
  UPSTREAM="https://api.anthropic.com"
else
  # A reply streams 40 tokens at 25 ms after 300 ms: charts with something to show.
  start mock-upstream "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --ttft-ms 300 --token-interval-ms 25 \
    --tokens 40 --no-record
  wait_port "$MOCK_PORT" mock-upstream "${PIDS[-1]}"
  UPSTREAM="http://127.0.0.1:$MOCK_PORT"
fi

wait_http "$ETCD/health" etcd 30

# --- the coordinator (its DNS server when this build has one) ---
DNS_NAME=api.strait.test
coord_args=(serve --listen "127.0.0.1:$COORD_PORT" --etcd "$ETCD" --region "${REGIONS[0]}"
  --id coordinator-demo --admin-token-file "$WORK/admin-token" --kek-file "$WORK/kek"
  --cluster-secret-file "$WORK/cluster-secret" --lease-ttl 2s --log-level info)
DNS=0
if "$COORD" serve --help 2>/dev/null | grep -q -- '--dns-listen'; then
  DNS=1
  coord_args+=(--dns-listen "127.0.0.1:$DNS_PORT" --dns-name "$DNS_NAME")
fi
start coordinator env -u STRAIT_ADMIN_TOKEN -u STRAIT_KEK "$COORD" "${coord_args[@]}"
COORD_URL="http://127.0.0.1:$COORD_PORT"
wait_http "$COORD_URL/healthz" coordinator 30
export STRAIT_COORDINATOR_URL="$COORD_URL" STRAIT_ADMIN_TOKEN="$ADMIN_TOKEN"
# Writes need the leader: the only coordinator wins the election within a lease TTL.
deadline=$((SECONDS + 20))
until curl -sf -H "authorization: Bearer $ADMIN_TOKEN" "$COORD_URL/v1/leader" | grep -q coordinator-demo; do
  [ $SECONDS -lt $deadline ] || die "the coordinator did not become leader; see $WORK/logs/coordinator.log"
  sleep 0.2
done

# --- config through the coordinator: an upstream key (sealed in etcd) and a client key ---
if [ "$REAL_API" = 1 ]; then
  printf %s "$ANTHROPIC_API_KEY" | "$COORD" pools add-key default --label demo \
    >>"$WORK/logs/cli.log" 2>&1 || die "pools add-key failed; see $WORK/logs/cli.log"
else
  printf %s "sk-ant-demo-mock-key" | "$COORD" pools add-key default --label mock \
    >>"$WORK/logs/cli.log" 2>&1 || die "pools add-key failed; see $WORK/logs/cli.log"
fi
"$COORD" keys create demo-team --rpm 1200 --otpm 400000 --concurrency 32 \
  >"$WORK/client-key.json" 2>>"$WORK/logs/cli.log" || die "keys create failed; see $WORK/logs/cli.log"
CLIENT_KEY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/client-key.json")"
printf %s "$CLIENT_KEY" >"$WORK/client-key"

# --- RabbitMQ must be up before the nodes connect to it ---
wait_port "$AMQP_PORT" rabbitmq "$MQ_PID" 60
"${mq_env[@]}" "$RABBIT_SBIN/rabbitmqctl" -q await_startup --timeout 60 >/dev/null \
  || die "RabbitMQ did not finish booting; see $WORK/rabbitmq/log"
AMQP="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"

# --- nodes: three regions, distinct ports on 127.0.0.1 ---
NODE_URLS=()
NODE_ADMINS=()
k=9
for region in "${REGIONS[@]}"; do
  for i in $(seq 1 "$PER_REGION"); do
    pub=${P[$k]}; adm=${P[$((k + 1))]}; k=$((k + 2))
    id="$region-$i"
    start "node-$id" env -u STRAIT_UPSTREAM_KEYS -u STRAIT_CLIENT_KEYS -u STRAIT_ADMIN_TOKEN \
      STRAIT_AMQP_URL="$AMQP" \
      "$NODE" --listen "127.0.0.1:$pub" --admin-listen "127.0.0.1:$adm" --upstream "$UPSTREAM" \
      --etcd "$ETCD" --region "$region" --node-id "$id" --state-dir "$WORK/state-$id" \
      --kek-file "$WORK/kek" --cluster-secret-file "$WORK/cluster-secret" \
      --redis "$REDIS" --workers 1 --log-format json
    NODE_URLS+=("http://127.0.0.1:$pub")
    NODE_ADMINS+=("http://127.0.0.1:$adm")
  done
done
for j in "${!NODE_URLS[@]}"; do
  wait_http "${NODE_ADMINS[$j]}/readyz" "node ${NODE_URLS[$j]}" 40
done

# --- the traffic generator ---
if [ "$TRAFFIC" = 1 ]; then
  start traffic python3 "$ROOT/deploy/demo-traffic.py" --key-file "$WORK/client-key" \
    --nodes "$(IFS=,; echo "${NODE_URLS[*]}")"
fi

# A machine-readable summary (the test reads it).
{
  echo "WORK=$WORK"
  echo "COORDINATOR=$COORD_URL"
  echo "ADMIN_TOKEN=$ADMIN_TOKEN"
  echo "CLIENT_KEY=$CLIENT_KEY"
  echo "NODES=$(IFS=,; echo "${NODE_URLS[*]}")"
  echo "NODE_ADMINS=$(IFS=,; echo "${NODE_ADMINS[*]}")"
  echo "ETCD=$ETCD"
  echo "REDIS=$REDIS"
  echo "AMQP_PORT=$AMQP_PORT"
  echo "EPMD_PORT=$EPMD_PORT"
  if [ "$DNS" = 1 ]; then echo "DNS=127.0.0.1:$DNS_PORT"; echo "DNS_NAME=$DNS_NAME"; fi
  echo "PIDS=${PIDS[*]}"
} >"$WORK/demo.env"

N0="${NODE_URLS[0]}"
cat <<EOF

Strait demo cluster is up: ${#NODE_URLS[@]} nodes in ${#REGIONS[@]} regions (${REGIONS[*]}).

  Dashboard     $COORD_URL/   (sign in with the admin token)
  Admin token   $ADMIN_TOKEN
  Client key    $CLIENT_KEY
  Nodes         ${NODE_URLS[*]}
  Node admin    ${NODE_ADMINS[*]}  (/metrics, /readyz)
  Upstream      $UPSTREAM
  etcd          $ETCD      Redis $REDIS      RabbitMQ amqp://127.0.0.1:$AMQP_PORT
EOF
if [ "$DNS" = 1 ]; then
  echo "  DNS           dig @127.0.0.1 -p $DNS_PORT $DNS_NAME"
fi
cat <<EOF

Try it:
  curl $N0/v1/messages -H 'authorization: Bearer $CLIENT_KEY' \\
    -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \\
    -d '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}'
  python3 -c 'import anthropic; print(anthropic.Anthropic(base_url="$N0", api_key="$CLIENT_KEY").messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role":"user","content":"Hello"}]).content[0].text)'
  # deferred: 202 and an id to poll with GET $N0/v1/strait/deferred/<id>
  curl -i $N0/v1/messages -H 'strait-defer: always' -H 'authorization: Bearer $CLIENT_KEY' \\
    -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \\
    -d '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Later"}]}'
  # the CLI: export STRAIT_COORDINATOR_URL=$COORD_URL STRAIT_ADMIN_TOKEN=\$(cat $WORK/admin-token)
  $COORD nodes list

Traffic generator: $([ "$TRAFFIC" = 1 ] && echo "on (logs/traffic.log)" || echo off). Logs: $WORK/logs/
Press Ctrl-C to stop everything.
EOF
echo "demo: ready" # the test waits for this line

if [ "$DURATION" != 0 ]; then
  sleep "$DURATION" &
  SLEEP_PID=$!
  wait $SLEEP_PID || true
  exit 0
fi
# Sleep in the background and wait on it, so that Ctrl-C is handled at once.
while true; do
  sleep 3600 &
  SLEEP_PID=$!
  wait $SLEEP_PID || true
done
