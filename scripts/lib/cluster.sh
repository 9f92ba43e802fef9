# shellcheck shell=bash
# Three simulated hosts on this machine, for scripts/cluster and the nemesis
# test: network namespaces on a bridge of their own, a RabbitMQ node and a
# ZooKeeper server in each. Sourced after scripts/lib/services.sh (log,
# apt_install, wait_for, new_secret) and scripts/lib/podman.sh
# (podman_containers_conf, for the hosts' engines).
#
#   CLUSTER_NAME   (dbaas)     prefix of every name made here: namespaces
#                              <name>-h1..3, bridge <name>br0, veths <name>-h<i>
#   CLUSTER_SUBNET (10.77.0)   the /24 the hosts get .1-.3 of (the bridge .254);
#                              it exists only on the bridge and in the namespaces
#   CLUSTER_SIZE   (3)
#   CLUSTER_DIR    ($ROOT/.run/cluster)  data, logs, pids, secrets
#   CLUSTER_NET_TICKTIME (10)  seconds: how soon RabbitMQ notices a cut-off
#                              node (it then pauses: pause_minority) when
#                              nothing below notices it sooner
#   CLUSTER_DIST_USER_TIMEOUT_MS (3000)  TCP_USER_TIMEOUT on the inter-node
#                              connections (0: not set): a link whose data
#                              stays unacknowledged that long is dropped and
#                              the peer seen down (about 3-4 s after a cut)
#   CLUSTER_NET_SETUPTIME (2)  seconds a node may spend setting up a connection
#                              to a peer (Erlang's default 7): the stream
#                              coordinator waits that long on a cut-off node
#   CLUSTER_ATEN_POLL_MS (1000)  Ra's failure detector (aten) poll interval;
#                              RabbitMQ 3.10 sets 5000, and a quorum queue
#                              follower waits one poll and one more before
#                              electing a new leader
#   CLUSTER_ENGINE_PORT (2375) the Docker Engine API each host serves with
#                              `engines_up` (podman), on its own address only
#   CLUSTER_IMAGE_STORE (/var/lib/containers/storage)  the machine's podman
#                              image store, read-only in every host's engine
#
# Inside each namespace the host is named h<i> (`unshare --uts`), which is
# what the Erlang node names use (rabbit@h<i>); /etc/netns/<ns>/hosts names
# the three. The namespaces have no default route: their traffic reaches the
# other namespaces and the root namespace over the bridge, nothing else.
# Everything made here is listed in files under $CLUSTER_DIR/state and
# cluster_down removes exactly that.
#
# Optionally (engines_up) each host serves the Docker Engine API: a podman
# service in its network namespace on tcp://<its address>:2375, with
# containers and state of its own under $CLUSTER_DIR/h<i>/podman and the
# machine's image store shared read-only, so the worker containers it runs
# (network_mode host) are on that host's network and go with its link.

CLUSTER_NAME=${CLUSTER_NAME:-dbaas}
CLUSTER_SUBNET=${CLUSTER_SUBNET:-10.77.0}
CLUSTER_SIZE=${CLUSTER_SIZE:-3}
CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/.run/cluster}
CLUSTER_NET_TICKTIME=${CLUSTER_NET_TICKTIME:-10}
CLUSTER_ATEN_POLL_MS=${CLUSTER_ATEN_POLL_MS:-1000}
CLUSTER_DIST_USER_TIMEOUT_MS=${CLUSTER_DIST_USER_TIMEOUT_MS:-3000}
CLUSTER_NET_SETUPTIME=${CLUSTER_NET_SETUPTIME:-2}
CLUSTER_ENGINE_PORT=${CLUSTER_ENGINE_PORT:-2375}
CLUSTER_IMAGE_STORE=${CLUSTER_IMAGE_STORE:-/var/lib/containers/storage}
CLUSTER_BRIDGE=${CLUSTER_NAME}br0
CLUSTER_FWD_TAG="dbaas-cluster $CLUSTER_NAME"
CLUSTER_SECRETS=$CLUSTER_DIR/secrets
RABBIT_HOME=$CLUSTER_DIR/rabbitmq-home

cluster_ns() { echo "${CLUSTER_NAME}-h$1"; }
cluster_ip() { echo "$CLUSTER_SUBNET.$1"; }
cluster_hosts() { seq 1 "$CLUSTER_SIZE"; }

# in_host I CMD... : runs CMD in host I's namespace, under its own hostname.
in_host() {
  local i=$1; shift
  ip netns exec "$(cluster_ns "$i")" unshare --uts sh -c 'hostname "$0"; exec "$@"' "h$i" "$@"
}

# --- network ---------------------------------------------------------------

cluster_net_up() {
  apt_install iproute2 iptables util-linux
  [ "${#CLUSTER_BRIDGE}" -le 15 ] || { log "CLUSTER_NAME $CLUSTER_NAME is too long for interface names"; return 1; }
  mkdir -p "$CLUSTER_DIR/state"
  if ! ip link show "$CLUSTER_BRIDGE" >/dev/null 2>&1; then
    if ip -4 addr | grep -q "inet $CLUSTER_SUBNET\."; then
      log "$CLUSTER_SUBNET.0/24 is in use on this machine: choose another CLUSTER_SUBNET"; return 1
    fi
    ip link add "$CLUSTER_BRIDGE" type bridge
    echo "$CLUSTER_BRIDGE" >> "$CLUSTER_DIR/state/links"
    ip addr add "$CLUSTER_SUBNET.254/24" dev "$CLUSTER_BRIDGE"
    ip link set "$CLUSTER_BRIDGE" up
  fi
  # Bridged traffic passes the root FORWARD chain when br_netfilter is
  # loaded: allow our bridge's own traffic whatever the policy (Docker sets DROP).
  if ! iptables -C FORWARD -i "$CLUSTER_BRIDGE" -o "$CLUSTER_BRIDGE" -m comment --comment "$CLUSTER_FWD_TAG" -j ACCEPT 2>/dev/null; then
    iptables -I FORWARD -i "$CLUSTER_BRIDGE" -o "$CLUSTER_BRIDGE" -m comment --comment "$CLUSTER_FWD_TAG" -j ACCEPT
  fi
  local i ns veth
  for i in $(cluster_hosts); do
    ns=$(cluster_ns "$i") veth=${CLUSTER_NAME}-h$i
    if ! ip netns list | grep -qw "$ns"; then
      ip netns add "$ns"
      echo "$ns" >> "$CLUSTER_DIR/state/namespaces"
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      echo "$veth" >> "$CLUSTER_DIR/state/links"
      ip link set "$veth" master "$CLUSTER_BRIDGE" up
      ip -n "$ns" addr add "$(cluster_ip "$i")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      local j; for j in $(cluster_hosts); do echo "$(cluster_ip "$j") h$j"; done
    } > "/etc/netns/$ns/hosts"
  done
}

cluster_net_down() {
  local ns link
  for i in $(cluster_hosts); do
    ns=$(cluster_ns "$i")
    if ip netns list | grep -qw "$ns"; then ip netns delete "$ns"; fi
    rm -rf "/etc/netns/$ns"
  done
  for link in "${CLUSTER_NAME}-h1" "${CLUSTER_NAME}-h2" "${CLUSTER_NAME}-h3" "$CLUSTER_BRIDGE"; do
    # A veth can vanish between the two (its namespace's deletion takes its pair).
    if ip link show "$link" >/dev/null 2>&1; then ip link delete "$link" 2>/dev/null || true; fi
  done
  while iptables -D FORWARD -i "$CLUSTER_BRIDGE" -o "$CLUSTER_BRIDGE" -m comment --comment "$CLUSTER_FWD_TAG" -j ACCEPT 2>/dev/null; do :; done
  rm -rf "$CLUSTER_DIR/state"
  return 0
}

# cluster_pids I COMM : the pids in host I's namespace whose command is COMM.
cluster_pids() {
  local ns pid; ns=$(cluster_ns "$1")
  ip netns list | grep -qw "$ns" || return 0
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
  done
  return 0
}

# --- partitions ------------------------------------------------------------

# partition I : host I drops every packet to and from the other hosts (the
# root namespace still reaches it, as an operator's monitoring would).
cluster_partition() {
  local i=$1 j ns; ns=$(cluster_ns "$i")
  for j in $(cluster_hosts); do
    [ "$i" = "$j" ] && continue
    ip netns exec "$ns" iptables -A INPUT -s "$(cluster_ip "$j")" -m comment --comment dbaas-partition -j DROP
    ip netns exec "$ns" iptables -A OUTPUT -d "$(cluster_ip "$j")" -m comment --comment dbaas-partition -j DROP
  done
  log "h$i cut off from its peers"
}

cluster_heal() {
  local i=$1 j ns; ns=$(cluster_ns "$i")
  for j in $(cluster_hosts); do
    [ "$i" = "$j" ] && continue
    while ip netns exec "$ns" iptables -D INPUT -s "$(cluster_ip "$j")" -m comment --comment dbaas-partition -j DROP 2>/dev/null; do :; done
    while ip netns exec "$ns" iptables -D OUTPUT -d "$(cluster_ip "$j")" -m comment --comment dbaas-partition -j DROP 2>/dev/null; do :; done
  done
  log "h$i healed"
}

# link_down I : host I's link to the bridge goes down: nothing reaches it or
# leaves it, the root namespace included (a host lost as a whole: its
# engine stops answering the orchestrator too). link_up I brings it back.
cluster_link_down() {
  ip link set "${CLUSTER_NAME}-h$1" down
  log "h$1's link is down"
}

cluster_link_up() {
  ip link set "${CLUSTER_NAME}-h$1" up
  log "h$1's link is up"
}

# --- RabbitMQ --------------------------------------------------------------

rabbit_dir() { echo "$CLUSTER_DIR/h$1/rabbitmq"; }

# rabbit_config : the files every node shares (cookie, config), made once.
rabbit_config() {
  new_secret "$CLUSTER_SECRETS/rabbitmq-password"
  mkdir -p "$RABBIT_HOME"
  chmod 700 "$RABBIT_HOME"
  if [ ! -s "$RABBIT_HOME/.erlang.cookie" ]; then
    ( umask 077; od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr a-f A-F > "$RABBIT_HOME/.erlang.cookie" )
    chmod 400 "$RABBIT_HOME/.erlang.cookie"
  fi
  local i
  ( umask 077
    {
      echo "listeners.tcp.default = 5672"
      echo "default_user = $AMQP_USER"
      echo "default_pass = $(cat "$CLUSTER_SECRETS/rabbitmq-password")"
      echo "cluster_formation.peer_discovery_backend = classic_config"
      for i in $(cluster_hosts); do echo "cluster_formation.classic_config.nodes.$i = rabbit@h$i"; done
      echo "cluster_partition_handling = pause_minority"
    } > "$RABBIT_HOME/rabbitmq.conf"
    # A cut-off node is noticed after about net_ticktime (10 s) rather than 60.
    local dist=""
    if [ "$CLUSTER_DIST_USER_TIMEOUT_MS" -gt 0 ]; then
      # TCP_USER_TIMEOUT (IPPROTO_TCP 6, option 18) on the inter-node
      # connections: the kernel aborts one whose data stays unacknowledged
      # that long, and the node is seen down then rather than after net_ticktime.
      local opt="{raw,6,18,<<$CLUSTER_DIST_USER_TIMEOUT_MS:32/native>>}"
      dist=",{inet_dist_connect_options,[$opt]},{inet_dist_listen_options,[$opt]}"
    fi
    echo "[{kernel,[{net_ticktime,$CLUSTER_NET_TICKTIME},{net_setuptime,$CLUSTER_NET_SETUPTIME}$dist]},{aten,[{poll_interval,$CLUSTER_ATEN_POLL_MS}]}]." > "$RABBIT_HOME/advanced.config"
    : > "$RABBIT_HOME/rabbitmq-env.conf"
    echo "[]." > "$RABBIT_HOME/enabled_plugins"
  )
}

# rabbit_start I : starts host I's node in the background (returns at once).
rabbit_start() {
  local i=$1 dir; dir=$(rabbit_dir "$i")
  if [ -n "$(cluster_pids "$i" beam.smp)" ]; then log "RabbitMQ h$i already runs"; return 0; fi
  mkdir -p "$dir/mnesia" "$dir/log"
  log "starting RabbitMQ rabbit@h$i on $(cluster_ip "$i"):5672"
  HOME=$RABBIT_HOME RABBITMQ_NODENAME=rabbit@h$i RABBITMQ_MNESIA_BASE=$dir/mnesia \
    RABBITMQ_LOG_BASE=$dir/log RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_HOME/enabled_plugins \
    RABBITMQ_PID_FILE=$dir/pid RABBITMQ_CONFIG_FILE=$RABBIT_HOME/rabbitmq.conf \
    RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_HOME/advanced.config \
    RABBITMQ_CONF_ENV_FILE=$RABBIT_HOME/rabbitmq-env.conf \
    setsid ip netns exec "$(cluster_ns "$i")" unshare --uts sh -c 'hostname "$0"; exec "$@"' "h$i" \
    /usr/lib/rabbitmq/bin/rabbitmq-server > "$dir/stdout.log" 2>&1 < /dev/null &
}

# rabbitmqctl_on I ARGS... : rabbitmqctl against host I's node, from its namespace.
rabbitmqctl_on() {
  local i=$1; shift
  HOME=$RABBIT_HOME RABBITMQ_CONF_ENV_FILE=$RABBIT_HOME/rabbitmq-env.conf \
    in_host "$i" /usr/lib/rabbitmq/bin/rabbitmqctl -n "rabbit@h$i" "$@"
}

# rabbit_port_open I : host I's node accepts AMQP connections.
rabbit_port_open() { (exec 3<>"/dev/tcp/$(cluster_ip "$1")/5672") 2>/dev/null; }

rabbit_kill() {
  local i=$1 pid
  # (A rabbitmqctl run in the namespace is a beam.smp too, and may be gone by now.)
  for pid in $(cluster_pids "$i" beam.smp); do kill -KILL "$pid" 2>/dev/null || true; done
  log "RabbitMQ h$i killed (SIGKILL)"
}

rabbit_stop() {
  local i=$1 pid deadline
  for pid in $(cluster_pids "$i" beam.smp); do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 20))
  while [ -n "$(cluster_pids "$i" beam.smp)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  for pid in $(cluster_pids "$i" beam.smp); do kill -KILL "$pid" 2>/dev/null || true; done
}

# write_cluster_rabbitmqctl : $CLUSTER_DIR/rabbitmqctl (host 1's node, or the
# first one up) for the integration harness, which makes a vhost per test.
write_cluster_rabbitmqctl() {
  cat > "$CLUSTER_DIR/rabbitmqctl" <<SH
#!/usr/bin/env bash
ROOT=$ROOT CLUSTER_NAME=$CLUSTER_NAME CLUSTER_SUBNET=$CLUSTER_SUBNET CLUSTER_DIR=$CLUSTER_DIR exec $ROOT/scripts/cluster ctl "\$@"
SH
  chmod +x "$CLUSTER_DIR/rabbitmqctl"
}

# rabbit_cluster_formed : every node is running and sees all the others.
rabbit_cluster_formed() {
  rabbitmqctl_on 1 cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if len(json.load(sys.stdin).get("running_nodes", [])) == int(sys.argv[1]) else 1)
' "$CLUSTER_SIZE"
}

# rabbit_secure : our user exists (the config made it on the fresh cluster)
# and guest does not.
rabbit_secure() {
  local users
  users=$(rabbitmqctl_on 1 list_users -q 2>/dev/null | awk '{print $1}') || { log "rabbitmqctl list_users failed"; return 1; }
  if ! grep -qx "$AMQP_USER" <<<"$users"; then
    log "RabbitMQ: adding user $AMQP_USER"
    rabbitmqctl_on 1 add_user "$AMQP_USER" < "$CLUSTER_SECRETS/rabbitmq-password" >/dev/null
    rabbitmqctl_on 1 set_permissions -p / "$AMQP_USER" '.*' '.*' '.*' >/dev/null
  fi
  if grep -qx guest <<<"$users"; then
    log "RabbitMQ: deleting user guest"
    rabbitmqctl_on 1 delete_user guest >/dev/null
  fi
}

# cluster_amqp_urls [VHOST] : one URL per node, comma-separated (DBAAS_AMQP_URL).
cluster_amqp_urls() {
  local vhost=${1-%2f} i out=""
  local pw; pw=$(cat "$CLUSTER_SECRETS/rabbitmq-password")
  for i in $(cluster_hosts); do
    out+="${out:+,}amqp://$AMQP_USER:$pw@$(cluster_ip "$i"):5672${vhost:+/$vhost}"
  done
  echo "$out"
}

# --- ZooKeeper -------------------------------------------------------------

zk_dir() { echo "$CLUSTER_DIR/h$1/zookeeper"; }

zk_start() {
  local i=$1 dir j; dir=$(zk_dir "$i")
  if [ -n "$(cluster_pids "$i" java)" ]; then log "ZooKeeper h$i already runs"; return 0; fi
  mkdir -p "$dir/data"
  echo "$i" > "$dir/data/myid"
  {
    # Ticks of 500 ms: a cut-off leader stops serving after syncLimit ticks (3 s).
    echo "tickTime=500"
    echo "initLimit=20"
    echo "syncLimit=6"
    echo "dataDir=$dir/data"
    echo "clientPort=2181"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=*"
    echo "minSessionTimeout=1000"
    echo "maxSessionTimeout=30000"
    for j in $(cluster_hosts); do echo "server.$j=$(cluster_ip "$j"):2888:3888"; done
  } > "$dir/zoo.cfg"
  log "starting ZooKeeper server.$i on $(cluster_ip "$i"):2181"
  setsid ip netns exec "$(cluster_ns "$i")" java -Xmx256m \
    -Dzookeeper.fastleader.maxNotificationInterval=2000 \
    -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" > "$dir/stdout.log" 2>&1 < /dev/null &
}

# zk_cmd I WORD : a four-letter command to host I's server, from the root namespace.
zk_cmd() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/2181" && printf %s "$1" >&3 && cat <&3' "$(cluster_ip "$1")" "$2" 2>/dev/null
}

# zk_mode I : leader, follower, or nothing while it does not serve.
zk_mode() { zk_cmd "$1" srvr | sed -n 's/^Mode: //p'; }

zk_serving() { [ -n "$(zk_mode "$1")" ]; }

zk_leader() {
  local i
  for i in $(cluster_hosts); do [ "$(zk_mode "$i")" = leader ] && { echo "$i"; return 0; }; done
  return 1
}

zk_kill() {
  local i=$1 pid
  for pid in $(cluster_pids "$i" java); do kill -KILL "$pid"; done
  log "ZooKeeper h$i killed (SIGKILL)"
}

zk_stop() {
  local i=$1 pid deadline
  for pid in $(cluster_pids "$i" java); do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 15))
  while [ -n "$(cluster_pids "$i" java)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  for pid in $(cluster_pids "$i" java); do kill -KILL "$pid" 2>/dev/null || true; done
}

cluster_zk_hosts() {
  local i out=""
  for i in $(cluster_hosts); do out+="${out:+,}$(cluster_ip "$i"):2181"; done
  echo "$out"
}

# --- Docker engines (podman), one per host ---------------------------------

engine_dir() { echo "$CLUSTER_DIR/h$1/podman"; }
engine_url() { echo "tcp://$(cluster_ip "$1"):$CLUSTER_ENGINE_PORT"; }
engine_http() { echo "http://$(cluster_ip "$1"):$CLUSTER_ENGINE_PORT"; }

# cluster_docker_hosts : DBAAS_DOCKER_HOSTS for the hosts' engines (h1=tcp://...,...).
cluster_docker_hosts() {
  local i out=""
  for i in $(cluster_hosts); do out+="${out:+,}h$i=$(engine_url "$i")"; done
  echo "$out"
}

# engine_config I : host I's containers.conf and storage.conf. Its own
# containers, state, locks (file locks: podman's default shared-memory
# locks are one segment per machine, and a fresh state directory would
# reset every other podman's) and events; the machine's images read-only.
engine_config() {
  local dir; dir=$(engine_dir "$1")
  mkdir -p "$dir/root" "$dir/run" "$dir/tmp"
  podman_containers_conf "$dir/containers.conf" 'lock_type = "file"' "tmp_dir = \"$dir/tmp\""
  cat > "$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/root"
runroot = "$dir/run"

[storage.options]
additionalimagestores = ["$CLUSTER_IMAGE_STORE"]
CONF
}

# engine_podman I ARGS... : podman on host I's engine state (in the root
# namespace: for what needs no network, the service does the rest).
engine_podman() {
  local dir; dir=$(engine_dir "$1"); shift
  CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf podman "$@"
}

engine_answers() { curl -sf --max-time 2 "$(engine_http "$1")/_ping" >/dev/null 2>&1; }

# engine_start I : podman's Docker API in host I's network namespace (only
# that: the mount namespace stays the machine's, so the overlay mounts of its
# containers are visible and removable from here), on its address only.
engine_start() {
  local i=$1 dir; dir=$(engine_dir "$i")
  if engine_answers "$i"; then log "Docker engine h$i already serves"; return 0; fi
  engine_config "$i"
  log "starting a Docker engine (podman) for h$i on $(engine_url "$i")"
  CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf \
    setsid nsenter --net="/run/netns/$(cluster_ns "$i")" \
    podman system service --time=0 "$(engine_url "$i")" > "$dir/service.log" 2>&1 < /dev/null &
  echo $! > "$dir/service.pid"
  echo "$i" >> "$CLUSTER_DIR/state/engines"
}

# engine_workers I : ids of host I's containers labelled dbaas.worker, any state.
engine_workers() {
  engine_podman "$1" ps -aq --filter label=dbaas.worker 2>/dev/null || true
}

# engine_stop I : removes host I's worker containers (through its service
# while it answers, else directly), stops the service, and deletes its state.
engine_stop() {
  local i=$1 dir pid id; dir=$(engine_dir "$i")
  [ -d "$dir" ] || return 0
  for id in $(engine_workers "$i"); do
    if engine_answers "$i"; then
      curl -sf --max-time 20 -X DELETE "$(engine_http "$i")/containers/$id?force=true" >/dev/null \
        || engine_podman "$i" rm -f "$id" >/dev/null 2>&1 || true
    else
      engine_podman "$i" rm -f "$id" >/dev/null 2>&1 || true
    fi
  done
  if [ -f "$dir/service.pid" ]; then
    pid=$(cat "$dir/service.pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_for "Docker engine h$i to stop" 15 bash -c "[ ! -e /proc/$pid ]" || kill -KILL "$pid" 2>/dev/null || true
  fi
  [ -z "$(engine_workers "$i")" ] || log "h$i: worker containers left: $(engine_workers "$i" | tr '\n' ' ')"
  # Nothing of it may stay mounted before its directory goes.
  if grep -q " $dir/" /proc/mounts; then
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf "$dir"
}

# engines_up : a Docker engine on every host, once each answers.
engines_up() {
  apt_install podman runc curl
  podman image exists "${DBAAS_WORKER_IMAGE:-localhost/dbaas-worker:dev}" \
    || log "no image ${DBAAS_WORKER_IMAGE:-localhost/dbaas-worker:dev} yet in $CLUSTER_IMAGE_STORE (scripts/stack images builds it)"
  local i
  for i in $(cluster_hosts); do engine_start "$i"; done
  for i in $(cluster_hosts); do
    wait_for "Docker engine h$i" 60 engine_answers "$i" || { tail -20 "$(engine_dir "$i")/service.log" >&2; return 1; }
  done
  log "Docker engines: $(cluster_docker_hosts)"
}

engines_down() {
  local i
  for i in $(cluster_hosts); do engine_stop "$i"; done
  rm -f "$CLUSTER_DIR/state/engines"
}

# --- the whole set ---------------------------------------------------------

# cluster_brokers_up : namespaces, then every RabbitMQ node and ZooKeeper
# server; returns once RabbitMQ is one cluster of all nodes and every
# ZooKeeper server serves in the ensemble.
cluster_brokers_up() {
  apt_install rabbitmq-server zookeeper default-jre-headless libslf4j-java python3
  cluster_net_up
  rabbit_config
  local i
  for i in $(cluster_hosts); do rabbit_start "$i"; zk_start "$i"; done
  for i in $(cluster_hosts); do
    wait_for "ZooKeeper h$i in the ensemble" 90 zk_serving "$i" || { tail -20 "$(zk_dir "$i")/stdout.log" >&2; return 1; }
  done
  for i in $(cluster_hosts); do
    wait_for "RabbitMQ h$i" 120 rabbit_port_open "$i" || { tail -20 "$(rabbit_dir "$i")/stdout.log" >&2; return 1; }
  done
  wait_for "one RabbitMQ cluster of $CLUSTER_SIZE nodes" 60 rabbit_cluster_formed || return 1
  rabbit_secure
  write_cluster_rabbitmqctl
  log "RabbitMQ cluster of $CLUSTER_SIZE and ZooKeeper ensemble of $CLUSTER_SIZE are up"
}

# cluster_brokers_down : every server in the namespaces (and epmd), by pid.
cluster_brokers_down() {
  local i pid
  for i in $(cluster_hosts); do
    rabbit_stop "$i" &
    zk_stop "$i" &
  done
  wait
  local left=()
  for i in $(cluster_hosts); do
    for pid in $(ip netns pids "$(cluster_ns "$i")" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null && left+=("$pid")
    done
  done
  # Wait until they are gone (epmd, the CLI's helpers), not just signalled.
  for pid in "${left[@]}"; do
    wait_for "process $pid to end" 10 bash -c "[ ! -e /proc/$pid ]" || log "process $pid did not end"
  done
  return 0
}

# cluster_node_status I : one block per host.
cluster_node_status() {
  local i=$1 beam java mode
  beam=$(cluster_pids "$i" beam.smp | head -1)
  java=$(cluster_pids "$i" java | head -1)
  echo "h$i ($(cluster_ip "$i"))"
  if [ -n "$beam" ]; then
    echo "  RabbitMQ rabbit@h$i: pid $beam"
    rabbitmqctl_on "$i" cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("    running nodes:", " ".join(s.get("running_nodes", [])) or "none")
print("    partitions:", s.get("partitions") or "none", "| alarms:", s.get("alarms") or "none")
' 2>/dev/null || echo "    cluster_status: no answer (paused or starting)"
  else
    echo "  RabbitMQ rabbit@h$i: not running"
  fi
  if [ -n "$java" ]; then
    mode=$(zk_mode "$i")
    echo "  ZooKeeper server.$i: pid $java, Mode: ${mode:-not serving}"
  else
    echo "  ZooKeeper server.$i: not running"
  fi
  if [ -f "$(engine_dir "$i")/service.pid" ]; then
    if engine_answers "$i"; then
      echo "  Docker engine $(engine_url "$i"): answers, $(engine_workers "$i" | wc -l) worker container(s)"
    else
      echo "  Docker engine $(engine_url "$i"): no answer"
    fi
  fi
  if ip netns exec "$(cluster_ns "$i")" iptables -S 2>/dev/null | grep -q dbaas-partition; then
    echo "  partitioned from its peers"
  fi
  if ip link show "${CLUSTER_NAME}-h$i" 2>/dev/null | grep -q "state DOWN"; then
    echo "  its link is down"
  fi
}
