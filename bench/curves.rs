//! Issue 17's scale figures (`BENCH_PARTS=curves`, only when named): point-read
//! throughput with 1, 2 and 4 slaves; insert throughput against the rows each
//! write carries; point reads from 1 to 128 clients, to find the load where
//! throughput stops growing and the latencies there. The RPC ceiling and the
//! replicated-write floor come from the same run (`BENCH_PARTS=broker,curves`).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::measure::{load, loaded_system_with, post_ok, request, Run, Sizes};

/// The figures of the three curves.
pub struct Curves {
    /// (slaves, concurrency, point reads).
    pub by_slaves: Vec<(usize, usize, Run)>,
    /// (rows per write, concurrency, writes).
    pub by_rows: Vec<(usize, usize, Run)>,
    /// (concurrency, point reads), with 1 slave.
    pub by_clients: Vec<(usize, Run)>,
}

/// Slave counts measured.
const SLAVES: [usize; 3] = [1, 2, 4];
/// Rows per insert measured.
const ROWS: [usize; 3] = [1, 10, 100];
/// Concurrency of the sweep.
const CLIENTS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

pub async fn curves(sz: &Sizes) -> Curves {
    let mut by_slaves = Vec::new();
    let mut by_rows = Vec::new();
    let mut by_clients = Vec::new();
    for slaves in SLAVES {
        let o = loaded_system_with(slaves).await;
        for &c in &sz.concurrency {
            let (http, base) = (o.http.clone(), Arc::new(o.url.clone()));
            let run = load(c, sz.load_secs, move |n| {
                request(http.clone(), base.clone(), "point read", n)
            })
            .await;
            by_slaves.push((slaves, c, run));
        }
        if slaves != 1 {
            continue;
        }
        for clients in CLIENTS {
            let (http, base) = (o.http.clone(), Arc::new(o.url.clone()));
            let run = load(clients, sz.load_secs, move |n| {
                request(http.clone(), base.clone(), "point read", n)
            })
            .await;
            by_clients.push((clients, run));
        }
        for rows in ROWS {
            for &c in &sz.concurrency {
                let (http, url) = (o.http.clone(), Arc::new(o.url("/api/v1/db/write")));
                let run = load(c, sz.load_secs, move |n| {
                    let (http, url) = (http.clone(), url.clone());
                    async move { post_ok(&http, &url, &users(rows, n)).await }
                })
                .await;
                by_rows.push((rows, c, run));
            }
        }
    }
    Curves {
        by_slaves,
        by_rows,
        by_clients,
    }
}

/// An insert of `rows` new users, the `n`th write of its run.
fn users(rows: usize, n: usize) -> Value {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let rows: Vec<Value> = (0..rows)
        .map(|r| json!({"username": format!("c{rows}-{n}-{r}-{tag}"), "password": "p"}))
        .collect();
    json!({"table": "users", "insert": rows})
}

/// The first concurrency of the sweep whose throughput is less than 10 %
/// above the one before it: where adding clients adds only latency.
pub fn knee(by_clients: &[(usize, Run)]) -> Option<usize> {
    by_clients
        .windows(2)
        .find(|w| w[1].1.rps() < w[0].1.rps() * 1.10)
        .map(|w| w[0].0)
}
