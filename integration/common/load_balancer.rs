//! nginx in front of several orchestrators, as a load balancer stands in
//! front of them in a deployment (the same upstream rules as
//! `scripts/lib/lb.sh`'s DBaaS server): requests spread round-robin, and one
//! that finds its orchestrator gone (connection refused or reset, 502, 503)
//! moves to the next. Non-idempotent requests already sent are not resent by
//! nginx: the client retries them (with their Idempotency-Key).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, terminate, wait_until};

pub struct LoadBalancer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

const NGINX: &str = "/usr/sbin/nginx";

impl LoadBalancer {
    /// Starts nginx on a free loopback port in front of `upstreams`
    /// (`host:port` each) and waits until it answers.
    pub async fn start(upstreams: &[String]) -> LoadBalancer {
        assert!(
            PathBuf::from(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        // As root, nginx's workers would drop to nobody and could not use our temp dir.
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;"
        } else {
            ""
        };
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u} max_fails=1 fail_timeout=3s; "))
            .collect();
        let config = format!(
            "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream dbaas {{ {servers}keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_connect_timeout 2s;
    proxy_read_timeout 60s;
    proxy_next_upstream error timeout http_502 http_503;
    location / {{ proxy_pass http://dbaas; }}
  }}
}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let lb = LoadBalancer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let health = format!("{}/api/v1/health", lb.url);
        wait_until("the load balancer", Duration::from_secs(30), || async {
            http.get(&health).send().await.ok().map(|_| ())
        })
        .await
        .expect("nginx answers");
        lb
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}
