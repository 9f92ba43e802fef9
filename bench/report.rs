//! The reporting half of the `dbaas` bench (`main.rs`): the figures that
//! `measure.rs` returns, as the markdown tables of bench/results/latest.md
//! and the entries of latest.json, section by section.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::curves::{knee, Curves};
use crate::measure::{CatchUp, Ceilings, Failover, RouteRun, Run};
use crate::shared::{machine, named, narrowed, smoke, write_results};

/// The report being written: markdown, its JSON, and the broker's ceilings
/// per concurrency (the HTTP figures are ratios to them: reads to the RPC
/// ceiling, writes to the replicated-write floor).
pub struct Report {
    md: String,
    json: Map<String, Value>,
    rpc_ceiling: HashMap<usize, f64>,
    write_floor: HashMap<usize, f64>,
    one_at_a_time: HashMap<usize, f64>,
}

fn run_json(r: &Run) -> Value {
    json!({
        "ok": r.ok, "failed": r.failed, "rps": r.rps(),
        "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "p999_ms": r.pct(0.999),
    })
}

fn min_med_max(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    json!({"min": v.first(), "median": v.get(v.len() / 2), "max": v.last(), "runs": v.len()})
}

impl Report {
    pub fn new() -> Report {
        let md = format!(
            "# DBaaS benchmark\n\n{} One run; ratios compare figures of this same run.\n\n",
            machine()
        );
        Report {
            md,
            json: Map::new(),
            rpc_ceiling: HashMap::new(),
            write_floor: HashMap::new(),
            one_at_a_time: HashMap::new(),
        }
    }

    fn line(&mut self, text: std::fmt::Arguments) {
        let _ = self.md.write_fmt(text);
        self.md.push('\n');
    }

    pub fn broker(&mut self, runs: &[(usize, Ceilings)]) {
        self.md.push_str(
            "## The broker's own limits (lapin, same machine, same run)\n\n\
             - **RPC ceiling**: a server that handles each delivery concurrently and \
             replies at once (the yardstick for reads).\n\
             - **replicated-write floor**: a persistent request on a durable (quorum) queue, \
             publisher-confirmed; the server appends it to a stream (confirmed), then replies \
             and acks, each delivery concurrently; no database (the yardstick for writes).\n\
             - **one at a time**: an RPC server that handles one delivery at a time (a \
             worker's shape, not the broker's limit; earlier reports called it the broker \
             limit).\n\n",
        );
        self.md
            .push_str("| yardstick | concurrency | req/s | p50 ms | p99 ms | p999 ms |\n");
        self.md.push_str("|---|---|---|---|---|---|\n");
        for (c, ceilings) in runs {
            for (name, key, r) in [
                ("RPC ceiling", "rpc_ceiling", &ceilings.rpc_ceiling),
                (
                    "replicated-write floor",
                    "write_floor",
                    &ceilings.write_floor,
                ),
                ("one at a time", "broker", &ceilings.one_at_a_time),
            ] {
                let (rps, p50, p99, p999) = (r.rps(), r.pct(0.5), r.pct(0.99), r.pct(0.999));
                self.line(format_args!(
                    "| {name} | {c} | {rps:.0} | {p50:.2} | {p99:.2} | {p999:.2} |"
                ));
                self.json.insert(format!("{key}_c{c}"), run_json(r));
            }
            self.rpc_ceiling.insert(*c, ceilings.rpc_ceiling.rps());
            self.write_floor.insert(*c, ceilings.write_floor.rps());
            self.one_at_a_time.insert(*c, ceilings.one_at_a_time.rps());
        }
    }

    /// Issue 20's comparison of reply routes: every run in the order it ran,
    /// then per concurrency and shape the median of the rounds, as a ratio to
    /// the shared queue's; `load` is /proc/loadavg before and after.
    pub fn replies(&mut self, runs: &[RouteRun], load: (&str, &str)) {
        self.md.push_str(
            "## Where the client receives its replies (issue 20)\n\n\
             The RPC ceiling's loop (server replies to each delivery at once) and the \
             replicated-write floor's (request persistent, publisher-confirmed, appended to a \
             stream before the reply), the client receiving replies on a shared named queue \
             (the spec's `responseQ`, the orchestrator's until issue 20), on an exclusive \
             auto-delete queue of its own, or by direct reply-to; the routes alternate, each \
             round starting with the next one (A B C, B C A, C A B).\n\n",
        );
        self.line(format_args!(
            "Load average before: `{}`; after: `{}`.\n",
            load.0.trim(),
            load.1.trim()
        ));
        self.md.push_str(
            "| concurrency | round | shape | replies | req/s | p50 ms | p99 ms | failed |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for r in runs {
            let (rps, p50, p99) = (r.run.rps(), r.run.pct(0.5), r.run.pct(0.99));
            self.line(format_args!(
                "| {} | {} | {} | {} | {rps:.0} | {p50:.2} | {p99:.2} | {} |",
                r.concurrency,
                r.round,
                r.shape,
                r.route.label(),
                r.run.failed
            ));
            let key = format!(
                "replies {} c{} {:?} round {}",
                r.shape, r.concurrency, r.route, r.round
            );
            self.json.insert(key, run_json(&r.run));
        }
        self.md.push_str(
            "\n| concurrency | shape | replies | median req/s | ratio to shared | rounds (req/s) |\n\
             |---|---|---|---|---|---|\n",
        );
        let mut groups: Vec<(usize, &str, crate::measure::ReplyRoute)> = Vec::new();
        for r in runs {
            let g = (r.concurrency, r.shape, r.route);
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let median = |c: usize, shape: &str, route| -> (f64, Vec<f64>) {
            let mut v: Vec<f64> = runs
                .iter()
                .filter(|r| r.concurrency == c && r.shape == shape && r.route == route)
                .map(|r| r.run.rps())
                .collect();
            let all = v.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), all)
        };
        for (c, shape, route) in groups {
            let (m, all) = median(c, shape, route);
            let (shared, _) = median(c, shape, crate::measure::ReplyRoute::Shared);
            let all: Vec<String> = all.iter().map(|x| format!("{x:.0}")).collect();
            self.line(format_args!(
                "| {c} | {shape} | {} | {m:.0} | {:.2} | {} |",
                route.label(),
                m / shared,
                all.join(", ")
            ));
        }
        self.md.push('\n');
    }

    pub fn http(&mut self, runs: &[(&str, usize, Run)]) {
        self.md
            .push_str("\n## Through the orchestrator (HTTP → RabbitMQ → worker → HTTP)\n\n");
        self.md.push_str(
            "Reads and the mix are compared with the RPC ceiling, inserts with the \
             replicated-write floor, both measured above in this run.\n\n\
             | workload | concurrency | req/s | ratio to its ceiling | p50 ms | p99 ms \
             | p999 ms | failed |\n",
        );
        self.md.push_str("|---|---|---|---|---|---|---|---|\n");
        for (w, c, r) in runs {
            let ceiling = if w.contains("insert") {
                &self.write_floor
            } else {
                &self.rpc_ceiling
            };
            let ratio = r.rps() / ceiling.get(c).copied().unwrap_or(f64::NAN);
            let (rps, pct) = (r.rps(), ratio * 100.0);
            let (p50, p99, p999) = (r.pct(0.5), r.pct(0.99), r.pct(0.999));
            self.line(format_args!(
                "| {w} | {c} | {rps:.0} | {pct:.0}% | {p50:.2} | {p99:.2} | {p999:.2} | {} |",
                r.failed
            ));
            let mut j = run_json(r);
            j["ratio_to_ceiling"] = json!(ratio);
            let one = self.one_at_a_time.get(c).copied().unwrap_or(f64::NAN);
            j["ratio_to_one_at_a_time"] = json!(r.rps() / one);
            self.json.insert(format!("{w} c{c}"), j);
        }
    }

    pub fn memory(&mut self, mem: &[(String, Option<u64>)]) {
        self.md
            .push_str("\n## Peak memory (VmHWM) after the load above\n\n");
        self.md.push_str("| process | peak MiB |\n|---|---|\n");
        for (name, kib) in mem {
            let mib = kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            self.line(format_args!("| {name} | {mib} |"));
        }
        let by_name: Map<String, Value> = mem.iter().map(|(n, k)| (n.clone(), json!(k))).collect();
        self.json
            .insert("peak_memory_kib".into(), Value::Object(by_name));
    }

    pub fn failover(&mut self, f: &Failover) {
        let runs = f.by_api.len();
        self.line(format_args!(
            "\n## Failover: to the first successful write ({runs} runs)\n"
        ));
        self.md
            .push_str("| cause | min s | median s | max s |\n|---|---|---|---|\n");
        for (name, v) in [
            ("crash/master API", &f.by_api),
            ("SIGKILL of the master", &f.by_kill),
        ] {
            let j = min_med_max(v.clone());
            let at = |k: &str| j[k].as_f64().unwrap_or(0.0);
            let (min, median, max) = (at("min"), at("median"), at("max"));
            self.line(format_args!(
                "| {name} | {min:.3} | {median:.3} | {max:.3} |"
            ));
            self.json.insert(format!("failover {name}"), j);
        }
    }

    pub fn catch_up(&mut self, joins: &[CatchUp]) {
        self.md.push_str(
            "\n## Catch-up: crash/slave until the replacement serves a read of the latest \
             write\n\n",
        );
        self.md
            .push_str("| rows | history (writes) | mode | seconds |\n|---|---|---|---|\n");
        for j in joins {
            let (rows, history, mode, secs) = (j.rows, j.history, j.mode, j.secs);
            self.line(format_args!("| {rows} | {history} | {mode} | {secs:.2} |"));
            let key = if j.single_rows {
                format!("catch-up {rows} single-row writes {mode}")
            } else {
                format!("catch-up {rows} rows {mode}")
            };
            self.json.insert(key, json!(secs));
        }
    }

    pub fn scaling(&mut self, secs: f64) {
        self.line(format_args!(
            "\n## Scaling\n\nFrom the decision (45 reads → 3 slaves) to both new slaves \
             serving reads: {secs:.2} s."
        ));
        self.json
            .insert("scale-out decision to serving".into(), json!(secs));
    }

    pub fn curves(&mut self, c: &Curves) {
        self.md.push_str(
            "\n## Scale figures (issue 17)\n\n\
             Point reads through the orchestrator with 1, 2 and 4 slaves (10 000 users; \
             ratios to the RPC ceiling of this run when it was measured):\n\n\
             | slaves | concurrency | req/s | ratio to the ceiling | p50 ms | p99 ms | failed |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for (slaves, conc, r) in &c.by_slaves {
            let ratio = r.rps() / self.rpc_ceiling.get(conc).copied().unwrap_or(f64::NAN);
            let (rps, p50, p99) = (r.rps(), r.pct(0.5), r.pct(0.99));
            self.line(format_args!(
                "| {slaves} | {conc} | {rps:.0} | {:.2} | {p50:.2} | {p99:.2} | {} |",
                ratio, r.failed
            ));
            let mut j = run_json(r);
            j["ratio_to_ceiling"] = json!(ratio);
            self.json
                .insert(format!("point read {slaves} slaves c{conc}"), j);
        }
        self.md.push_str(
            "\nInserts of 1, 10 and 100 users per write (1 slave): writes/s, rows/s, \
             ratio of writes/s to the replicated-write floor of this run:\n\n\
             | rows per write | concurrency | writes/s | rows/s | ratio to the floor | p50 ms | p99 ms | failed |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for (rows, conc, r) in &c.by_rows {
            let ratio = r.rps() / self.write_floor.get(conc).copied().unwrap_or(f64::NAN);
            let (rps, p50, p99) = (r.rps(), r.pct(0.5), r.pct(0.99));
            let rows_per_s = rps * *rows as f64;
            self.line(format_args!(
                "| {rows} | {conc} | {rps:.0} | {rows_per_s:.0} | {ratio:.2} | {p50:.2} | {p99:.2} | {} |",
                r.failed
            ));
            let mut j = run_json(r);
            j["rows_per_s"] = json!(rows_per_s);
            j["ratio_to_floor"] = json!(ratio);
            self.json.insert(format!("insert {rows} rows c{conc}"), j);
        }
        self.md.push_str(
            "\nPoint reads from 1 to 128 clients (1 slave):\n\n\
             | clients | req/s | p50 ms | p99 ms | p999 ms | failed |\n|---|---|---|---|---|---|\n",
        );
        for (clients, r) in &c.by_clients {
            let (rps, p50, p99, p999) = (r.rps(), r.pct(0.5), r.pct(0.99), r.pct(0.999));
            self.line(format_args!(
                "| {clients} | {rps:.0} | {p50:.2} | {p99:.2} | {p999:.2} | {} |",
                r.failed
            ));
            self.json
                .insert(format!("point read sweep c{clients}"), run_json(r));
        }
        match knee(&c.by_clients) {
            Some(k) => self.line(format_args!(
                "\nThroughput stops growing (less than 10 % more with twice the clients) \
                 after {k} clients."
            )),
            None => self.line(format_args!("\nThroughput still grew at 128 clients.")),
        }
        self.json
            .insert("point read knee clients".into(), json!(knee(&c.by_clients)));
    }

    /// Writes bench/results/latest.*, or smoke.* (`BENCH_SMOKE=1`) or
    /// partial.* (a narrowed run), so that neither overwrites the published
    /// figures.
    pub fn write(self) {
        let knobs = [
            "BENCH_PARTS",
            "BENCH_WORKLOADS",
            "BENCH_CONCURRENCY",
            "BENCH_LOAD_SECS",
        ];
        let name = if smoke() {
            "smoke"
        } else if named("BENCH_PARTS", "curves") {
            "curves"
        } else if knobs.iter().any(|v| narrowed(v).is_some()) {
            "partial"
        } else {
            "latest"
        };
        write_results(name, &self.md, &Value::Object(self.json));
    }
}
