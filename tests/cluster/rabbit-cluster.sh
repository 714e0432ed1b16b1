#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback for the tests, beside (never touching)
# the machine's broker rabbit@localhost on 127.0.0.1:5672.
#
#   rabbit-cluster.sh start DIR       start rt1..rt3@localhost, cluster them, print when ready
#   rabbit-cluster.sh stop DIR        stop all three (SIGKILL stragglers) and remove DIR
#   rabbit-cluster.sh kill DIR N      SIGKILL node N (1..3)
#   rabbit-cluster.sh restart DIR N   start node N again after a kill and wait for it
#   rabbit-cluster.sh status DIR      each node's pid and state, and the cluster's status
#   rabbit-cluster.sh ctl DIR N ARGS  rabbitmqctl -n rtN@localhost ARGS, with the cluster's cookie
#
# Node N: AMQP on 127.0.0.1:567(2+N), Erlang distribution on 2567(2+N); everything it
# writes lives in DIR/rtN, its cookie in DIR/home. Measured on RabbitMQ 3.10.8 (Debian 12).
#
# The traps, and what each line below does about them:
# - Debian's /etc/rabbitmq/rabbitmq-env.conf sets NODENAME=rabbit@localhost and
#   /etc/rabbitmq/rabbitmq.conf listens on 5672: every node gets its own
#   RABBITMQ_CONF_ENV_FILE (empty) and RABBITMQ_CONFIG_FILE, so neither is read.
# - The AMQP listener: `listeners.tcp.local = 127.0.0.1:PORT` in the node's own
#   rabbitmq.conf, and RABBITMQ_NODE_IP_ADDRESS/RABBITMQ_NODE_PORT saying the same (when
#   set, the environment wins over the file): loopback only, and never 5672.
# - Plugins: /etc/rabbitmq/enabled_plugins may enable the management plugin, whose
#   15672 clashes with the main broker's; each node reads its own file holding `[].`.
# - The Erlang cookie: as root, /usr/sbin/rabbitmq-server and /usr/sbin/rabbitmqctl switch
#   to the rabbitmq user and its cookie, i.e. the main broker's. We call
#   /usr/lib/rabbitmq/bin/* directly, with HOME=DIR/home holding a fresh cookie (mode 400,
#   else Erlang refuses it): a command meant for these nodes cannot even log in to
#   rabbit@localhost (that, not the -n, is the real guard). Every rabbitmqctl goes through
#   ctl(), which always passes -n rtN@localhost.
# - ERL_FLAGS keeps the distribution listener on 127.0.0.1 (what Debian's env file does
#   for the main broker); ERL_EPMD_ADDRESS does the same for an epmd we might start.
#   The shared epmd on 4369 is fine: it only maps names to ports.
# - The environment is cleared (env -i), so no RABBITMQ_*/ERL_* variable of the caller's
#   leaks into a node.
# - A SIGKILLed node leaves its pid file behind; `restart` deletes it before starting.
# - A crashed run leaves nodes and DIR behind: `start` kills the nodes recorded in DIR and
#   removes it first (only a DIR this script made: it holds .rabbit-cluster).
set -euo pipefail

BIN=/usr/lib/rabbitmq/bin
NODES=(1 2 3)
START_TIMEOUT=${RABBIT_CLUSTER_START_TIMEOUT:-90}  # seconds per node; boots take 5-9 s here
STOP_TIMEOUT=30

die() { echo "rabbit-cluster: $*" >&2; exit 1; }
say() { echo "rabbit-cluster: $*"; }

node_name() { echo "rt$1@localhost"; }
amqp_port() { echo $((5672 + $1)); }
dist_port() { echo $((25672 + $1)); }

# NODE_ENV: the environment of node N and of every rabbitmqctl aimed at it, as an
# `env -i ...` command prefix: nothing from the caller's environment.
set_node_env() {
  local n=$1 d="$DIR/rt$1"
  NODE_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8
    "HOME=$DIR/home"
    "RABBITMQ_NODENAME=$(node_name "$n")"
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    "RABBITMQ_NODE_PORT=$(amqp_port "$n")"
    "RABBITMQ_DIST_PORT=$(dist_port "$n")"
    "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf"
    "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config"
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins"
    "RABBITMQ_MNESIA_BASE=$d/mnesia"
    "RABBITMQ_LOG_BASE=$d/log"
    "RABBITMQ_PID_FILE=$d/pid"
    "ERL_EPMD_ADDRESS=127.0.0.1"
    "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}")
}

check_node() { [[ $1 =~ ^[123]$ ]] || die "no node '$1': nodes are 1, 2 and 3"; }

# rabbitmqctl, always against rtN@localhost with this cluster's cookie, never hanging
# longer than CTL_TIMEOUT seconds.
ctl() {
  local n=$1; shift
  check_node "$n"
  set_node_env "$n"
  timeout "${CTL_TIMEOUT:-120}" "${NODE_ENV[@]}" "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

# Whether process PID was started for node N: its environment names this DIR's pid file
# for N (guards against a recycled pid, and never matches the main broker).
is_node_process() {
  [[ $2 =~ ^[0-9]+$ ]] && tr '\0' '\n' 2>/dev/null <"/proc/$2/environ" \
    | grep -qxF "RABBITMQ_PID_FILE=$DIR/rt$1/pid"
}

# The pid of node N's Erlang VM (or, before it wrote its pid file or after a graceful stop
# removed it, of its launcher), if it is running.
node_pid() {
  local n=$1 pid file
  for file in "$DIR/rt$n/pid" "$DIR/rt$n/launcher.pid"; do
    [[ -s $file ]] || continue
    pid=$(<"$file")
    if is_node_process "$n" "$pid"; then echo "$pid"; return 0; fi
  done
  return 1
}

# Whether the launcher of node N (started by this very script) is still there: just after
# launch() it may not yet have exec'd into the node's environment, so node_pid misses it.
launcher_alive() {
  local pid
  pid=$(<"$DIR/rt$1/launcher.pid")
  [[ -r /proc/$pid/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() {
  local n port busy=()
  for n in "${NODES[@]}"; do
    for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
      port_in_use "$port" && busy+=("$port")
    done
  done
  ((${#busy[@]} == 0)) && return 0
  echo "rabbit-cluster: port(s) ${busy[*]} on 127.0.0.1 already in use; the cluster needs" \
    "5673-5675 and 25673-25675. Listening there:" >&2
  for port in "${busy[@]}"; do ss -Hltnp "sport = :$port" >&2 || true; done
  echo "(a cluster left by another run? stop it with \`$0 stop ITS_DIR\`," \
    "or kill the beam.smp above if its directory is gone)" >&2
  exit 1
}

write_node_files() {
  local n=$1 d="$DIR/rt$1"
  mkdir -p "$d/mnesia" "$d/log"
  : >"$d/rabbitmq-env.conf"
  echo '[].' >"$d/enabled_plugins"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
log.console = false
EOF
}

write_cookie() {
  mkdir -p "$DIR/home"
  chmod 700 "$DIR/home"
  local cookie
  cookie=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
  (umask 077; printf '%s' "$cookie" >"$DIR/home/.erlang.cookie")
  chmod 400 "$DIR/home/.erlang.cookie"
}

# Start node N in the background, detached from the caller (its own session, output to
# DIR/rtN/console.log) so that the caller's pipes are not held open.
launch() {
  local n=$1 d="$DIR/rt$1"
  rm -f "$d/pid"
  set_node_env "$n"
  (cd "$d" && exec setsid "${NODE_ENV[@]}" "$BIN/rabbitmq-server" \
    </dev/null >>"$d/console.log" 2>&1) &
  echo $! >"$d/launcher.pid"
}

show_log_tail() {
  local n=$1
  echo "--- $DIR/rt$n/console.log (tail) ---" >&2
  tail -n 20 "$DIR/rt$n/console.log" >&2 2>/dev/null || true
  local log
  for log in "$DIR/rt$n/log/"*.log; do
    [[ -f $log ]] || continue
    echo "--- $log (tail) ---" >&2
    tail -n 20 "$log" >&2
  done
}

# Wait until node N's app is up. await_startup fails at once while the VM has not yet
# registered with epmd, and each rabbitmqctl costs a VM start: so first wait (cheaply)
# for the pid file, written early in the boot, then retry await_startup to the deadline.
await_node() {
  local n=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! node_pid "$n" >/dev/null && ! launcher_alive "$n"; then
      show_log_tail "$n"
      die "node $(node_name "$n") exited while starting (logs above)"
    fi
    if [[ ! -s $DIR/rt$n/pid ]]; then sleep 0.1; continue; fi
    if ctl "$n" -q await_startup --timeout $((deadline - SECONDS + 1)) >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  show_log_tail "$n"
  die "node $(node_name "$n") did not start within ${START_TIMEOUT}s (logs above)"
}

# rabbitmqctl, its output shown only if it fails (join_cluster logs harmless errors
# about the stopped app's connection tracking tables).
ctl_quiet() {
  local output
  output=$(ctl "$@" 2>&1) || { echo "$output" >&2; die "rabbitmqctl -n $(node_name "$1") ${*:2} failed"; }
}

join_to_first() {
  local n=$1
  ctl_quiet "$n" -q stop_app
  ctl_quiet "$n" -q join_cluster "$(node_name 1)"
  ctl_quiet "$n" -q start_app
  await_node "$n"
}

# SIGKILL node N's VM, then its launcher (which exits by itself once the VM is gone).
kill_node() {
  local n=$1 pid tries=0
  while pid=$(node_pid "$n") && ((tries++ < 200)); do
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.02
  done
  ! node_pid "$n" >/dev/null || die "node $(node_name "$n") survived SIGKILL"
}

# SIGKILL whatever runs from DIR (a crashed run's nodes, or stragglers after stop).
kill_nodes() {
  local n
  for n in "${NODES[@]}"; do kill_node "$n"; done
}

remove_dir() {
  [[ -d $DIR ]] || return 0
  [[ -f $DIR/.rabbit-cluster ]] || die "$DIR exists and was not made by this script; not removing it"
  rm -rf -- "$DIR"
}

cmd_start() {
  if [[ -e $DIR ]]; then
    [[ -f $DIR/.rabbit-cluster ]] || [[ -z $(ls -A "$DIR") ]] \
      || die "$DIR exists and was not made by this script; give a new or empty directory"
    say "cleaning up $DIR left by an earlier run"
    kill_nodes
    remove_dir
  fi
  check_ports_free
  mkdir -p "$DIR"
  touch "$DIR/.rabbit-cluster"
  write_cookie
  local n started=$SECONDS
  for n in "${NODES[@]}"; do write_node_files "$n"; done
  # The three boot at once (about 10 s on two cores), then the other two join the first.
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  say "3 nodes up in $((SECONDS - started))s; joining rt2 and rt3 to rt1"
  for n in 2 3; do join_to_first "$n"; done
  say "ready in $((SECONDS - started))s: $(node_name 1), $(node_name 2), $(node_name 3)" \
    "on 127.0.0.1:$(amqp_port 1),$(amqp_port 2),$(amqp_port 3) (guest/guest)"
}

cmd_stop() {
  [[ -d $DIR ]] || { say "$DIR does not exist; nothing to stop"; return 0; }
  [[ -f $DIR/.rabbit-cluster ]] || die "$DIR was not made by this script"
  local n pid vms=() stoppers=() deadline
  # The VMs' pids first: a graceful stop removes the pid file before the VM exits.
  for n in "${NODES[@]}"; do
    [[ -s $DIR/rt$n/pid ]] && is_node_process "$n" "$(<"$DIR/rt$n/pid")" \
      && vms+=("$n:$(<"$DIR/rt$n/pid")")
  done
  # Stop the three at once; a node that does not stop in time is killed below.
  for n in "${NODES[@]}"; do
    if node_pid "$n" >/dev/null; then
      (CTL_TIMEOUT=$STOP_TIMEOUT ctl "$n" -q stop >/dev/null 2>&1) &
      stoppers+=($!)
    fi
  done
  for pid in "${stoppers[@]}"; do wait "$pid" || true; done
  deadline=$((SECONDS + 10))
  for vm in "${vms[@]}"; do
    while is_node_process "${vm%%:*}" "${vm#*:}" && ((SECONDS < deadline)); do sleep 0.1; done
    is_node_process "${vm%%:*}" "${vm#*:}" && kill -KILL "${vm#*:}" 2>/dev/null || true
  done
  kill_nodes
  remove_dir
  say "stopped and removed $DIR"
}

cmd_kill() {
  local n=$1 pid
  check_node "$n"
  pid=$(node_pid "$n") || die "node $(node_name "$n") is not running"
  kill_node "$n"
  say "killed $(node_name "$n") (pid $pid)"
}

cmd_restart() {
  local n=$1 started=$SECONDS
  check_node "$n"
  if node_pid "$n" >/dev/null; then die "node $(node_name "$n") is running; kill it first"; fi
  for port in "$(amqp_port "$n")" "$(dist_port "$n")"; do
    port_in_use "$port" && die "port $port on 127.0.0.1 is in use; cannot restart node $n"
  done
  rm -f "$DIR/rt$n/pid"  # a SIGKILLed node's stale pid file
  launch "$n"
  await_node "$n"
  say "restarted $(node_name "$n") in $((SECONDS - started))s"
}

cmd_status() {
  local n pid live=
  for n in "${NODES[@]}"; do
    if pid=$(node_pid "$n"); then
      echo "$(node_name "$n"): running, pid $pid, 127.0.0.1:$(amqp_port "$n")"
      [[ -n $live ]] || live=$n
    else
      echo "$(node_name "$n"): not running"
    fi
  done
  [[ -z $live ]] || ctl "$live" -q cluster_status
}

main() {
  (($# >= 2)) || { sed -n '5,10p' "$0" >&2; exit 2; }
  local command=$1
  DIR=$(realpath -m -- "$2")
  [[ $DIR != / ]] || die "refusing to use / as the cluster's directory"
  shift 2
  case $command in
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill) (($# == 1)) || die "usage: kill DIR N"; [[ -d $DIR ]] || die "no $DIR"; cmd_kill "$1" ;;
    restart) (($# == 1)) || die "usage: restart DIR N"; [[ -d $DIR ]] || die "no $DIR"; cmd_restart "$1" ;;
    status) [[ -d $DIR ]] || die "no $DIR"; cmd_status ;;
    ctl) (($# >= 1)) || die "usage: ctl DIR N ARGS"; [[ -d $DIR ]] || die "no $DIR"; ctl "$@" ;;
    *) die "unknown command '$command' (start, stop, kill, restart, status, ctl)" ;;
  esac
}

main "$@"
