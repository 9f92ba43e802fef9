//! High availability with the process runtime: election on master death,
//! replacement of dead slaves, the crash and worker-list APIs, and detection of
//! workers killed from outside through ZooKeeper.

use std::time::Duration;

use serde_json::Value;

use crate::common::{alive, sigkill, slave_pids, wait_until, Options, Orchestrator};

fn roles(status: &Value) -> Vec<(u64, String)> {
    status["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["pid"].as_u64().unwrap_or(0),
                        w["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the status until `done` holds (and `dead` is no longer listed),
/// checking on every look that there is never more than one master. With
/// `strict`, `dead` must never show up at all (deaths the orchestrator caused).
async fn watch_until(
    o: &Orchestrator,
    dead: u64,
    strict: bool,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let found = wait_until(what, Duration::from_secs(30), || async {
        let s = o.status().await;
        let masters = roles(&s).iter().filter(|(_, r)| r == "master").count();
        assert!(masters <= 1, "two masters at once: {s}");
        let listed = o.pids().await.contains(&dead);
        assert!(!(strict && listed), "dead worker {dead} listed");
        (!listed && done(&s)).then_some(s)
    })
    .await;
    found.unwrap_or_else(|| panic!("{what} never happened"))
}

async fn write_users(o: &Orchestrator, prefix: &str, n: usize) -> u64 {
    let mut seq = 0;
    for i in 0..n {
        seq = o.insert_user(&format!("{prefix}{i:03}")).await["seq"]
            .as_u64()
            .expect("seq");
    }
    seq
}

#[tokio::test]
async fn starts_with_one_master_and_one_slave() {
    let o = Orchestrator::start("start", Options::default()).await;
    let pids = o.pids().await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "sorted: {pids:?}");
    let s = o.status().await;
    let mut r: Vec<String> = roles(&s).into_iter().map(|(_, r)| r).collect();
    r.sort();
    assert_eq!(r, vec!["master", "slave"]);
}

#[tokio::test]
async fn crash_master_elects_the_lowest_slave_and_keeps_every_write() {
    let o = Orchestrator::start(
        "crashmaster",
        Options {
            slaves: 2,
            ..Options::default()
        },
    )
    .await;
    let before = o.status().await;
    let master = before["master"].as_u64().expect("master");
    let lowest_slave = *slave_pids(&before).iter().min().expect("slave");
    let seq = write_users(&o, "before", 20).await;

    let (status, body) = o.post_json("/api/v1/crash/master", &Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!([master.to_string()]));
    assert!(!alive(master), "the master process is gone");
    assert!(
        !o.pids().await.contains(&master),
        "dead master not listed right after the crash"
    );

    let after = watch_until(
        &o,
        master,
        true,
        "new master and a replacement slave",
        |s| s["master"].as_u64() == Some(lowest_slave) && slave_pids(s).len() == 2,
    )
    .await;
    assert!(slave_pids(&after).iter().all(|p| *p != master));

    // Writes and reads work, and nothing written before the crash is lost.
    let seq2 = write_users(&o, "after", 5).await;
    assert!(seq2 > seq);
    let names = o.usernames_at(seq2).await;
    assert_eq!(names.len(), 25, "{names:?}");
    assert!(names.iter().filter(|n| n.starts_with("before")).count() == 20);
}

#[tokio::test]
async fn crash_slave_kills_the_highest_pid_and_replaces_it() {
    let o = Orchestrator::start(
        "crashslave",
        Options {
            slaves: 3,
            ..Options::default()
        },
    )
    .await;
    let s = o.status().await;
    let highest = *slave_pids(&s).iter().max().expect("slaves");
    let master = s["master"].as_u64();
    let (status, body) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!([highest.to_string()]))
    );
    let after = watch_until(&o, highest, true, "replacement slave", |s| {
        slave_pids(s).len() == 3
    })
    .await;
    assert_eq!(
        after["master"].as_u64(),
        master,
        "a slave crash does not move the master"
    );
    assert!(!alive(highest));
}

#[tokio::test]
async fn crash_slave_without_slaves_is_refused() {
    let o = Orchestrator::start(
        "noslave",
        Options {
            slaves: 0,
            ..Options::default()
        },
    )
    .await;
    let before = o.pids().await;
    let (status, body) = o.post_json("/api/v1/crash/slave", &Value::Null).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(o.pids().await, before, "nothing killed");
}

#[tokio::test]
async fn workers_killed_from_outside_are_detected_and_replaced() {
    let o = Orchestrator::start("sigkill", Options::default()).await;
    let seq = write_users(&o, "u", 5).await;

    // A slave, then the master, killed with SIGKILL by someone else.
    let slave = slave_pids(&o.status().await)[0];
    sigkill(slave);
    let s = watch_until(&o, slave, false, "slave replaced", |s| {
        slave_pids(s).len() == 1 && !slave_pids(s).contains(&slave)
    })
    .await;
    let master = s["master"].as_u64().expect("master");
    let survivor = slave_pids(&s)[0];
    assert_eq!(
        o.usernames_at(seq).await.len(),
        5,
        "the new slave has all the data"
    );

    sigkill(master);
    watch_until(&o, master, false, "failover after SIGKILL", |s| {
        s["master"].as_u64() == Some(survivor) && slave_pids(s).len() == 1
    })
    .await;
    let seq2 = o.insert_user("after-kill").await["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(o.usernames_at(seq2).await.len(), 6);
}

#[tokio::test]
async fn zookeeper_holds_one_master_znode_naming_a_live_worker() {
    let o = Orchestrator::start(
        "znodes",
        Options {
            slaves: 2,
            ..Options::default()
        },
    )
    .await;
    let zk = zookeeper_client::Client::connect(&o.ns.zk_hosts)
        .await
        .expect("zk");
    let (data, _) = zk.get_data("/dbaas/master").await.expect("master znode");
    let master: Value = serde_json::from_slice(&data).expect("json");
    let mut children: Vec<u64> = zk
        .list_children("/dbaas/workers")
        .await
        .expect("workers")
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    children.sort();
    assert_eq!(children, o.pids().await);
    assert!(children.contains(&master["pid"].as_u64().expect("pid")));
    // The master's own record agrees.
    let (data, _) = zk
        .get_data(&format!("/dbaas/workers/{}", master["pid"]))
        .await
        .expect("worker znode");
    let record: Value = serde_json::from_slice(&data).expect("json");
    let role = wait_until("master record", Duration::from_secs(5), || async {
        let (d, _) = zk
            .get_data(&format!("/dbaas/workers/{}", master["pid"]))
            .await
            .ok()?;
        let r: Value = serde_json::from_slice(&d).ok()?;
        (r["role"] == "master").then_some(r)
    })
    .await;
    assert!(role.is_some(), "master znode record: {record}");
}
