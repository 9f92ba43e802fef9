# shellcheck shell=bash
# Installs (from Debian packages, when missing) and runs RabbitMQ and ZooKeeper as
# plain background processes on loopback, with private data under $RUN_DIR.
# Sourced by scripts/up, scripts/test and scripts/bench.
#
# Credentials: a RabbitMQ node started here has one user, $AMQP_USER (dbaas),
# whose generated password is kept in $RUN_DIR/secrets/rabbitmq-password (mode
# 600); `guest` is deleted (also from the data of a node an earlier version
# started). ZooKeeper digest credentials (`dbaas:<generated>`) are kept in
# $RUN_DIR/secrets/zookeeper-auth; use_credentials exports both. The snapshot
# secret (DBAAS_SNAPSHOT_SECRET, which authenticates the snapshots workers send
# each other) is kept in $RUN_DIR/secrets/snapshot-secret; use_snapshot_secret
# exports it. Secrets are never put in command arguments: rabbitmqctl reads
# the password on stdin, and the binaries take theirs from the environment.

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
RUN_DIR=${RUN_DIR:-$ROOT/.run}
AMQP_PORT=${AMQP_PORT:-5672}
ZK_PORT=${ZK_PORT:-2181}
AMQP_USER=${AMQP_USER:-dbaas}
SECRETS_DIR=$RUN_DIR/secrets
# A URL the caller gave wins over ours.
AMQP_URL_GIVEN=${DBAAS_AMQP_URL:+1}
export DBAAS_ZK_HOSTS=${DBAAS_ZK_HOSTS:-127.0.0.1:$ZK_PORT}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# apt_install PKG... : installs the packages that are missing (needs root, as on CI).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian packages"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# wait_for DESCRIPTION SECONDS COMMAND... : polls COMMAND until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# new_secret FILE : writes 48 random hex digits to FILE (mode 600, its
# directory 700) unless FILE has one already.
new_secret() {
  [ -s "$1" ] && return 0
  (
    umask 077
    mkdir -p "$(dirname "$1")"
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$1.$$"
    mv "$1.$$" "$1"
  )
}

# amqp_base_url: the broker's URL without a vhost: our user's, or guest's
# when there is no password here (a broker started before credentials were).
amqp_base_url() {
  if [ -s "$SECRETS_DIR/rabbitmq-password" ]; then
    printf 'amqp://%s:%s@127.0.0.1:%s' "$AMQP_USER" "$(cat "$SECRETS_DIR/rabbitmq-password")" "$AMQP_PORT"
  else
    printf 'amqp://guest:guest@127.0.0.1:%s' "$AMQP_PORT"
  fi
}

# use_credentials : exports DBAAS_AMQP_URL (unless the caller gave one) for
# the broker started here.
use_credentials() {
  [ -n "$AMQP_URL_GIVEN" ] || export DBAAS_AMQP_URL="$(amqp_base_url)/%2f"
}

# use_zk_credentials : generates (once) the ZooKeeper digest credentials under
# $SECRETS_DIR and exports DBAAS_ZK_AUTH_FILE naming them (unless the caller
# gave DBAAS_ZK_AUTH or DBAAS_ZK_AUTH_FILE).
use_zk_credentials() {
  [ -n "${DBAAS_ZK_AUTH:-}${DBAAS_ZK_AUTH_FILE:-}" ] && return 0
  local f=$SECRETS_DIR/zookeeper-auth
  if [ ! -s "$f" ]; then
    new_secret "$f.password"
    ( umask 077; printf 'dbaas:%s\n' "$(cat "$f.password")" > "$f" )
    rm -f "$f.password"
  fi
  export DBAAS_ZK_AUTH_FILE=$f
}
use_credentials

# use_snapshot_secret : generates (once) the snapshot secret under
# $SECRETS_DIR and exports DBAAS_SNAPSHOT_SECRET with it (unless the caller
# gave one). The orchestrator passes it to the workers it starts.
# SNAPSHOT_SECRET_SOURCE says where it came from (never the value).
use_snapshot_secret() {
  SNAPSHOT_SECRET_SOURCE="DBAAS_SNAPSHOT_SECRET as given"
  [ -n "${DBAAS_SNAPSHOT_SECRET:-}" ] && return 0
  SNAPSHOT_SECRET_SOURCE=$SECRETS_DIR/snapshot-secret
  new_secret "$SECRETS_DIR/snapshot-secret"
  DBAAS_SNAPSHOT_SECRET=$(cat "$SECRETS_DIR/snapshot-secret")
  export DBAAS_SNAPSHOT_SECRET
}

start_rabbitmq() {
  apt_install rabbitmq-server
  local dir=$RUN_DIR/rabbitmq
  if port_open "$AMQP_PORT"; then log "RabbitMQ already listening on $AMQP_PORT"; write_rabbitmqctl; return 0; fi
  new_secret "$SECRETS_DIR/rabbitmq-password"
  mkdir -p "$dir/mnesia" "$dir/log"
  chmod 700 "$dir"
  : > "$dir/enabled_plugins"
  echo "[]." > "$dir/enabled_plugins"
  # A fresh node creates our user instead of guest (the file is the node's own, mode 600).
  ( umask 077; cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
default_user = $AMQP_USER
default_pass = $(cat "$SECRETS_DIR/rabbitmq-password")
CONF
  )
  log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT (data in $dir)"
  RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
    RABBITMQ_NODENAME=dbaas-${AMQP_PORT}@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000)) \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_CONFIG_FILE=$dir/rabbitmq \
    RABBITMQ_PID_FILE=$dir/pid HOME=$dir \
    setsid /usr/lib/rabbitmq/bin/rabbitmq-server > "$dir/stdout.log" 2>&1 &
  echo $! > "$dir/launcher.pid"
  wait_for "RabbitMQ" 90 port_open "$AMQP_PORT" || { tail -20 "$dir/stdout.log" >&2; return 1; }
  write_rabbitmqctl
  secure_rabbitmq
}

# secure_rabbitmq : on a node started here, makes sure $AMQP_USER exists with
# the password kept here (nodes whose data an older version created only have
# guest) and full rights on /, and that guest does not exist.
secure_rabbitmq() {
  local ctl=$RUN_DIR/rabbitmqctl users
  users=$("$ctl" list_users -q 2>/dev/null | awk '{print $1}') || { log "rabbitmqctl list_users failed"; return 1; }
  if ! grep -qx "$AMQP_USER" <<<"$users"; then
    log "RabbitMQ: adding user $AMQP_USER"
    "$ctl" add_user "$AMQP_USER" < "$SECRETS_DIR/rabbitmq-password" >/dev/null
    "$ctl" set_permissions -p / "$AMQP_USER" '.*' '.*' '.*' >/dev/null
  fi
  if grep -qx guest <<<"$users"; then
    log "RabbitMQ: deleting user guest"
    "$ctl" delete_user guest >/dev/null
  fi
}

# A rabbitmqctl bound to our node (its cookie lives in our private HOME); the
# integration tests use it to give each test its own vhost.
write_rabbitmqctl() {
  local dir=$RUN_DIR/rabbitmq
  cat > "$RUN_DIR/rabbitmqctl" <<SH
#!/bin/sh
HOME=$dir exec /usr/lib/rabbitmq/bin/rabbitmqctl -n dbaas-${AMQP_PORT}@localhost "\$@"
SH
  chmod +x "$RUN_DIR/rabbitmqctl"
  export DBAAS_TEST_RABBITMQCTL=$RUN_DIR/rabbitmqctl
}

start_zookeeper() {
  apt_install zookeeper default-jre-headless
  local dir=$RUN_DIR/zookeeper
  if port_open "$ZK_PORT"; then log "ZooKeeper already listening on $ZK_PORT"; return 0; fi
  mkdir -p "$dir/data" "$dir/conf"
  cat > "$dir/conf/zoo.cfg" <<CONF
tickTime=200
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
minSessionTimeout=400
maxSessionTimeout=30000
CONF
  cp /etc/zookeeper/conf/log4j.properties "$dir/conf/" 2>/dev/null || true
  log "starting ZooKeeper on 127.0.0.1:$ZK_PORT (data in $dir)"
  ZOOCFGDIR=$dir/conf ZOO_LOG_DIR=$dir ZOO_LOG4J_PROP="WARN,CONSOLE" \
    setsid /usr/share/zookeeper/bin/zkServer.sh start-foreground "$dir/conf/zoo.cfg" > "$dir/stdout.log" 2>&1 &
  echo $! > "$dir/launcher.pid"
  wait_for "ZooKeeper" 60 port_open "$ZK_PORT" || { tail -20 "$dir/stdout.log" >&2; return 1; }
}

# stop_pidfile FILE : stops the process group started by us (setsid) and its
# children, and waits until it is gone (so a following start does not find the
# port of a broker still shutting down); KILL after 20 s.
stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "process group $pid to stop" 20 group_gone "$pid"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

group_gone() { ! kill -0 -- "-$1" 2>/dev/null; }

# note_running_services: call before starting, in the main shell: brokers that
# already listen were not started by us, and stop_services leaves them alone.
note_running_services() {
  KEEP_RABBITMQ=0 KEEP_ZOOKEEPER=0
  port_open "$AMQP_PORT" && KEEP_RABBITMQ=1
  port_open "$ZK_PORT" && KEEP_ZOOKEEPER=1
  return 0
}

stop_services() {
  [ "${KEEP_ZOOKEEPER:-0}" = 1 ] || stop_pidfile "$RUN_DIR/zookeeper/launcher.pid"
  # rabbitmq-server execs beam; epmd is started alongside and left to itself.
  [ "${KEEP_RABBITMQ:-0}" = 1 ] || stop_pidfile "$RUN_DIR/rabbitmq/launcher.pid"
}
