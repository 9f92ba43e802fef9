# shellcheck shell=bash
# The compose deployment (compose.yml) on whichever engine this machine has: a
# Docker daemon, or podman serving the Docker Engine API (started here, with the
# registry-free images of `scripts/stack images`). Used by scripts/stack and by
# the end-to-end test (scripts/lib/compose_e2e.sh). Sourced after services.sh
# and podman.sh.

# The label value compose.yml gives the orchestrator (DBAAS_INSTANCE): it marks
# the worker containers this deployment's orchestrator starts.
STACK_INSTANCE=rideshare
# shellcheck disable=SC2034 # used by compose_e2e.sh
STACK_NETWORK=rideshare_dbaas

# use_engine: ENGINE=docker when a Docker daemon answers, else podman's API
# (started now if needed) with a health ticker. Exports DOCKER_HOST and
# DOCKER_SOCKET (the socket compose.yml mounts into the orchestrator).
use_engine() {
  if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] \
    && curl -sf --unix-socket /var/run/docker.sock http://d/_ping >/dev/null 2>&1 \
    && ! curl -sf --unix-socket /var/run/docker.sock http://d/version 2>/dev/null | grep -qi podman; then
    ENGINE=docker
    export DOCKER_SOCKET=/var/run/docker.sock
    return 0
  fi
  use_podman
}

# use_podman: podman's Docker API, with service names resolvable on compose
# networks (the CNI dnsname plugin) and health checks run.
use_podman() {
  ENGINE=podman
  start_podman
  apt_install golang-github-containernetworking-plugin-dnsname
  export DOCKER_SOCKET=${DOCKER_HOST#unix://}
  start_health_ticker
}

# engine ARGS...: the engine's CLI (podman's is compatible for what is used here).
engine() { if [ "$ENGINE" = docker ]; then docker "$@"; else podman "$@"; fi; }

# stack_compose PROJECT ENV_FILE ARGS...: docker-compose (v1, Debian's package)
# or `docker compose` on the real compose.yml.
stack_compose() {
  local project=$1 env_file=$2; shift 2
  if [ "$ENGINE" = docker ] && docker compose version >/dev/null 2>&1; then
    docker compose -p "$project" --env-file "$env_file" -f "$ROOT/compose.yml" "$@"
  else
    docker-compose -p "$project" --env-file "$env_file" -f "$ROOT/compose.yml" "$@"
  fi
}

# worker_containers: ids of the worker containers this deployment's
# orchestrator started (they are not compose services).
worker_containers() { engine ps -aq --filter "label=dbaas.worker=$STACK_INSTANCE"; }

# stack_down PROJECT ENV_FILE [-v]: the orchestrator stopped first (so it does
# not replace the workers being removed), then its worker containers removed,
# then compose down (containers, the network; with -v the volumes too).
stack_down() {
  local project=$1 env_file=$2; shift 2
  stack_compose "$project" "$env_file" stop orchestrator >/dev/null 2>&1 || true
  local ids
  ids=$(worker_containers)
  if [ -n "$ids" ]; then
    log "removing the worker containers ($(echo "$ids" | wc -w))"
    # shellcheck disable=SC2086 # one id per word
    engine rm -f $ids >/dev/null
  fi
  stack_compose "$project" "$env_file" down --remove-orphans "$@"
}

# stack_status PROJECT ENV_FILE: compose's view, each container's health, the workers.
stack_status() {
  local project=$1 env_file=$2
  stack_compose "$project" "$env_file" ps
  local ids
  ids=$(engine ps -aq --filter "label=com.docker.compose.project=$project")
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    engine inspect --format '{{.Name}}: {{.State.Status}}{{if .State.Health}}, {{.State.Health.Status}}{{end}}, restarts {{.RestartCount}}' $ids
  fi
  ids=$(worker_containers)
  if [ -n "$ids" ]; then
    echo "worker containers (started by the orchestrator):"
    # shellcheck disable=SC2086
    engine inspect --format '{{.Name}}: {{.State.Status}}, pid {{.State.Pid}}' $ids
  fi
}
