//! `dbaasctl`: the operator's command line for a running orchestrator.
//!
//! ```text
//! dbaasctl workers                  pid, role, applied seq, lag, age
//! dbaasctl status                   master, scaler, recent events
//! dbaasctl crash master|slave       kill a worker through the crash API
//! dbaasctl read '{"table":"users"}' run a read, print the rows as a table
//! dbaasctl write '{...}'            run a write, print its seq
//! dbaasctl dead list                quarantined writes in writeQ.dead (they stay)
//! dbaasctl dead retry <id>|--all    put them back on writeQ, fresh
//! dbaasctl dead drop <id>|--all     remove them for good
//! ```
//!
//! With a protected orchestrator, give a token in `DBAAS_TOKEN` (or a file in
//! `DBAAS_TOKEN_FILE`): `read`/`write` need the `data` scope, the rest `admin`.
//!
//! `dead` talks to RabbitMQ itself (`--amqp-url`, `DBAAS_AMQP_URL`): the
//! orchestrator's HTTP API has no operation that changes queues.

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dbaas::broker::dead::{self, DeadWrite, Select};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(version, about = "Operate a RideShare DBaaS orchestrator")]
struct Args {
    /// The orchestrator's base URL.
    #[arg(long, env = "DBAAS_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// API token, sent as `Authorization: Bearer` (give it in the environment,
    /// not as a flag: flags show in process listings).
    #[arg(long, env = "DBAAS_TOKEN", hide_env_values = true, global = true)]
    token: Option<dbaas::config::Secret>,
    /// A file whose first line is the API token (wins over DBAAS_TOKEN).
    #[arg(long, env = "DBAAS_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the workers: pid, role, applied sequence number, lag, age.
    Workers,
    /// Master, epoch, scaler state and recent supervisor events.
    Status,
    /// Kill the master, or the slave with the highest pid.
    Crash {
        #[arg(value_parser = ["master", "slave"])]
        which: String,
    },
    /// Run a read (JSON body of POST /api/v1/db/read) and print the rows.
    Read { body: String },
    /// Run a write (JSON body of POST /api/v1/db/write).
    Write { body: String },
    /// Quarantined (poison) writes waiting in writeQ.dead.
    Dead {
        /// RabbitMQ URL (with the vhost) of the DBaaS.
        #[arg(
            long,
            env = "DBAAS_AMQP_URL",
            hide_env_values = true,
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        #[command(subcommand)]
        action: DeadAction,
    },
}

#[derive(Subcommand, Debug)]
enum DeadAction {
    /// Print each dead write: id, what it does, deliveries, reason, time. They stay.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead writes to writeQ again (a fresh delivery count), then remove them.
    Retry(Which),
    /// Remove dead writes for good.
    Drop(Which),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct Which {
    /// The write id, as `dead list` shows it.
    write_id: Option<String>,
    /// Every dead write.
    #[arg(long)]
    all: bool,
}

impl Which {
    fn select(&self) -> Select {
        match &self.write_id {
            Some(id) if !self.all => Select::WriteId(id.clone()),
            _ => Select::All,
        }
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<String>,
) -> Result<Value, String> {
    let mut req = http.request(method, &url).timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{status}: {}",
            value["error"].as_str().unwrap_or("(no message)")
        ))
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Prints rows of objects as an aligned table.
fn table(header: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header));
    for r in rows {
        println!("{}", line(r));
    }
}

fn dead_rows(writes: &[DeadWrite]) -> Vec<Vec<String>> {
    writes
        .iter()
        .map(|w| {
            vec![
                w.write_id.clone(),
                w.what.clone(),
                w.deliveries.map_or("?".into(), |n| n.to_string()),
                w.at.clone().unwrap_or_else(|| "?".into()),
                w.reason.clone(),
            ]
        })
        .collect()
}

/// `dbaasctl dead ...`, against RabbitMQ.
async fn dead(amqp_url: &str, action: DeadAction) -> Result<(), String> {
    // The first node of a cluster's list that answers.
    let mut failures = Vec::new();
    let mut connected = None;
    for url in dbaas::broker::addresses(amqp_url) {
        let props = lapin::ConnectionProperties::default().with_connection_name("dbaasctl".into());
        let shown = dbaas::broker::redacted(url);
        match tokio::time::timeout(
            Duration::from_secs(10),
            lapin::Connection::connect(&dbaas::broker::with_heartbeat(url), props),
        )
        .await
        {
            Ok(Ok(conn)) => {
                connected = Some(conn);
                break;
            }
            Ok(Err(e)) => failures.push(format!("{shown}: {e}")),
            Err(_) => failures.push(format!("{shown}: connecting timed out")),
        }
    }
    let conn = connected.ok_or_else(|| failures.join("; "))?;
    let header = [
        "WRITE ID",
        "WRITE",
        "DELIVERIES",
        "QUARANTINED AT",
        "REASON",
    ]
    .map(String::from);
    let outcome = match action {
        DeadAction::List { json } => dead::list(&conn).await.map(|writes| {
            if json {
                for w in &writes {
                    println!("{}", serde_json::to_string(w).unwrap_or_default());
                }
            } else if writes.is_empty() {
                println!("writeQ.dead is empty");
            } else {
                table(&header, &dead_rows(&writes));
            }
        }),
        DeadAction::Retry(which) => {
            let select = which.select();
            dead::retry(&conn, &select)
                .await
                .and_then(|done| report("retried (back on writeQ)", &select, &done))
        }
        DeadAction::Drop(which) => {
            let select = which.select();
            dead::drop_writes(&conn, &select)
                .await
                .and_then(|done| report("dropped", &select, &done))
        }
    };
    let _ = conn.close(200, "done".into()).await;
    outcome.map_err(|e| format!("writeQ.dead: {e}"))
}

/// Prints what a `retry` or `drop` did; naming a write that is not there is an error.
fn report(verb: &str, select: &Select, done: &[DeadWrite]) -> anyhow::Result<()> {
    if let (Select::WriteId(id), true) = (select, done.is_empty()) {
        return Err(anyhow::anyhow!("no dead write with id {id}"));
    }
    for w in done {
        println!("{verb}: {} ({})", w.write_id, w.what);
    }
    println!("{} write(s) {verb}", done.len());
    Ok(())
}

/// An HTTP client that sends the token (if any) with every request.
fn http_client(args: &Args) -> Result<reqwest::Client, String> {
    let token = dbaas::config::secret_from(args.token.as_ref(), args.token_file.as_deref())
        .map_err(|e| e.to_string())?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
            .map_err(|_| "DBAAS_TOKEN must be visible ASCII".to_string())?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())
}

async fn run(args: Args) -> Result<(), String> {
    let http = http_client(&args)?;
    let base = args.url.trim_end_matches('/').to_string();
    match args.command {
        Command::Dead { amqp_url, action } => dead(&amqp_url, action).await?,
        Command::Workers => {
            let s = call(
                &http,
                reqwest::Method::GET,
                format!("{base}/api/v1/worker/status"),
                None,
            )
            .await?;
            let rows: Vec<Vec<String>> = s["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|w| {
                    vec![
                        cell(&w["pid"]),
                        cell(&w["role"]),
                        cell(&w["seq"]),
                        cell(&w["lag"]),
                        format!("{:.0}s", w["age_ms"].as_f64().unwrap_or(0.0) / 1000.0),
                    ]
                })
                .collect();
            table(
                &["PID", "ROLE", "SEQ", "LAG", "AGE"].map(String::from),
                &rows,
            );
        }
        Command::Status => {
            let s = call(
                &http,
                reqwest::Method::GET,
                format!("{base}/api/v1/worker/status"),
                None,
            )
            .await?;
            println!(
                "master {}  epoch {}  workers {}",
                cell(&s["master"]),
                cell(&s["epoch"]),
                s["workers"].as_array().map_or(0, Vec::len)
            );
            let sc = &s["scaler"];
            println!(
                "scaler: {} reads this interval, {} slave(s) wanted, next decision {}",
                cell(&sc["reads"]),
                cell(&s["supervisor"]["desired_slaves"]),
                sc["next_tick_in_ms"].as_u64().map_or(
                    "after the first read".to_string(),
                    |ms| format!("in {}s", ms.div_ceil(1000))
                )
            );
            for e in s["supervisor"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .rev()
                .take(10)
            {
                println!("  {}", cell(&e["what"]));
            }
        }
        Command::Crash { which } => {
            let v = call(
                &http,
                reqwest::Method::POST,
                format!("{base}/api/v1/crash/{which}"),
                None,
            )
            .await?;
            println!("killed {which} {}", cell(&v[0]));
        }
        Command::Read { body } => {
            let v = call(
                &http,
                reqwest::Method::POST,
                format!("{base}/api/v1/db/read"),
                Some(body),
            )
            .await?;
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            let header: Vec<String> = rows
                .first()
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| header.iter().map(|h| cell(&r[h])).collect())
                .collect();
            if !header.is_empty() {
                table(&header, &cells);
            }
            println!(
                "({} row(s), replica seq {}, worker {})",
                rows.len(),
                cell(&v["seq"]),
                cell(&v["worker"])
            );
        }
        Command::Write { body } => {
            let v = call(
                &http,
                reqwest::Method::POST,
                format!("{base}/api/v1/db/write"),
                Some(body),
            )
            .await?;
            println!(
                "seq {}, {} row(s) affected{}",
                cell(&v["seq"]),
                cell(&v["rows_affected"]),
                v["last_insert_id"]
                    .as_i64()
                    .map_or(String::new(), |id| format!(", id {id}"))
            );
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbaasctl: {e}");
            ExitCode::FAILURE
        }
    }
}
