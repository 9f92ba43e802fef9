# shellcheck shell=bash
# A Docker Engine API on this machine without Docker: podman (Debian packages
# podman + runc) serving the API on a private socket, and local images of the
# static binaries built FROM scratch (no registry needed). Sourced after
# services.sh.

STATIC_TARGET=x86_64-unknown-linux-gnu
STATIC_DIR=$ROOT/target/$STATIC_TARGET/release
WORKER_IMAGE=${WORKER_IMAGE:-localhost/dbaas-worker:dev}
ORCHESTRATOR_IMAGE=${ORCHESTRATOR_IMAGE:-localhost/dbaas-orchestrator:dev}
USERS_IMAGE=${USERS_IMAGE:-localhost/rideshare-users:dev}
RIDES_IMAGE=${RIDES_IMAGE:-localhost/rideshare-rides:dev}
# Registry-free stand-ins for the official images compose.yml defaults to
# (containers/local/), on a Debian base made here by mmdebstrap.
BASE_IMAGE=localhost/debian:bookworm
RABBITMQ_IMAGE=${RABBITMQ_IMAGE:-localhost/rideshare-rabbitmq:3.10}
ZOOKEEPER_IMAGE=${ZOOKEEPER_IMAGE:-localhost/rideshare-zookeeper:3.8}
NGINX_IMAGE=${NGINX_IMAGE:-localhost/rideshare-nginx:1.22}
# The base image's root filesystem is cached here across runs (outside RUN_DIR,
# which scripts/test may wipe): delete the directory to rebuild it.
IMAGE_CACHE=${IMAGE_CACHE:-$ROOT/.run/images}

# podman_containers_conf FILE [LINE...] : the containers.conf every podman
# here runs with (no systemd: runc, cgroupfs, events to a file), LINEs added
# to its [engine] section.
podman_containers_conf() {
  local file=$1; shift
  {
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\n'
    printf '%s\n' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' "$@"
  } > "$file"
}

start_podman() {
  apt_install podman runc
  local dir=$RUN_DIR/podman
  mkdir -p "$dir"
  podman_containers_conf "$dir/containers.conf"
  export CONTAINERS_CONF=$dir/containers.conf
  export DOCKER_HOST=unix://$dir/podman.sock
  if [ -S "$dir/podman.sock" ] && curl -sf --unix-socket "$dir/podman.sock" http://d/_ping >/dev/null 2>&1; then
    log "podman API already serving at $DOCKER_HOST"; return 0
  fi
  rm -f "$dir/podman.sock"
  log "starting podman's Docker API at $DOCKER_HOST"
  setsid podman system service --time=0 "$DOCKER_HOST" > "$dir/service.log" 2>&1 &
  echo $! > "$dir/launcher.pid"
  wait_for "podman API" 30 curl -sf --unix-socket "$dir/podman.sock" http://d/_ping
}

stop_podman() {
  local dir=$RUN_DIR/podman
  # Remove the containers our tests or runs left behind, then the service.
  if [ -S "$dir/podman.sock" ]; then
    podman ps -aq --filter label=dbaas.worker 2>/dev/null | xargs -r podman rm -f >/dev/null 2>&1 || true
  fi
  stop_health_ticker
  stop_pidfile "$dir/launcher.pid"
}

# build_static: the service binaries and the health probe as static binaries
# (glibc, crt-static).
build_static() {
  log "building static binaries for the images (target $STATIC_TARGET)"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
    --target "$STATIC_TARGET" --workspace --bin worker --bin orchestrator --bin users --bin rides \
    --bin healthcheck
}

# build_images: FROM scratch images of the static binaries, built locally: the
# worker, the orchestrator, users and rides.
build_images() {
  build_static
  local ctx=$RUN_DIR/image-context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$STATIC_DIR"/{worker,orchestrator,users,rides,healthcheck} "$ctx/"
  log "building $WORKER_IMAGE, $ORCHESTRATOR_IMAGE, $USERS_IMAGE and $RIDES_IMAGE"
  podman build -q -t "$WORKER_IMAGE" -f "$ROOT/containers/worker.static.Dockerfile" "$ctx" >/dev/null
  podman build -q -t "$ORCHESTRATOR_IMAGE" -f "$ROOT/containers/orchestrator.static.Dockerfile" "$ctx" >/dev/null
  podman build -q -t "$USERS_IMAGE" -f "$ROOT/containers/users.static.Dockerfile" "$ctx" >/dev/null
  podman build -q -t "$RIDES_IMAGE" -f "$ROOT/containers/rides.static.Dockerfile" "$ctx" >/dev/null
}

# build_base_image: localhost/debian:bookworm from `mmdebstrap --variant=minbase`,
# the root filesystem cached in $IMAGE_CACHE and imported once.
build_base_image() {
  if podman image exists "$BASE_IMAGE"; then return 0; fi
  local tar=$IMAGE_CACHE/debian-bookworm-minbase.tar
  if [ ! -f "$tar" ] || [ ! -s "$tar" ]; then
    apt_install mmdebstrap
    rm -rf "$tar" "$tar.part"
    mkdir -p "$IMAGE_CACHE"
    log "building a Debian bookworm root filesystem with mmdebstrap (cached in $tar)"
    # An explicit format: the .part name would otherwise mean a directory.
    mmdebstrap --variant=minbase --format=tar --quiet bookworm "$tar.part"
    mv "$tar.part" "$tar"
  fi
  log "importing $tar as $BASE_IMAGE"
  podman import -q "$tar" "$BASE_IMAGE" >/dev/null
}

# build_stack_images: every image compose.yml needs, without a registry: the
# base, RabbitMQ, ZooKeeper and nginx from Debian packages (podman's layer cache
# makes a rebuild on an unchanged base instant), and the project's four.
build_stack_images() {
  build_base_image
  local ctx=$ROOT/containers/local name image
  for name in rabbitmq zookeeper nginx; do
    case $name in
      rabbitmq) image=$RABBITMQ_IMAGE ;;
      zookeeper) image=$ZOOKEEPER_IMAGE ;;
      nginx) image=$NGINX_IMAGE ;;
    esac
    log "building $image (containers/local/$name.Dockerfile)"
    # Docker format: OCI images cannot carry a HEALTHCHECK.
    podman build -q --format docker --network host -t "$image" \
      -f "$ctx/$name.Dockerfile" "$ctx" >/dev/null
  done
  build_images
}

# stack_image_env: the compose.yml image variables for the images built here.
stack_image_env() {
  cat <<ENV
RABBITMQ_IMAGE=$RABBITMQ_IMAGE
ZOOKEEPER_IMAGE=$ZOOKEEPER_IMAGE
NGINX_IMAGE=$NGINX_IMAGE
ORCHESTRATOR_IMAGE=$ORCHESTRATOR_IMAGE
WORKER_IMAGE=$WORKER_IMAGE
USERS_IMAGE=$USERS_IMAGE
RIDES_IMAGE=$RIDES_IMAGE
ENV
}

# Podman runs health checks from systemd timers; without systemd (containers,
# CI, these machines) nothing runs them and a container stays "starting", so
# compose's `condition: service_healthy` would wait forever. The ticker runs
# each running container's check at its own interval, as Docker's daemon does
# (podman healthcheck run records the result and honours start_period).
health_ticker() {
  local -A next=() running=()
  local now id interval
  while :; do
    now=$(date +%s)
    while read -r id interval; do
      if [ -z "$id" ] || [ -z "$interval" ]; then continue; fi
      [ "$interval" -gt 0 ] || interval=30 # Docker's default
      if [ -n "${running[$id]:-}" ] && kill -0 "${running[$id]}" 2>/dev/null; then continue; fi
      if [ "${next[$id]:-0}" -le "$now" ]; then
        podman healthcheck run "$id" >/dev/null 2>&1 &
        running[$id]=$!
        next[$id]=$((now + interval))
      fi
    done < <(podman ps -q --no-trunc | xargs -r podman inspect --format \
      '{{if .Config.Healthcheck}}{{.Id}} {{printf "%.0f" .Config.Healthcheck.Interval.Seconds}}{{end}}' 2>/dev/null)
    sleep 1
  done
}

# start_health_ticker: a health ticker in the background (one per RUN_DIR),
# unless systemd can run podman's timers.
start_health_ticker() {
  [ -S /run/systemd/private ] && return 0
  local pidfile=$RUN_DIR/podman/health-ticker.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  mkdir -p "$RUN_DIR/podman"
  log "running container health checks (no systemd for podman's timers)"
  setsid bash -c "$(declare -f health_ticker); health_ticker" > "$RUN_DIR/podman/health-ticker.log" 2>&1 &
  echo $! > "$pidfile"
}

stop_health_ticker() { stop_pidfile "$RUN_DIR/podman/health-ticker.pid"; }
