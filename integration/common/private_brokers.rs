//! A RabbitMQ node and a ZooKeeper server of one test's own, started and
//! stopped through `scripts/lib/services.sh` (the same code `scripts/up`
//! uses), for the tests that restart or kill them: the shared brokers of the
//! other tests are never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Namespace;

pub struct PrivateBrokers {
    pub dir: tempfile::TempDir,
    pub amqp_port: u16,
    pub zk_port: u16,
}

/// A free port `p` with `p + 20000` free too (RabbitMQ's distribution port).
fn rabbit_port() -> u16 {
    for _ in 0..200 {
        let p = 15000 + (uuid::Uuid::new_v4().as_u128() % 20000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 20000) {
            return p;
        }
    }
    panic!("no free port pair for RabbitMQ");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl PrivateBrokers {
    pub fn start() -> PrivateBrokers {
        let b = PrivateBrokers {
            dir: tempfile::tempdir().expect("tempdir"),
            amqp_port: rabbit_port(),
            zk_port: super::free_port(),
        };
        b.run("start_rabbitmq & r=$!; start_zookeeper; wait $r");
        b
    }

    fn run(&self, script: &str) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -e; source scripts/lib/services.sh; {script}"))
            .current_dir(repo())
            .env("RUN_DIR", self.dir.path())
            .env("AMQP_PORT", self.amqp_port.to_string())
            .env("ZK_PORT", self.zk_port.to_string())
            .env_remove("DBAAS_AMQP_URL")
            .env_remove("DBAAS_ZK_HOSTS")
            .env_remove("AMQP_USER")
            .output()
            .expect("run services.sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The password services.sh generated for the broker's user (`dbaas`).
    pub fn amqp_password(&self) -> String {
        let path = self.dir.path().join("secrets/rabbitmq-password");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    pub fn namespace(&self) -> Namespace {
        Namespace {
            name: format!("private-{}", self.amqp_port),
            amqp_url: format!(
                "amqp://dbaas:{}@127.0.0.1:{}/%2f",
                self.amqp_password(),
                self.amqp_port
            ),
            zk_hosts: format!("127.0.0.1:{}", self.zk_port),
        }
    }

    pub fn stop_rabbitmq(&self) {
        self.run(r#"stop_pidfile "$RUN_DIR/rabbitmq/launcher.pid""#);
    }

    pub fn start_rabbitmq(&self) {
        self.run("start_rabbitmq");
    }

    /// kill -9 of the broker's whole process group.
    pub fn kill_rabbitmq(&self) {
        self.run(
            r#"pid=$(cat "$RUN_DIR/rabbitmq/launcher.pid"); kill -KILL -- "-$pid"; wait_for "RabbitMQ gone" 20 group_gone "$pid"; rm -f "$RUN_DIR/rabbitmq/launcher.pid""#,
        );
    }

    pub fn stop_zookeeper(&self) {
        self.run(r#"stop_pidfile "$RUN_DIR/zookeeper/launcher.pid""#);
    }

    pub fn start_zookeeper(&self) {
        self.run("start_zookeeper");
    }

    /// Whether the broker has put on disk the registration of every Ra server
    /// it runs: the stream coordinator (which starts `syncQ`'s members) and
    /// each quorum queue (`writeQ`). RabbitMQ 3.10 (Ra 2.2) keeps each
    /// server's name in a `names.dets` table saved 500 ms after its last
    /// change; killed before that, the node restarts without the server: the
    /// stream stays `down` (`NOT_FOUND - home node ... is down`) and the
    /// quorum queue is recreated empty and never elects a leader, for good,
    /// whatever the clients do. Found here when the server's data directory
    /// (named by its uid) has its uid in `names.dets`.
    pub fn ra_servers_registered_on_disk(&self) -> bool {
        let node = format!("dbaas-{}@localhost", self.amqp_port);
        let base = self.dir.path().join("rabbitmq/mnesia").join(&node);
        ["coordination", "quorum"].iter().all(|system| {
            let dir = base.join(system).join(&node);
            let Ok(names) = std::fs::read(dir.join("names.dets")) else {
                return false;
            };
            let uids: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            !uids.is_empty()
                && uids
                    .iter()
                    .all(|uid| names.windows(uid.len()).any(|w| w == uid.as_bytes()))
        })
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateBrokers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg("source scripts/lib/services.sh; stop_services")
            .current_dir(repo())
            .env("RUN_DIR", self.dir.path())
            .output();
    }
}
