//! What every bench target (`dbaas` in main.rs, `faults`, `restarts`,
//! `scale`) shares: the environment knobs, the machine line of a report and
//! where results go. The brokers come from `scripts/bench`, the orchestrator
//! processes from the benches' own harness (`harness/`).

#![allow(dead_code)]

use serde_json::Value;

/// The comma-separated list in `var`, if set.
pub fn narrowed(var: &str) -> Option<Vec<String>> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

/// Whether `item` is in the list in `var` (everything is when it is not set).
pub fn wanted(var: &str, item: &str) -> bool {
    narrowed(var).is_none_or(|l| l.iter().any(|i| i == item))
}

/// Whether `var` names `item` (false when it is not set): for parts that run
/// only when asked for.
pub fn named(var: &str, item: &str) -> bool {
    narrowed(var).is_some_and(|l| l.iter().any(|i| i == item))
}

/// `BENCH_SMOKE=1`: tiny sizes, figures not kept (CI).
pub fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1")
}

/// Whether `cargo bench` started this binary: `cargo test --all-targets` runs
/// it without `--bench`, and then there is nothing to do.
pub fn under_cargo_bench(name: &str) -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    println!("the benchmark runs with `cargo bench --bench {name}` (scripts/bench)");
    false
}

/// "Machine: 2 cores, `AMD EPYC ...`."
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("Machine: {cores} cores, `{model}`.")
}

/// Writes bench/results/`name`.md and `name`.json and prints the markdown.
pub fn write_results(name: &str, md: &str, json: &Value) {
    std::fs::create_dir_all("bench/results").expect("results dir");
    std::fs::write(format!("bench/results/{name}.md"), md).expect("write md");
    std::fs::write(
        format!("bench/results/{name}.json"),
        serde_json::to_string_pretty(json).unwrap_or_default(),
    )
    .expect("write json");
    println!("{md}");
}
