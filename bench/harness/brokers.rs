//! A RabbitMQ node and a ZooKeeper server of one bench's own, started and
//! stopped through `scripts/lib/services.sh` (the code `scripts/up` runs),
//! for the benches that restart them or need a whole broker to themselves.

use std::path::PathBuf;
use std::process::Command;

use super::Namespace;

pub struct PrivateBrokers {
    dir: tempfile::TempDir,
    amqp_port: u16,
    zk_port: u16,
}

/// A free port `p` with `p + 20000` free too (RabbitMQ's distribution port).
fn rabbit_port() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..200)
        .map(|_| 15000 + (uuid::Uuid::new_v4().as_u128() % 20000) as u16)
        .find(|&p| free(p) && free(p + 20000))
        .expect("a free port pair for RabbitMQ")
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

    fn services(&self, script: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!("source scripts/lib/services.sh; {script}"))
            .current_dir(repo())
            .env("RUN_DIR", self.dir.path())
            .env("AMQP_PORT", self.amqp_port.to_string())
            .env("ZK_PORT", self.zk_port.to_string())
            .env_remove("DBAAS_AMQP_URL")
            .env_remove("DBAAS_ZK_HOSTS")
            .env_remove("AMQP_USER");
        c
    }

    fn run(&self, script: &str) {
        let out = self
            .services(&format!("set -e; {script}"))
            .output()
            .expect("run services.sh");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script}: {err}");
    }

    /// The brokers, with the password services.sh generated for its user.
    pub fn namespace(&self) -> Namespace {
        let path = self.dir.path().join("secrets/rabbitmq-password");
        let password =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Namespace {
            amqp_url: format!(
                "amqp://dbaas:{}@127.0.0.1:{}/%2f",
                password.trim(),
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

    pub fn stop_zookeeper(&self) {
        self.run(r#"stop_pidfile "$RUN_DIR/zookeeper/launcher.pid""#);
    }

    pub fn start_zookeeper(&self) {
        self.run("start_zookeeper");
    }
}

impl Drop for PrivateBrokers {
    fn drop(&mut self) {
        let _ = self.services("stop_services").output();
    }
}
