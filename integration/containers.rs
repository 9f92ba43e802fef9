//! End to end through podman's Docker API: the orchestrator itself runs in a
//! container (static binary, FROM scratch, Docker socket mounted, docker
//! runtime), starts its master and slave as containers, serves reads and
//! writes, and survives crash/master and crash/slave with containers replaced.
//! `worker/list` shows the containers' host pids. Needs podman and the images,
//! which `scripts/test` provides (it runs this with `--include-ignored`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_until, Orchestrator};

/// Host pids of the running worker containers labelled for this orchestrator.
fn container_pids(instance: &str) -> BTreeSet<u64> {
    let out = Command::new("podman")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=dbaas.worker={instance}"),
        ])
        .output()
        .expect("podman ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|id| {
            let o = Command::new("podman")
                .args(["inspect", "-f", "{{.State.Pid}}", id])
                .output()
                .ok()?;
            String::from_utf8_lossy(&o.stdout).trim().parse().ok()
        })
        .filter(|p| *p > 0)
        .collect()
}

async fn listed(o: &Orchestrator) -> BTreeSet<u64> {
    o.pids().await.into_iter().collect()
}

#[tokio::test]
#[ignore = "needs podman and the images: scripts/test runs it"]
async fn the_orchestrator_in_a_container_runs_and_replaces_worker_containers() {
    let image = std::env::var("DBAAS_TEST_ORCHESTRATOR_IMAGE")
        .unwrap_or_else(|_| "localhost/dbaas-orchestrator:dev".into());
    let worker = std::env::var("DBAAS_TEST_WORKER_IMAGE")
        .unwrap_or_else(|_| "localhost/dbaas-worker:dev".into());
    let o = Orchestrator::in_container("container", &image, &worker, 1).await;
    let instance = o.ns.zk_hosts.clone();
    assert_eq!(
        listed(&o).await,
        container_pids(&instance),
        "worker/list shows the containers' host pids"
    );

    let seq = o.insert_user("in-a-container").await["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(o.usernames_at(seq).await, vec!["in-a-container"]);

    for path in ["/api/v1/crash/master", "/api/v1/crash/slave"] {
        let before = container_pids(&instance);
        let (status, body) = o.post_json(path, &Value::Null).await;
        assert_eq!(status, 200, "{path}: {body}");
        let killed: u64 = body[0]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("pid string");
        assert!(before.contains(&killed), "{path} killed a worker container");
        let now = wait_until("containers replaced", Duration::from_secs(60), || async {
            let s = o.wait_for_workers(1).await;
            let pids = container_pids(&instance);
            (pids.len() == 2 && !pids.contains(&killed) && listed(&o).await == pids).then_some(s)
        })
        .await;
        assert!(
            now.is_some(),
            "after {path}: {}\n{}",
            o.status().await,
            o.log()
        );
    }
    let seq = o.insert_user("after-crashes").await["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(
        o.usernames_at(seq).await,
        vec!["after-crashes", "in-a-container"]
    );
}
