//! The RideShare `users` and `rides` services as processes on free ports,
//! rides pointing straight at users (no load balancer), each stopped on drop
//! with its log shown when the test failed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{bin, free_port, terminate, wait_until, Options, Orchestrator};

/// The `Origin` the rides services of the tests send to users.
pub const RIDES_ORIGIN: &str = "http://rides.test.example";

/// A users or rides process.
pub struct Service {
    child: Child,
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts `bin` ("users" or "rides") with `env` and waits until it serves.
    pub async fn start(bin_name: &str, env: &[(&str, String)]) -> Service {
        let bind_var = match bin_name {
            "users" => "USERS_BIND",
            "rides" => "RIDES_BIND",
            other => panic!("{other} is not a RideShare service"),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{bin_name}.log"));
        let port = free_port();
        let mut child = Command::new(bin(bin_name))
            .env(bind_var, format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env("RIDESHARE_TIMEOUT_MS", "8000")
            // Short, so that a DBaaS that is down answers 503 soon.
            .env("RIDESHARE_RETRY_MS", "1000")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start service");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let count_url = format!("{url}/api/v1/_count");
        let up = wait_until(bin_name, Duration::from_secs(30), || {
            let (http, count_url) = (http.clone(), count_url.clone());
            async move {
                let r = http.get(&count_url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        if up.is_none() || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            panic!(
                "{bin_name} never served:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Service {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    /// A users service on the DBaaS at `dbaas`.
    pub async fn users(dbaas: &str) -> Service {
        Service::start("users", &[("DBAAS_URL", dbaas.to_string())]).await
    }

    /// A rides service on the DBaaS at `dbaas`, checking users at `users`.
    pub async fn rides(dbaas: &str, users: &str) -> Service {
        let env = [
            ("DBAAS_URL", dbaas.to_string()),
            ("USERS_URL", users.to_string()),
            ("RIDES_ORIGIN", RIDES_ORIGIN.to_string()),
        ];
        Service::start("rides", &env).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A DBaaS (orchestrator, master, slave) with both services on it.
pub struct Stack {
    // Field order is drop order: the services before the orchestrator.
    pub rides: Service,
    pub users: Service,
    pub o: Orchestrator,
}

impl Stack {
    pub async fn start(test: &str) -> Stack {
        let o = Orchestrator::start(test, Options::default()).await;
        let users = Service::users(&o.url).await;
        let rides = Service::rides(&o.url, &users.url).await;
        Stack { rides, users, o }
    }
}
