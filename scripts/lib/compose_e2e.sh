# shellcheck shell=bash
# The compose deployment end to end (issue 18): the real compose.yml brought up
# by docker-compose through podman's Docker API with the images built here,
# every service healthy, the RideShare API through the load balancer's
# published port, the DBaaS API and its crash endpoints through the
# orchestrator's, containers killed and brought back by their restart policy,
# and `down -v` leaving nothing behind. Sourced by scripts/test after
# services.sh, podman.sh and stack.sh; run as `compose_e2e`.

E2E_PROJECT=rideshare-e2e
E2E_LB_PORT=${E2E_LB_PORT:-18080}
E2E_ORCH_PORT=${E2E_ORCH_PORT:-18000}
PASSWORD_HEX=3d725109c7e7c0bfb9d709836735b56d943d263f

compose_e2e() {
  ( set -euo pipefail; _compose_e2e )
}

fail() { log "compose e2e FAILED: $*"; exit 1; }

# req METHOD URL [JSON]: the status code; the body in $E2E_DIR/body.
req() {
  local args=(-s -o "$E2E_DIR/body" -w '%{http_code}' -X "$1" --max-time 30)
  [ $# -lt 3 ] || args+=(-H 'Content-Type: application/json' --data "$3")
  case $2 in
    "$ORCH"*) [ -z "$TOKEN" ] || args+=(-H "Authorization: Bearer $TOKEN") ;;
  esac
  curl "${args[@]}" "$2" || echo 000
}

# expect CODE METHOD URL [JSON]: the call answers CODE (else the test fails).
expect() {
  local want=$1 got; shift
  got=$(req "$@")
  [ "$got" = "$want" ] || fail "$1 $2 ${3:-}: $got, expected $want: $(head -c 500 "$E2E_DIR/body")"
}

# body_is JQ_EXPR VALUE: the last body's JQ_EXPR (compact JSON) is VALUE.
body_is() {
  local got
  got=$(jq -c "$1" "$E2E_DIR/body") || fail "not JSON: $(head -c 300 "$E2E_DIR/body")"
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2 (body $(head -c 300 "$E2E_DIR/body"))"
}

# until_true SECONDS WHAT COMMAND...: polls COMMAND (every 0.5 s) until it succeeds.
until_true() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

service_container() {
  engine ps -aq --filter "label=com.docker.compose.project=$E2E_PROJECT" \
    --filter "label=com.docker.compose.service=$1"
}
state_of() { engine inspect --format "$2" "$(service_container "$1")"; }
healthy() { [ "$(state_of "$1" '{{.State.Health.Status}}')" = healthy ]; }
all_healthy() {
  local s
  for s in rabbitmq zookeeper orchestrator users rides lb; do healthy "$s" || return 1; done
}

# The host pids of the running worker containers, sorted, one line.
container_pids() {
  local ids
  ids=$(engine ps -q --filter "label=dbaas.worker=$STACK_INSTANCE")
  [ -n "$ids" ] || { echo; return 0; }
  # shellcheck disable=SC2086
  engine inspect --format '{{.State.Pid}}' $ids | sort -n | paste -sd' '
}
listed_pids() {
  [ "$(req GET "$ORCH/api/v1/worker/list")" = 200 ] || return 1
  jq -r '.[]' "$E2E_DIR/body" | sort -n | paste -sd' '
}

# write_and_read NAME: a DBaaS write, then a read at its seq through the orchestrator.
write_and_read() {
  expect 200 POST "$ORCH/api/v1/db/write" \
    "{\"table\": \"users\", \"insert\": {\"username\": \"$1\", \"password\": \"$PASSWORD_HEX\"}}"
  local seq
  seq=$(jq -r .seq "$E2E_DIR/body")
  expect 200 POST "$ORCH/api/v1/db/read" \
    "{\"table\": \"users\", \"columns\": [\"username\"], \"where\": {\"username\": \"$1\"}, \"min_seq\": $seq}"
  body_is '[.rows[].username]' "[\"$1\"]"
}

# crash KIND: crash/KIND kills a worker container; a replacement serves, the
# dead pid is never listed again, and worker/list matches the containers.
crash() {
  local before killed list pids
  before=$(container_pids)
  # Container id by host pid, to check the killed one is removed, not left stopped.
  local ids by_pid
  ids=$(engine ps -q --filter "label=dbaas.worker=$STACK_INSTANCE")
  # shellcheck disable=SC2086
  by_pid=$(engine inspect --format '{{.State.Pid}} {{.Id}}' $ids)
  expect 200 POST "$ORCH/api/v1/crash/$1"
  killed=$(jq -r '.[0]' "$E2E_DIR/body")
  [[ " $before " == *" $killed "* ]] || fail "crash/$1 killed $killed, not one of the worker containers ($before)"
  local killed_id
  killed_id=$(awk -v p="$killed" '$1 == p {print $2}' <<< "$by_pid")
  [ -n "$killed_id" ] || fail "crash/$1: no container id for pid $killed"
  local deadline=$((SECONDS + 90))
  while :; do
    list=$(listed_pids) || list="?"
    [[ " $list " != *" $killed "* ]] || fail "crash/$1: the dead pid $killed is still listed ($list)"
    pids=$(container_pids)
    if [ "$list" = "$pids" ] && [ "$(wc -w <<< "$pids")" -eq 2 ] && [[ " $pids " != *" $killed "* ]] \
      && [ -z "$(engine ps -aq --filter "id=$killed_id")" ]; then break; fi
    [ $SECONDS -lt $deadline ] || fail "crash/$1: listed [$list], containers [$pids], killed container ${killed_id:0:12} $(engine ps -a --filter "id=$killed_id" --format '{{.Status}}') 90 s after killing $killed"
    sleep 0.5
  done
  log "crash/$1 killed $killed (its container removed); workers now $pids (containers and worker/list agree)"
  write_and_read "e2e-after-crash-$1"
}

# running_again SERVICE OLD_PID: its container runs, with another process.
running_again() {
  local pid
  pid=$(state_of "$1" '{{if .State.Running}}{{.State.Pid}}{{end}}')
  [ -n "$pid" ] && [ "$pid" != 0 ] && [ "$pid" != "$2" ]
}

# restarted SERVICE: its main process killed from the host (a crash: Docker
# treats `docker kill` as a manual stop and does not restart), the restart
# policy brings the same container back, and it becomes healthy again.
restarted() {
  local pid0 count0
  pid0=$(state_of "$1" '{{.State.Pid}}')
  count0=$(state_of "$1" '{{.RestartCount}}')
  kill -KILL "$pid0"
  until_true 60 "$1 restarted by its restart policy" running_again "$1" "$pid0"
  until_true 120 "$1 healthy after its restart" healthy "$1"
  log "$1: killed pid $pid0, restarted by the engine (restarts $count0 -> $(state_of "$1" '{{.RestartCount}}')) and healthy"
}

_compose_e2e() {
  local t0=$SECONDS
  E2E_DIR=$RUN_DIR/compose-e2e
  mkdir -p "$E2E_DIR"
  LB=http://127.0.0.1:$E2E_LB_PORT
  ORCH=http://127.0.0.1:$E2E_ORCH_PORT
  ! port_open "$E2E_LB_PORT" || fail "port $E2E_LB_PORT is taken (set E2E_LB_PORT)"
  ! port_open "$E2E_ORCH_PORT" || fail "port $E2E_ORCH_PORT is taken (set E2E_ORCH_PORT)"

  use_podman
  build_stack_images
  log "images built in $((SECONDS - t0)) s"

  # The env file: .env.example (the variables compose.yml requires), then this
  # test's secrets, ports and the local images.
  local env=$E2E_DIR/env
  {
    cat "$ROOT/.env.example"
    echo "RABBITMQ_USER=e2e"
    echo "RABBITMQ_PASS=e2e-$RANDOM$RANDOM"
    echo "DBAAS_SNAPSHOT_SECRET=e2e-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    echo "ORCHESTRATOR_PORT=$E2E_ORCH_PORT"
    echo "LB_PORT=$E2E_LB_PORT"
    stack_image_env
  } > "$env"
  # The admin token, if the deployment has one (sent to the orchestrator).
  TOKEN=$(grep -E '^DBAAS_ADMIN_TOKENS?=' "$env" | tail -1 | cut -d= -f2- | cut -d, -f1 || true)

  if engine network ls --format '{{.Name}}' | grep -qx "$STACK_NETWORK"; then
    if [ -n "$(engine ps -aq --filter "label=com.docker.compose.project=$E2E_PROJECT")" ]; then
      log "removing what an earlier run left"
      stack_down "$E2E_PROJECT" "$env" -v >/dev/null 2>&1 || true
    fi
    ! engine network ls --format '{{.Name}}' | grep -qx "$STACK_NETWORK" \
      || fail "network $STACK_NETWORK exists: another deployment is up (scripts/stack down)"
  fi

  # shellcheck disable=SC2154 # status is assigned in the trap
  trap 'status=$?; if [ $status -ne 0 ]; then
      stack_compose "$E2E_PROJECT" "$env" ps >&2 || true
      stack_compose "$E2E_PROJECT" "$env" logs --no-color --tail 40 >&2 || true
      stack_down "$E2E_PROJECT" "$env" -v >/dev/null 2>&1 || true
    fi' EXIT

  log "docker-compose up -d (project $E2E_PROJECT, load balancer on $E2E_LB_PORT, orchestrator on $E2E_ORCH_PORT)"
  local t1=$SECONDS
  timeout 600 docker-compose -p "$E2E_PROJECT" --env-file "$env" -f "$ROOT/compose.yml" up -d \
    || fail "docker-compose up"
  until_true 180 "every service healthy" all_healthy
  log "every service healthy $((SECONDS - t1)) s after up"

  log "RideShare through the load balancer"
  expect 200 DELETE "$LB/api/v1/_count"
  expect 201 PUT "$LB/api/v1/users" "{\"username\": \"e2e-alice\", \"password\": \"$PASSWORD_HEX\"}"
  expect 201 PUT "$LB/api/v1/users" "{\"username\": \"e2e-bob\", \"password\": \"$PASSWORD_HEX\"}"
  expect 200 GET "$LB/api/v1/users"
  body_is . '["e2e-alice","e2e-bob"]'
  local when
  when=$(date -u -d '+1 day' +%d-%m-%Y:%S-%M-%H)
  expect 201 POST "$LB/api/v1/rides" \
    "{\"created_by\": \"e2e-alice\", \"timestamp\": \"$when\", \"source\": 1, \"destination\": 2}"
  expect 200 GET "$LB/api/v1/rides?source=1&destination=2"
  body_is '[.[] | [.username, .timestamp]]' "[[\"e2e-alice\",\"$when\"]]"
  local ride
  ride=$(jq -r '.[0].rideId' "$E2E_DIR/body")
  expect 200 GET "$LB/api/v1/rides/$ride"
  body_is '[.created_by, .users, .source, .destination]' '["e2e-alice",[],1,2]'
  expect 200 POST "$LB/api/v1/rides/$ride" '{"username": "e2e-bob"}'
  expect 200 GET "$LB/api/v1/rides/$ride"
  body_is .users '["e2e-bob"]'
  expect 200 GET "$LB/api/v1/rides/count"
  body_is . '[1]'
  # The rides service counted the six calls above (_count itself is not counted).
  expect 200 GET "$LB/api/v1/_count"
  body_is . '[6]'

  log "the DBaaS through the orchestrator"
  local pids list
  pids=$(container_pids)
  list=$(listed_pids) || fail "worker/list: $(cat "$E2E_DIR/body")"
  [ "$(wc -w <<< "$pids")" -eq 2 ] || fail "expected a master and a slave container, found [$pids]"
  [ "$list" = "$pids" ] || fail "worker/list [$list] is not the worker containers' pids [$pids]"
  local net
  # shellcheck disable=SC2016,SC2046 # a Go template; one id per word
  net=$(engine inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' \
    $(engine ps -q --filter "label=dbaas.worker=$STACK_INSTANCE") | xargs -n1 | sort -u | paste -sd' ')
  [ "$net" = "$STACK_NETWORK" ] || fail "worker containers are on [$net], not $STACK_NETWORK"
  write_and_read e2e-direct
  crash master
  crash slave

  log "restart policies: the orchestrator, users and rides killed"
  pids=$(container_pids)
  restarted orchestrator
  list=$(listed_pids) || fail "worker/list after the restart: $(cat "$E2E_DIR/body")"
  if [ "$list" != "$pids" ] || [ "$(container_pids)" != "$pids" ]; then fail "the restarted orchestrator lists [$list], containers [$(container_pids)]; before: [$pids] (not adopted)"; fi
  log "the restarted orchestrator adopted the running workers [$pids]"
  write_and_read e2e-after-orchestrator-restart
  restarted users
  expect 201 PUT "$LB/api/v1/users" "{\"username\": \"e2e-carol\", \"password\": \"$PASSWORD_HEX\"}"
  restarted rides
  expect 201 POST "$LB/api/v1/rides" \
    "{\"created_by\": \"e2e-carol\", \"timestamp\": \"$when\", \"source\": 1, \"destination\": 2}"
  expect 200 GET "$LB/api/v1/rides/count"
  body_is . '[2]'

  log "down -v"
  local volumes
  # shellcheck disable=SC2046
  volumes=$(engine inspect --format '{{range .Mounts}}{{if .Name}}{{.Name}} {{end}}{{end}}' \
    $(engine ps -aq --filter "label=com.docker.compose.project=$E2E_PROJECT") | xargs -n1 | sort -u)
  [ -n "$volumes" ] || fail "no volumes found on the stack's containers"
  stack_down "$E2E_PROJECT" "$env" -v
  trap - EXIT
  [ -z "$(engine ps -aq --filter "label=com.docker.compose.project=$E2E_PROJECT")" ] || fail "containers left after down"
  [ -z "$(worker_containers)" ] || fail "worker containers left after down"
  ! engine network ls --format '{{.Name}}' | grep -qx "$STACK_NETWORK" || fail "network $STACK_NETWORK left after down"
  local v
  for v in $volumes; do
    ! engine volume inspect "$v" >/dev/null 2>&1 || fail "volume $v left after down -v"
  done
  log "compose e2e passed in $((SECONDS - t0)) s (nothing left: containers, workers, network, $(wc -w <<< "$volumes") volumes)"
}
