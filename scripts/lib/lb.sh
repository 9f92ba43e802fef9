# shellcheck shell=bash
# The local stand-in for the AWS Application Load Balancer: nginx routing
# /api/v1/users and /api/v1/users/* to the users service and everything else
# to the rides service, as a plain background process with its config, pid,
# logs and temp files under $RUN_DIR/nginx.
#
# Needs from the caller (scripts/lib/services.sh provides them): RUN_DIR,
# log, apt_install, wait_for.
#   LB_HOST (127.0.0.1)  LB_PORT (8080)       where the load balancer listens
#   USERS_HOST/USERS_PORT (127.0.0.1:8001)   the users service
#   RIDES_HOST/RIDES_PORT (127.0.0.1:8002)   the rides service

LB_HOST=${LB_HOST:-127.0.0.1}
LB_PORT=${LB_PORT:-8080}
USERS_HOST=${USERS_HOST:-127.0.0.1}
USERS_PORT=${USERS_PORT:-8001}
RIDES_HOST=${RIDES_HOST:-127.0.0.1}
RIDES_PORT=${RIDES_PORT:-8002}
# Optional: DBAAS_UPSTREAMS ("host:port host:port ...", several orchestrators)
# and DBAAS_LB_PORT: a second server on LB_HOST:DBAAS_LB_PORT spreading the
# DBaaS API over them, moving a request to the next orchestrator when one
# does not answer or answers 502/503 (scripts/cluster).
DBAAS_UPSTREAMS=${DBAAS_UPSTREAMS:-}
DBAAS_LB_PORT=${DBAAS_LB_PORT:-}

# lb_error_pages : prints the server directives that make nginx answer its own
# errors (oversized body or URI, malformed request, slow client, unreachable or
# slow upstream) as JSON like the API's {"error": "..."}. Upstream answers pass
# through untouched (proxy_intercept_errors is off).
lb_error_pages() {
  local code status message
  while IFS='|' read -r code status message; do
    # A URI rather than a named location: errors found in the request line
    # (414, 400) have no URI of their own to carry into a named location.
    echo "    error_page $code =$status /_lb_error/$code;"
    echo "    location = /_lb_error/$code { internal; default_type application/json; return $status '{\"error\": \"$message\"}'; }"
  done <<'PAGES'
400|400|bad request: the load balancer could not read it
404|404|no such route
408|408|request timeout: the request did not arrive in time
413|413|request body too large: at most 4 MiB
414|414|request URI too long
494|400|request headers too large
500|500|internal error in the load balancer
502|502|bad gateway: the service is unreachable
503|503|service unavailable
504|504|gateway timeout: the service did not answer in time
PAGES
}

# lb_config DIR : prints the nginx configuration.
lb_config() {
  local dir=$1 user=""
  # As root, nginx's workers would drop to nobody and could not use our temp dirs.
  [ "$(id -u)" -eq 0 ] && user="user $(id -un) $(id -gn);"
  cat <<CONF
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/client_body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  client_max_body_size 4m;
  # Slow clients are cut off (nginx answers 408) rather than holding connections.
  client_header_timeout 10s;
  client_body_timeout 10s;
  send_timeout 10s;

  upstream users { server $USERS_HOST:$USERS_PORT; keepalive 16; }
  upstream rides { server $RIDES_HOST:$RIDES_PORT; keepalive 16; }

  server {
    listen $LB_HOST:$LB_PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_read_timeout 60s;
$(lb_error_pages)

    # The path-based rules of the ALB: /api/v1/users* to users, the rest to rides.
    location = /api/v1/users { proxy_pass http://users; }
    location /api/v1/users/ { proxy_pass http://users; }
    location / { proxy_pass http://rides; }
  }
$(lb_dbaas_server)
}
CONF
}

# lb_dbaas_server : the DBaaS server block when DBAAS_UPSTREAMS is set.
lb_dbaas_server() {
  [ -n "$DBAAS_UPSTREAMS" ] && [ -n "$DBAAS_LB_PORT" ] || return 0
  local u servers=""
  for u in $DBAAS_UPSTREAMS; do servers="$servers server $u max_fails=1 fail_timeout=3s;"; done
  cat <<CONF
  upstream dbaas {$servers keepalive 16; }
  server {
    listen $LB_HOST:$DBAAS_LB_PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_read_timeout 60s;
    proxy_connect_timeout 2s;
    # A dead orchestrator's requests go to the next one (non-idempotent
    # writes too only when nothing was sent: a refused connection).
    proxy_next_upstream error timeout http_502 http_503;
$(lb_error_pages)
    location / { proxy_pass http://dbaas; }
  }
CONF
}

lb_answers() { curl -s -o /dev/null --max-time 2 "http://$LB_HOST:$LB_PORT/"; }

# start_lb : installs nginx if missing, writes its config and starts it in the
# background (not daemonized); returns once it answers HTTP.
start_lb() {
  apt_install nginx
  local dir=$RUN_DIR/nginx
  mkdir -p "$dir/tmp"
  lb_config "$dir" > "$dir/nginx.conf"
  /usr/sbin/nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    || { log "invalid nginx configuration $dir/nginx.conf"; return 1; }
  log "starting the load balancer on http://$LB_HOST:$LB_PORT (users $USERS_HOST:$USERS_PORT, rides $RIDES_HOST:$RIDES_PORT)"
  setsid /usr/sbin/nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    -g 'daemon off;' > "$dir/stdout.log" 2>&1 &
  echo $! > "$dir/launcher.pid"
  wait_for "the load balancer" 30 lb_answers || { tail -20 "$dir/error.log" >&2; return 1; }
}

# stop_lb : stops the nginx started by start_lb (and its worker).
stop_lb() {
  local dir=$RUN_DIR/nginx
  [ -f "$dir/launcher.pid" ] || return 0
  local pid; pid=$(cat "$dir/launcher.pid")
  kill -QUIT "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -TERM -- "-$pid" 2>/dev/null || true
  rm -f "$dir/launcher.pid"
}
