# shellcheck shell=bash
# A Docker Engine API on this machine without Docker: podman (Debian packages
# podman + runc) serving the API on a private socket, and local images of the
# static binaries built FROM scratch (no registry needed). Sourced after
# services.sh.

STATIC_TARGET=x86_64-unknown-linux-gnu
STATIC_DIR=$ROOT/target/$STATIC_TARGET/release
WORKER_IMAGE=${WORKER_IMAGE:-localhost/dbaas-worker:dev}
ORCHESTRATOR_IMAGE=${ORCHESTRATOR_IMAGE:-localhost/dbaas-orchestrator:dev}

start_podman() {
  apt_install podman runc
  local dir=$RUN_DIR/podman
  mkdir -p "$dir"
  cat > "$dir/containers.conf" <<CONF
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
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
  stop_pidfile "$dir/launcher.pid"
}

# build_static: the orchestrator and worker as static binaries (glibc, crt-static).
build_static() {
  log "building static binaries for the images (target $STATIC_TARGET)"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
    --target "$STATIC_TARGET" --bin worker --bin orchestrator
}

# build_images: FROM scratch images of the static binaries, built locally.
build_images() {
  build_static
  local ctx=$RUN_DIR/image-context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$STATIC_DIR/worker" "$STATIC_DIR/orchestrator" "$ctx/"
  log "building $WORKER_IMAGE and $ORCHESTRATOR_IMAGE"
  podman build -q -t "$WORKER_IMAGE" -f "$ROOT/containers/worker.static.Dockerfile" "$ctx" >/dev/null
  podman build -q -t "$ORCHESTRATOR_IMAGE" -f "$ROOT/containers/orchestrator.static.Dockerfile" "$ctx" >/dev/null
}
