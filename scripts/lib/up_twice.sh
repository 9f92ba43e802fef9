# shellcheck shell=bash
# up_twice: scripts/up run twice in a row on the same data, as a user would:
# up, create a user through the load balancer, Ctrl-C, up again, and the user
# is there, with every worker resuming its own copy (no replay, no snapshot),
# and no process running without the snapshot secret scripts/up generates.
# In the first round also: the load balancer answers its own errors (a body
# over client_max_body_size, a URI too long) in JSON, and the orchestrator
# killed with SIGKILL is restarted by scripts/up, ready again, the user still
# readable.
# Private ports and run directory, so a running scripts/up is left alone.
# Sourced by scripts/test (after services.sh); uses the debug binaries.
# Runs under `set -e`: every command that may fail is checked.
# Alone, once `cargo build --workspace --bins` has built them:
#   RUN_DIR=$PWD/.run/test bash -c 'set -euo pipefail; source scripts/lib/services.sh;
#     source scripts/lib/up_twice.sh; up_twice'

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

# is_json FILE: FILE holds one JSON document.
is_json() {
  if command -v jq >/dev/null; then jq -e . "$1" >/dev/null 2>&1
  else python3 -m json.tool "$1" >/dev/null 2>&1; fi
}

# lb_error_is_json WHAT STATUS DIR CURL_ARGS...: the load balancer answers the
# request CURL_ARGS with STATUS, Content-Type application/json and a JSON body
# (its own error, not nginx's HTML page).
lb_error_is_json() {
  local what=$1 want=$2 dir=$3; shift 3
  local got
  got=$(curl -s -o "$dir/lb-error.body" -w '%{http_code} %{content_type}' --max-time 20 "$@") || got="none"
  if [[ $got != "$want application/json"* ]] || ! is_json "$dir/lb-error.body"; then
    log "load balancer, $what: expected $want with a JSON body, got '$got': $(head -c 300 "$dir/lb-error.body" 2>/dev/null)"
    return 1
  fi
  log "load balancer, $what: $want, JSON ($(head -c 100 "$dir/lb-error.body"))"
}

# lb_errors_are_json LB_PORT DIR: a body over client_max_body_size (4m in
# scripts/lib/lb.sh) and a URI longer than nginx's request-line buffers (8k).
lb_errors_are_json() {
  local lb=$1 dir=$2
  head -c $((5 * 1024 * 1024)) /dev/zero | tr '\0' 'a' > "$dir/lb-big.body"
  local big=0
  lb_error_is_json "a 5 MiB body" 413 "$dir" -X PUT -H 'Content-Type: application/json' \
    --data-binary "@$dir/lb-big.body" "http://127.0.0.1:$lb/api/v1/users" || big=1
  rm -f "$dir/lb-big.body"
  [ "$big" = 0 ] || return 1
  local long
  long=$(head -c 20000 /dev/zero | tr '\0' 'a')
  lb_error_is_json "a 20000-character URI" 414 "$dir" "http://127.0.0.1:$lb/api/v1/users?q=$long"
}

# orchestrator_of SESSION: the pid of the orchestrator process of the
# scripts/up whose session is SESSION (it ran under setsid).
orchestrator_of() {
  ps -o pid=,comm= -s "$1" 2>/dev/null | awk '$2 == "orchestrator" { print $1 }'
}

# ready_at PORT: the orchestrator on PORT answers /api/v1/ready with 200.
ready_at() { curl -sf --max-time 5 "http://127.0.0.1:$1/api/v1/ready" >/dev/null; }

# lb_lists_user LB_PORT NAME: the users service lists NAME (through the load balancer).
lb_lists_user() { curl -sf --max-time 10 "http://127.0.0.1:$1/api/v1/users" | grep -q "\"$2\""; }

# new_orchestrator SESSION OLD: an orchestrator other than OLD runs in SESSION.
new_orchestrator() {
  local pid
  pid=$(orchestrator_of "$1")
  [ -n "$pid" ] && [ "$pid" != "$2" ]
}

# orchestrator_survives_sigkill SESSION ORCH_PORT LB_PORT NAME: kills the
# orchestrator of that scripts/up with SIGKILL; scripts/up restarts it, it is
# ready again and user NAME (written before) is still read back.
orchestrator_survives_sigkill() {
  local session=$1 orch=$2 lb=$3 name=$4
  local old=""
  [ -n "$session" ] && old=$(orchestrator_of "$session")
  if [ -z "$old" ]; then log "no orchestrator process in session $session"; return 1; fi
  log "orchestrator $old: SIGKILL"
  kill -KILL "$old" || return 1
  local t0=$SECONDS
  wait_for "orchestrator $old to die" 20 exited "$old" || return 1
  wait_for "scripts/up to restart the orchestrator" 60 new_orchestrator "$session" "$old" || return 1
  wait_for "the restarted orchestrator to be ready" 120 ready_at "$orch" || return 1
  wait_for "the user written before the kill" 60 lb_lists_user "$lb" "$name" || return 1
  log "orchestrator restarted as $(orchestrator_of "$session"), ready, the user still there ($((SECONDS - t0)) s after the kill)"
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
      if [ "$ok" = 1 ]; then
        lb_errors_are_json "$lb" "$dir" || ok=0
      fi
      local session
      session=$(ps -o sid= -p "$up" | tr -d ' ') || session=""
      if [ "$ok" = 1 ]; then
        orchestrator_survives_sigkill "$session" "$orch" "$lb" "$name" || ok=0
      fi
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
