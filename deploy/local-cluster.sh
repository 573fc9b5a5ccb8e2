#!/usr/bin/env bash
# A Magnetar cluster on loopback, each part a separate process with its own config file, data
# dir and log: etcd, three bookies and two brokers.
#
#   bash deploy/local-cluster.sh up             # start what is not running, wait until ready
#   bash deploy/local-cluster.sh status         # one line per process: NAME PID ADDRESS
#   bash deploy/local-cluster.sh down [--clean] # stop brokers, bookies, etcd (--clean: delete the data)
#   bash deploy/local-cluster.sh clean          # down --clean
#
#   process    address                                config / data / log under the state dir
#   etcd       127.0.0.1:2379 (peers 2380)            etcd/etcd.yaml  etcd/data  etcd/etcd.log
#   bookie-N   127.0.0.1:3181, 3182, 3183             bookie-N/bookie.toml  bookie-N/data  bookie-N/bookie.log
#   broker-1   Pulsar 127.0.0.1:6650, HTTP 8080       broker-1/broker.toml  broker-1/broker.log
#   broker-2   Pulsar 127.0.0.1:6660, HTTP 8090       broker-2/broker.toml  broker-2/broker.log
#
# New ledgers are replicated 2/2/2 (ensemble, write quorum, ack quorum; Pulsar's broker.conf
# defaults): every entry is on two of the three bookies, so one bookie may be down.
#
# The config files are written by the first `up` and kept afterwards: edit one, then `down` and
# `up` to apply it (delete it to get the generated one back). The ports are fixed when the state
# dir is created (recorded in <state dir>/ports).
#
# Environment:
#   MAGNETAR_CLUSTER_DIR        state dir (default: ./local-cluster)
#   MAGNETAR_BIN                the magnetar binary (default: <target>/release/magnetar, else
#                               <target>/debug/magnetar, else built with cargo, dev profile)
#   MAGNETAR_CLUSTER_PORT_BASE  use ports BASE..BASE+8 instead of the ones above: etcd BASE and
#                               BASE+1, bookies BASE+2..BASE+4, broker-1 BASE+5 (Pulsar) and
#                               BASE+6 (HTTP), broker-2 BASE+7 and BASE+8 (tests use it)
#   MAGNETAR_CLUSTER_START_TIMEOUT  seconds `up` waits for each process (default 60)
#   MAGNETAR_CLUSTER_STOP_GRACE     seconds `down` waits after SIGTERM before SIGKILL (default 30)
#   RUST_LOG                    log filter of the magnetar processes (default info)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/system-packages.sh
source "$REPO/deploy/system-packages.sh"

CLUSTER_NAME=magnetar-local
BOOKIES=(bookie-1 bookie-2 bookie-3)
BROKERS=(broker-1 broker-2)
# Start order; `down` stops in the reverse order (brokers first, etcd last).
PROCESSES=(etcd "${BOOKIES[@]}" "${BROKERS[@]}")
START_TIMEOUT=${MAGNETAR_CLUSTER_START_TIMEOUT:-60}
STOP_GRACE=${MAGNETAR_CLUSTER_STOP_GRACE:-30}
# A file in the state dir that says it is ours: `clean` deletes only such a dir.
MARKER=.magnetar-local-cluster

die() {
    echo "error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------------------------
# State dir and ports

# Absolute and without symlinks: the config file paths in the processes' command lines, which
# tell our processes from others (running_pid), then read the same from any working directory.
STATE_DIR=$(realpath -m -- "${MAGNETAR_CLUSTER_DIR:-./local-cluster}")

# Ports in start order: etcd client, etcd peer, bookie-1..3, broker-1 Pulsar, broker-1 HTTP,
# broker-2 Pulsar, broker-2 HTTP.
DEFAULT_PORTS="2379 2380 3181 3182 3183 6650 8080 6660 8090"

# Prints the ports a new cluster gets: the defaults, or BASE..BASE+8.
wanted_ports() {
    local base=${MAGNETAR_CLUSTER_PORT_BASE:-}
    if [[ -z $base ]]; then
        echo "$DEFAULT_PORTS"
        return
    fi
    if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1 || base > 65527)); then
        die "MAGNETAR_CLUSTER_PORT_BASE=$base: need a port from 1 to 65527 (the cluster uses BASE..BASE+8)"
    fi
    echo "$base $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)) $((base + 6)) $((base + 7)) $((base + 8))"
}

# Sets the port variables: from <state dir>/ports when the cluster exists, else wanted_ports.
load_ports() {
    local ports wanted
    wanted=$(wanted_ports)
    if [[ -f $STATE_DIR/ports ]]; then
        ports=$(<"$STATE_DIR/ports")
        if [[ -n ${MAGNETAR_CLUSTER_PORT_BASE:-} && $ports != "$wanted" ]]; then
            die "the cluster in $STATE_DIR uses ports $ports, not MAGNETAR_CLUSTER_PORT_BASE=$MAGNETAR_CLUSTER_PORT_BASE ($wanted); run '$0 clean' first or pick another MAGNETAR_CLUSTER_DIR"
        fi
    else
        ports=$wanted
    fi
    read -r ETCD_PORT ETCD_PEER_PORT BOOKIE_PORT_1 BOOKIE_PORT_2 BOOKIE_PORT_3 \
        BROKER_PULSAR_PORT_1 BROKER_HTTP_PORT_1 BROKER_PULSAR_PORT_2 BROKER_HTTP_PORT_2 <<<"$ports"
    [[ -n ${BROKER_HTTP_PORT_2:-} ]] || die "$STATE_DIR/ports: expected nine ports, found '$ports'"
    PORTS=$ports
}

# The port a process is reached at (for the brokers: the Pulsar port).
port_of() {
    case $1 in
        etcd) echo "$ETCD_PORT" ;;
        bookie-1) echo "$BOOKIE_PORT_1" ;;
        bookie-2) echo "$BOOKIE_PORT_2" ;;
        bookie-3) echo "$BOOKIE_PORT_3" ;;
        broker-1) echo "$BROKER_PULSAR_PORT_1" ;;
        broker-2) echo "$BROKER_PULSAR_PORT_2" ;;
        *) die "unknown process $1" ;;
    esac
}

# A bookie's HTTP port: its port + 5000 with the default ports, else 0 (any free port).
bookie_http_port() {
    if [[ $PORTS == "$DEFAULT_PORTS" ]]; then
        echo $(($(port_of "$1") + 5000))
    else
        echo 0
    fi
}

http_port_of() {
    case $1 in
        broker-1) echo "$BROKER_HTTP_PORT_1" ;;
        broker-2) echo "$BROKER_HTTP_PORT_2" ;;
        *) die "$1 has no HTTP port" ;;
    esac
}

# Per process: <state dir>/<name>/ holds its config file, data dir, log and pid file.
dir_of() { echo "$STATE_DIR/$1"; }
pid_file() { echo "$STATE_DIR/$1/$1.pid"; }
log_file() {
    case $1 in
        etcd) echo "$STATE_DIR/etcd/etcd.log" ;;
        bookie-*) echo "$STATE_DIR/$1/bookie.log" ;;
        broker-*) echo "$STATE_DIR/$1/broker.log" ;;
    esac
}
config_file() {
    case $1 in
        etcd) echo "$STATE_DIR/etcd/etcd.yaml" ;;
        bookie-*) echo "$STATE_DIR/$1/bookie.toml" ;;
        broker-*) echo "$STATE_DIR/$1/broker.toml" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Processes

# Prints the pid of a running process of ours, or nothing. A pid counts only while that
# process is alive (not a zombie) and, where /proc exists, was started with our config file,
# so a stale pid file whose number was reused by another program reads as "not running".
running_pid() {
    local name=$1 file pid state
    file=$(pid_file "$name")
    [[ -f $file ]] || return 0
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [[ -r /proc/$pid/stat ]]; then
        state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 0
        [[ $state != Z ]] || return 0
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$(config_file "$name")" || return 0
    fi
    echo "$pid"
}

# True when something accepts TCP connections on 127.0.0.1:port.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Prints the HTTP status code of GET http://127.0.0.1:port/path, or 000 if there is no answer.
http_status() {
    local port=$1 path=$2
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$port$path" || true
        return
    fi
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
        read -r _ code _ <&3 && echo "$code"' _ "$port" "$path" 2>/dev/null || echo 000
}

# True when the process's log, from byte offset on, has the line that says it is ready.
log_has_since() {
    local log=$1 offset=$2 text=$3
    tail -c +"$((offset + 1))" "$log" 2>/dev/null | grep -qF "$text"
}

# True when `name` (started with its log at byte `offset`) serves.
ready() {
    local name=$1 offset=$2
    case $name in
        etcd) [[ $(http_status "$ETCD_PORT" /health) == 200 ]] ;;
        bookie-*) log_has_since "$(log_file "$name")" "$offset" "magnetar bookie listening on" ;;
        broker-*)
            [[ $(http_status "$(http_port_of "$name")" /admin/v2/clusters) == 200 ]] &&
                port_open "$(port_of "$name")"
            ;;
    esac
}

# Sets COMMAND to the command line of a process.
set_command() {
    local name=$1
    case $name in
        etcd) COMMAND=("$ETCD_BIN" --config-file "$(config_file etcd)") ;;
        bookie-*) COMMAND=("$MAGNETAR" bookie --config "$(config_file "$name")") ;;
        broker-*) COMMAND=("$MAGNETAR" broker --config "$(config_file "$name")") ;;
    esac
}

# Ports a process binds.
ports_of() {
    case $1 in
        etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
        broker-*) echo "$(port_of "$1") $(http_port_of "$1")" ;;
        *) port_of "$1" ;;
    esac
}

# Fails when a port of a process about to start is taken, before anything starts: a port held
# by another program is reported as such, not as a process that did not come up.
check_ports_free() {
    local name port
    for name in "$@"; do
        for port in $(ports_of "$name"); do
            if port_open "$port"; then
                die "$name: port $port on 127.0.0.1 is already in use by another process; stop it, or use other ports (MAGNETAR_CLUSTER_PORT_BASE with another MAGNETAR_CLUSTER_DIR)"
            fi
        done
    done
}

# Starts one process in the background, detached from this shell, and records its pid. Sets
# LOG_OFFSET to the size its log had before the start (the readiness check reads from there on).
start() {
    local name=$1 log
    log=$(log_file "$name")
    touch "$log"
    LOG_OFFSET=$(wc -c <"$log")
    echo "==== $(date '+%F %T') local-cluster.sh: starting $name" >>"$log"
    set_command "$name"
    # Variables that would override the config file are not passed on.
    nohup env -u MAGNETAR_METADATA_URL -u MAGNETAR_BOOKIE_ID RUST_LOG="${RUST_LOG:-info}" \
        "${COMMAND[@]}" >>"$log" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
}

# Waits until `name` serves; on failure prints why with the end of its log and exits.
wait_ready() {
    local name=$1 offset=$2 pid deadline
    pid=$(<"$(pid_file "$name")")
    deadline=$((SECONDS + START_TIMEOUT + 1))
    while ! ready "$name" "$offset"; do
        if [[ -z $(running_pid "$name") ]]; then
            rm -f "$(pid_file "$name")"
            fail_start "$name" "$offset" "exited before it was ready"
        fi
        if ((SECONDS >= deadline)); then
            fail_start "$name" "$offset" "is not ready after ${START_TIMEOUT}s (pid $pid still runs)"
        fi
        sleep 0.2
    done
    echo "$name ready: pid $pid, $(describe "$name")"
}

# Reports a process that did not come up, with the end of its log since `offset` (from its
# `Error:` line when it wrote one, so a backtrace does not hide the reason), and exits.
fail_start() {
    local name=$1 offset=$2 what=$3 log
    log=$(log_file "$name")
    {
        echo "error: $name $what; its log ($log) says:"
        tail -c +"$((offset + 1))" "$log" | awk '
            /^Error: / { error = 1 }
            /^Stack backtrace:/ { error_done = 1 }
            error && !error_done && shown < 20 { print; shown++ }
            { last[NR % 30] = $0 }
            END { if (!error) for (i = NR - 29; i <= NR; i++) if (i > 0) print last[i % 30] }' |
            sed 's/^/    /'
        echo "(processes already started keep running: '$0 down' stops them)"
    } >&2
    exit 1
}

# What a process serves, for humans.
describe() {
    case $1 in
        etcd) echo "client http://127.0.0.1:$ETCD_PORT, peer http://127.0.0.1:$ETCD_PEER_PORT" ;;
        bookie-*) echo "BookieService 127.0.0.1:$(port_of "$1")" ;;
        broker-*) echo "pulsar://127.0.0.1:$(port_of "$1"), http://127.0.0.1:$(http_port_of "$1")" ;;
    esac
}

# SIGTERM to the running ones of `names`, then SIGKILL to those alive after the grace.
stop() {
    local name pid deadline entry
    local -a names=("$@") pids=() alive
    for name in "${names[@]}"; do
        pid=$(running_pid "$name")
        if [[ -n $pid ]]; then
            echo "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$name:$pid")
        fi
    done
    deadline=$((SECONDS + STOP_GRACE + 1)) # SECONDS counts whole seconds: wait at least the grace
    while true; do
        alive=()
        for entry in "${pids[@]}"; do
            [[ -n $(running_pid "${entry%%:*}") ]] && alive+=("$entry")
        done
        ((${#alive[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            for entry in "${alive[@]}"; do
                echo "${entry%%:*} (pid ${entry#*:}) still runs ${STOP_GRACE}s after SIGTERM: SIGKILL" >&2
                kill -KILL "${entry#*:}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    for name in "${names[@]}"; do
        rm -f "$(pid_file "$name")"
    done
}

# ---------------------------------------------------------------------------------------------
# Binaries and config files

# Sets MAGNETAR: $MAGNETAR_BIN, a release or debug build of this checkout, or a fresh build.
find_magnetar() {
    if [[ -n ${MAGNETAR_BIN:-} ]]; then
        [[ -x $MAGNETAR_BIN ]] || die "MAGNETAR_BIN=$MAGNETAR_BIN is not an executable file"
        MAGNETAR=$MAGNETAR_BIN
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    if [[ $target != /* ]]; then
        target="$REPO/$target" # cargo resolves a relative target dir against the cwd: $REPO below
    fi
    local candidate
    for candidate in "$target/release/magnetar" "$target/debug/magnetar"; do
        if [[ -x $candidate ]]; then
            MAGNETAR=$candidate
            return
        fi
    done
    echo "no magnetar binary in $target: building it (dev profile, as deploy/standalone.sh)"
    require_cargo
    if ! have_libclang_dev; then
        ensure_debian_packages libclang-dev
    fi
    (cd "$REPO" && cargo build --locked --bin magnetar)
    MAGNETAR="$target/debug/magnetar"
    [[ -x $MAGNETAR ]] || die "the build did not produce $MAGNETAR"
}

# Sets ETCD_BIN, installing Debian's etcd-server when there is no etcd.
find_etcd() {
    if ! command -v etcd >/dev/null 2>&1; then
        ensure_debian_packages etcd-server
    fi
    ETCD_BIN=$(command -v etcd) || die "etcd is not installed (Debian: apt-get install etcd-server)"
}

# Writes a process's config file unless it exists (so edits are kept).
write_config() {
    local name=$1 file
    file=$(config_file "$name")
    [[ -f $file ]] && return 0
    case $name in
        etcd) etcd_config >"$file" ;;
        bookie-*) bookie_config "$name" >"$file" ;;
        broker-*) broker_config "$name" >"$file" ;;
    esac
    echo "wrote $file"
}

etcd_config() {
    cat <<EOF
# etcd of the local Magnetar cluster (written by deploy/local-cluster.sh; etcd --config-file).
name: $CLUSTER_NAME
data-dir: $STATE_DIR/etcd/data
listen-client-urls: http://127.0.0.1:$ETCD_PORT
advertise-client-urls: http://127.0.0.1:$ETCD_PORT
listen-peer-urls: http://127.0.0.1:$ETCD_PEER_PORT
initial-advertise-peer-urls: http://127.0.0.1:$ETCD_PEER_PORT
initial-cluster: $CLUSTER_NAME=http://127.0.0.1:$ETCD_PEER_PORT
initial-cluster-state: new
initial-cluster-token: $CLUSTER_NAME
EOF
}

bookie_config() {
    local name=$1
    cat <<EOF
# $name of the local Magnetar cluster (written by deploy/local-cluster.sh;
# magnetar bookie --config FILE, fields in bookie/src/config.rs).
bookie_id = "$name"
listen = "127.0.0.1:$(port_of "$name")"
# /metrics and the state brokers show in bookies/all: the bookie port + 5000 (8181..8183)
# with the default ports, any free port under MAGNETAR_CLUSTER_PORT_BASE.
http_listen = "127.0.0.1:$(bookie_http_port "$name")"
advertised_address = "127.0.0.1"
metadata_service_uri = "etcd://127.0.0.1:$ETCD_PORT"
data_dir = "$STATE_DIR/$name/data"
# journal_dir = "$STATE_DIR/$name/data/journal"   # the default; best on a disk of its own

# Smaller than the defaults: three bookies share one machine.
write_cache_bytes = 16777216   # 16 MiB per half
read_cache_bytes = 16777216    # 16 MiB
entry_log_bytes = 134217728    # 128 MiB

[journal]
file_bytes = 67108864          # 64 MiB, preallocated
EOF
}

broker_config() {
    local name=$1
    cat <<EOF
# $name of the local Magnetar cluster (written by deploy/local-cluster.sh;
# magnetar broker --config FILE: Pulsar's broker.conf names in snake case).
metadata_store_url = "etcd://127.0.0.1:$ETCD_PORT"
cluster_name = "$CLUSTER_NAME"
bind_address = "127.0.0.1"
broker_service_port = $(port_of "$name")
web_service_port = $(http_port_of "$name")
advertised_address = "127.0.0.1"
metadata_store_session_timeout_millis = 30000
default_number_of_namespace_bundles = 4

# Replication of new ledgers, 2/2/2: each entry on 2 of the 3 bookies, acknowledged once both
# have it durable; one bookie may be down (new ledgers then go to the other two).
managed_ledger_default_ensemble_size = 2
managed_ledger_default_write_quorum = 2
managed_ledger_default_ack_quorum = 2

[managed_ledger]
# managed_ledger_max_entries_per_ledger = 50000
# default_retention_time_in_minutes = 60
EOF
}

# ---------------------------------------------------------------------------------------------
# Verbs

cmd_up() {
    load_ports
    local name pid all_up=1
    for name in "${PROCESSES[@]}"; do
        [[ -n $(running_pid "$name") ]] || all_up=0
    done
    if ((all_up)); then
        echo "the local cluster in $STATE_DIR is already up:"
        cmd_status
        return
    fi

    local -a stopped=()
    for name in "${PROCESSES[@]}"; do
        [[ -n $(running_pid "$name") ]] || stopped+=("$name")
    done
    check_ports_free "${stopped[@]}"
    find_etcd
    find_magnetar
    mkdir -p "$STATE_DIR"
    touch "$STATE_DIR/$MARKER"
    [[ -f $STATE_DIR/ports ]] || echo "$PORTS" >"$STATE_DIR/ports"
    for name in "${PROCESSES[@]}"; do
        mkdir -p "$(dir_of "$name")"
        write_config "$name"
    done
    mkdir -p "$STATE_DIR/etcd/data"
    # etcd refuses a data dir others can read.
    chmod 700 "$STATE_DIR/etcd/data"
    echo "magnetar: $MAGNETAR"
    echo "etcd: $ETCD_BIN"

    # etcd first, then the bookies (they register in etcd), then the brokers (they need
    # bookies for their first ledgers); the processes of one tier start together.
    local tier
    local -A offsets=()
    for tier in "etcd" "${BOOKIES[*]}" "${BROKERS[*]}"; do
        for name in $tier; do
            pid=$(running_pid "$name")
            if [[ -n $pid ]]; then
                echo "$name already running: pid $pid"
            else
                start "$name"
                offsets[$name]=$LOG_OFFSET
            fi
        done
        for name in $tier; do
            if [[ -n ${offsets[$name]:-} ]]; then
                wait_ready "$name" "${offsets[$name]}"
            fi
        done
    done
    echo "the local cluster is up in $STATE_DIR:"
    echo "  pulsar://127.0.0.1:$BROKER_PULSAR_PORT_1  http://127.0.0.1:$BROKER_HTTP_PORT_1  (broker-1)"
    echo "  pulsar://127.0.0.1:$BROKER_PULSAR_PORT_2  http://127.0.0.1:$BROKER_HTTP_PORT_2  (broker-2)"
    echo "  logs: $STATE_DIR/*/*.log"
}

cmd_down() {
    local clean=0
    case ${1:-} in
        "") ;;
        --clean) clean=1 ;;
        *) die "down takes only --clean, not '$1'" ;;
    esac
    if [[ ! -d $STATE_DIR ]]; then
        echo "no local cluster in $STATE_DIR"
        return
    fi
    load_ports
    stop "${BROKERS[@]}"
    stop "${BOOKIES[@]}"
    stop etcd
    if ((clean)); then
        [[ -f $STATE_DIR/$MARKER ]] || die "$STATE_DIR has no $MARKER file: not deleting a dir this script did not create"
        rm -rf "$STATE_DIR"
        echo "the local cluster is down; deleted $STATE_DIR"
    else
        echo "the local cluster is down; data, config files and logs stay in $STATE_DIR ('$0 clean' deletes them)"
    fi
}

# One line per process: NAME PID ADDRESS (PID '-' when not running). Exits 1 if one is down.
cmd_status() {
    load_ports
    local name pid down=0
    for name in "${PROCESSES[@]}"; do
        pid=$(running_pid "$name")
        if [[ -z $pid ]]; then
            pid=-
            down=1
        fi
        echo "$name $pid 127.0.0.1:$(port_of "$name")"
    done
    return "$down"
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down "${@:2}" ;;
    clean) cmd_down --clean ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *)
        echo "error: unknown command '$1' (up, down [--clean], clean, status)" >&2
        exit 2
        ;;
esac
