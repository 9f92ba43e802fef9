//! `scripts/bench`: measures the DBaaS against the broker's own RPC limit on the
//! same machine in the same run, plus failover, catch-up and scaling times and
//! peak memory. Writes bench/results/latest.md and latest.json.
//! `BENCH_SMOKE=1` runs everything with tiny sizes (CI). For quick comparisons
//! while working on one path, `BENCH_PARTS` (e.g. `broker,http`), `BENCH_WORKLOADS`
//! (e.g. `point read`) and `BENCH_CONCURRENCY` (e.g. `16`) narrow the run; a
//! narrowed run writes bench/results/partial.* instead of latest.*.
//! `BENCH_PARTS=replies` (only when named) compares the ways the client can
//! receive its replies (issue 20); `BENCH_PARTS=curves` (only when named, with
//! `broker` for the ratios) measures the scale figures of issue 17 into
//! bench/results/curves.*.
//!
//! - [`measure`]: each part's run, returning its figures.
//! - [`curves`]: issue 17's scale figures (slaves, rows per write, clients).
//! - [`report`]: the figures as markdown and JSON.
//! - [`harness`]: orchestrator processes in namespaces of their own.
//! - [`shared`]: what every bench target shares (knobs, machine line, files).

mod curves;
mod harness;
mod measure;
mod report;
mod shared;

use measure::Sizes;
use report::Report;
use shared::wanted;

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to test here.
    if !shared::under_cargo_bench("dbaas") {
        return;
    }
    let sz = Sizes::from_env();
    let mut report = Report::new();
    // 1. The broker's own RPC limit, with the payload sizes of real requests.
    if wanted("BENCH_PARTS", "broker") {
        report.broker(&measure::broker(&sz).await);
    }
    // Issue 20: the ways of receiving replies, A B C A B C (only when named:
    // `BENCH_PARTS=replies`).
    if shared::named("BENCH_PARTS", "replies") {
        let before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let runs = measure::reply_routes(&sz, 3).await;
        let after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        report.replies(&runs, (&before, &after));
    }
    // Issue 17's scale figures (only when named: `BENCH_PARTS=broker,curves`).
    if shared::named("BENCH_PARTS", "curves") {
        report.curves(&curves::curves(&sz).await);
    }
    // 2. Through the orchestrator's HTTP API, 3. its peak memory, and
    // 4. failover, on the same loaded system.
    if wanted("BENCH_PARTS", "http") || wanted("BENCH_PARTS", "failover") {
        let o = measure::loaded_system().await;
        if wanted("BENCH_PARTS", "http") {
            report.http(&measure::http(&o, &sz).await);
            report.memory(&measure::peak_memory(&o).await);
        }
        if wanted("BENCH_PARTS", "failover") {
            report.failover(&measure::failover(&o, sz.failover_runs).await);
        }
    }
    // 5. Catch-up of a new slave: snapshot vs replaying the whole history.
    if wanted("BENCH_PARTS", "catchup") {
        report.catch_up(&measure::catch_up(&sz).await);
    }
    // 6. Scaling: from the decision to the new slaves serving.
    if wanted("BENCH_PARTS", "scaling") {
        report.scaling(measure::scaling().await);
    }
    report.write();
}
