//! A tiny health probe for images without a shell: `--url U` succeeds on a 2xx
//! answer within 2 s; `--file F --max-age-secs N` succeeds if F was modified in
//! the last N seconds (the worker's heartbeat).

// Nothing from the network or the user may panic the service: no unwrap or
// expect outside tests (tests use them to fail loudly).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::time::{Duration, SystemTime};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Container health probe")]
struct Args {
    /// HTTP URL that must answer 2xx.
    #[arg(long)]
    url: Option<String>,
    /// File that must have been modified recently.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// How recent the file must be.
    #[arg(long, default_value_t = 10)]
    max_age_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let ok = match (&a.url, &a.file) {
        (Some(url), _) => reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        (None, Some(file)) => std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age <= Duration::from_secs(a.max_age_secs)),
        (None, None) => false,
    };
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
