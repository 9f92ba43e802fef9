//! The deployment files match the binaries: every environment variable that
//! compose.yml or the Dockerfile gives a service is one its binary accepts
//! (checked against the real binaries' `--help`), and so is every variable the
//! orchestrator gives the workers it starts.

use std::collections::BTreeMap;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn help(binary: &str) -> String {
    let out = Command::new(crate::common::bin(binary))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `--help` lists `var` (`[env: VAR=value]`, or `[env: VAR]` for a
/// secret whose value clap hides).
fn accepts(help: &str, var: &str) -> bool {
    help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]"))
}

/// Variables every binary reads outside clap (logging).
const COMMON: &[&str] = &["RUST_LOG", "DBAAS_LOG_FORMAT", "TEAM_NAME"];

fn compose_env() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yml"))
        .expect("compose.yml");
    let docs = YamlLoader::load_from_str(&text).expect("compose.yml is YAML");
    let services = docs[0]["services"].as_hash().expect("services");
    services
        .iter()
        .filter_map(|(name, svc)| {
            let env = svc["environment"].as_hash()?;
            let keys = env
                .keys()
                .filter_map(Yaml::as_str)
                .map(String::from)
                .collect();
            Some((name.as_str()?.to_string(), keys))
        })
        .collect()
}

#[test]
fn every_variable_compose_passes_is_accepted_by_its_binary() {
    let env = compose_env();
    for binary in ["orchestrator", "users", "rides"] {
        let vars = env
            .get(binary)
            .unwrap_or_else(|| panic!("compose.yml has no environment for {binary}"));
        assert!(!vars.is_empty());
        let help = help(binary);
        for var in vars {
            assert!(
                COMMON.contains(&var.as_str()) || accepts(&help, var),
                "{binary} does not accept {var}"
            );
        }
    }
}

#[test]
fn every_variable_the_images_set_is_accepted() {
    let dockerfile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/containers/Dockerfile"
    ))
    .expect("Dockerfile");
    let mut stage = String::new();
    for line in dockerfile.lines() {
        if let Some(rest) = line.strip_prefix("FROM ") {
            stage = rest.rsplit(' ').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let binary = match stage.as_str() {
                "orchestrator" | "worker" | "users" | "rides" => stage.clone(),
                _ => continue,
            };
            let help = help(&binary);
            for pair in rest.split_whitespace() {
                let var = pair.split('=').next().unwrap_or("");
                assert!(
                    COMMON.contains(&var) || accepts(&help, var),
                    "{binary} image sets {var}, which it does not accept"
                );
            }
        }
    }
}

#[test]
fn every_variable_the_orchestrator_gives_workers_is_accepted() {
    let config = dbaas::orchestrator::Config {
        id: "o1".into(),
        advertise: "http://o1:80".into(),
        amqp_url: "amqp://x".into(),
        zk_hosts: "zk:2181".into(),
        zk_session_timeout: std::time::Duration::from_secs(2),
        bind: "0.0.0.0:80".into(),
        request_timeout: std::time::Duration::from_secs(5),
        initial_slaves: 1,
        scale_interval: std::time::Duration::from_secs(120),
        reads_per_slave: 20,
        slave_bounds: dbaas::actors::scaler::SlaveBounds::default(),
        http: dbaas::config::HttpLimits::default(),
        runtime: dbaas::orchestrator::RuntimeOptions::Docker {
            image: "w".into(),
            network: "host".into(),
            instance: "i".into(),
            hosts: Vec::new(),
        },
        stop_workers_on_exit: true,
        auth: dbaas::http::auth::Auth::open(),
    };
    let help = help("worker");
    let mut vars: Vec<String> = dbaas::orchestrator::worker_env(&config)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    vars.extend([
        "DBAAS_WORKER_NAME".to_string(),
        "DBAAS_DATA_DIR".to_string(),
    ]);
    for var in vars {
        assert!(
            COMMON.contains(&var.as_str()) || accepts(&help, &var),
            "worker does not accept {var}"
        );
    }
}

/// The documented Dockerfile check (hadolint is not packaged for this
/// machine): base images pinned to a version, and every service stage with a
/// HEALTHCHECK, an explicit USER, and TEAM_NAME in its environment.
#[test]
fn dockerfiles_pin_their_bases_and_declare_health_user_and_team() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/containers");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("containers/") {
        let path = entry.expect("entry").path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("Dockerfile"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut stages: Vec<String> = Vec::new();
        let mut facts: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("FROM ") {
                let mut words = rest.split_whitespace();
                let base = words.next().unwrap_or("");
                let name = words.nth(1).unwrap_or("final").to_string();
                let pinned = base == "scratch"
                    || stages.iter().any(|s| s == base)
                    || (base.contains(':') && !base.ends_with(":latest"));
                assert!(
                    pinned,
                    "{}: base {base} is not pinned to a version",
                    path.display()
                );
                // A stage built on another inherits its facts.
                let inherited = facts.get(base).cloned().unwrap_or_default();
                facts.insert(name.clone(), inherited);
                stages.push(name.clone());
                current = name;
            }
            for key in ["HEALTHCHECK", "USER", "TEAM_NAME", "ENTRYPOINT"] {
                if line.starts_with(key) || (key == "TEAM_NAME" && line.contains("TEAM_NAME=")) {
                    facts.entry(current.clone()).or_default().push(key);
                }
            }
        }
        for (stage, have) in &facts {
            if !have.contains(&"ENTRYPOINT") {
                continue; // build or base stage, not a service image
            }
            let static_image = path.to_string_lossy().contains(".static.");
            let needed: &[&str] = if static_image {
                &["TEAM_NAME"]
            } else {
                &["HEALTHCHECK", "USER", "TEAM_NAME"]
            };
            for key in needed {
                assert!(
                    have.contains(key),
                    "{} stage {stage} lacks {key}",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "found {checked} service stages");
}
