# shellcheck shell=bash
# up_twice: scripts/up run twice in a row on the same data, as a user would:
# up, create a user through the load balancer, Ctrl-C, up again, and the user
# is there, with every worker resuming its own copy (no replay, no snapshot),
# and no process running without the snapshot secret scripts/up generates.
# Private ports and run directory, so a running scripts/up is left alone.
# Sourced by scripts/test (after services.sh); uses the debug binaries.
# Runs under `set -e`: every command that may fail is checked.

# exited PID: the process is gone (or a zombie waiting for us to reap it).
exited() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ $stat == Z* ]]
}

# up_twice_leftovers DIR: stops what a scripts/up that did not stop left running.
up_twice_leftovers() {
  RUN_DIR=$1 AMQP_PORT=5702 ZK_PORT=2211 LB_PORT=8190 bash -c \
    'source scripts/lib/services.sh; source scripts/lib/lb.sh; stop_lb; stop_services' || true
}

up_twice() {
  local dir=$RUN_DIR/up-twice
  rm -rf "$dir"
  mkdir -p "$dir"
  local lb=8190 orch=8110
  local env=(env -u DBAAS_AMQP_URL -u DBAAS_ZK_HOSTS -u DBAAS_SNAPSHOT_SECRET RUN_DIR="$dir" AMQP_PORT=5702
    ZK_PORT=2211 ORCH_PORT=$orch LB_PORT=$lb USERS_PORT=8111 RIDES_PORT=8112
    DBAAS_PROFILE=debug DBAAS_BUILD=0)
  local name="up-twice-$RANDOM"
  local password=0123456789abcdef0123456789abcdef01234567
  local round
  for round in 1 2; do
    setsid "${env[@]}" scripts/up > "$dir/up-$round.log" 2>&1 &
    local up=$!
    if ! wait_for "scripts/up (round $round)" 300 curl -sf "http://127.0.0.1:$lb/api/v1/users"; then
      tail -30 "$dir/up-$round.log" >&2
      kill -TERM "$up" 2>/dev/null || true
      wait_for "scripts/up to stop" 90 exited "$up" || kill -KILL -- "-$up" 2>/dev/null
      wait "$up" 2>/dev/null || true
      up_twice_leftovers "$dir"
      return 1
    fi
    local ok=0
    if [ "$round" = 1 ]; then
      curl -sf -X PUT -H 'Content-Type: application/json' \
        -d "{\"username\":\"$name\",\"password\":\"$password\"}" \
        "http://127.0.0.1:$lb/api/v1/users" >/dev/null && ok=1
    else
      curl -sf "http://127.0.0.1:$lb/api/v1/users" | grep -q "\"$name\"" && ok=1
      local status
      status=$(curl -sf "http://127.0.0.1:$orch/api/v1/worker/status") || status=""
      # Every worker reopened its own copy.
      if [ "$(grep -o '"start":"[a-z_]*"' <<<"$status" | sort -u)" != '"start":"own_file"' ]; then
        log "not every worker resumed its own copy: $status"
        ok=0
      fi
    fi
    # scripts/up generated a snapshot secret, and every process has it.
    if grep -qs "snapshots are not authenticated" "$dir/up-$round.log" "$dir"/logs/*; then
      log "a process of scripts/up runs without the snapshot secret"
      ok=0
    fi
    # TERM: Ctrl-C's INT is ignored by a script started in the background.
    kill -TERM "$up" 2>/dev/null || true
    if ! wait_for "scripts/up to stop (round $round)" 90 exited "$up"; then
      kill -KILL -- "-$up" 2>/dev/null || true
      up_twice_leftovers "$dir"
      ok=0
    fi
    # Its status is the signal's (143): the round's verdict is $ok. (Under
    # scripts/test's `set -e` a bare `wait` would end the whole run.)
    wait "$up" 2>/dev/null || true
    if [ "$ok" != 1 ]; then
      log "scripts/up round $round failed"
      tail -40 "$dir/up-$round.log" >&2
      return 1
    fi
    log "scripts/up round $round: ok"
  done
}
