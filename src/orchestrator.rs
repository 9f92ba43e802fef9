//! Wiring of the orchestrator process: starts the actors, keeps its RabbitMQ
//! session and its ZooKeeper session (both come back after their server
//! restarts), feeds the actors (replies on its own reply queue, ZooKeeper
//! membership, worker exits), stands for leadership among the orchestrators
//! (`coord::leadership`: only the leader supervises and scales; every one
//! serves HTTP), serves HTTP, and shuts down in order. It never exits because
//! a dependency is away: it answers 503 meanwhile, and `/api/v1/ready` says
//! why.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::actors::dispatcher::{AmqpPublisher, Dispatcher, SetPublisher};
use crate::actors::election::{self, Election};
use crate::actors::rpc::{replies, Rpc};
use crate::actors::rpc_waiter::{Abandon, RpcWaiter};
use crate::actors::scaler::{Scaler, SlaveBounds};
use crate::actors::supervisor::{ContainerSupervisor, StopAll, WorkerExited};
use crate::broker;
use crate::config::HttpLimits;
use crate::coord::leadership::{self, Campaign, OrchestratorInfo, Standing, ZkFence};
use crate::coord::{self, session::Session};
use crate::http::{self, AppState};
use crate::runtime::docker::{DockerConfig, DockerRuntime};
use crate::runtime::process::{ProcessConfig, ProcessRuntime};
use crate::runtime::WorkerRuntime;

/// `DBAAS_DOCKER_HOSTS`: the engines the docker runtime spreads workers over.
pub use crate::runtime::docker::parse_hosts as parse_docker_hosts;

#[derive(Debug, Clone)]
pub struct Config {
    /// This orchestrator's name among the orchestrators (unique).
    pub id: String,
    /// Base URL at which the other orchestrators reach its HTTP API.
    pub advertise: String,
    pub amqp_url: String,
    pub zk_hosts: String,
    pub zk_session_timeout: Duration,
    pub bind: String,
    pub request_timeout: Duration,
    pub initial_slaves: usize,
    pub scale_interval: Duration,
    pub reads_per_slave: u64,
    /// The fewest and the most slaves the scaler asks for (the initial
    /// number, before its first decision, is the operator's: not bounded).
    pub slave_bounds: SlaveBounds,
    /// Client timeouts and the connection cap of the HTTP server.
    pub http: HttpLimits,
    pub runtime: RuntimeOptions,
    /// Stop every worker when the orchestrator stops (else they run on and the
    /// next orchestrator adopts them).
    pub stop_workers_on_exit: bool,
    /// Who may call which route (tokens, or open: see [`http::auth`]).
    pub auth: http::auth::Auth,
}

/// Which runtime runs the workers, with its settings.
#[derive(Debug, Clone)]
pub enum RuntimeOptions {
    /// Local OS processes.
    Process {
        worker_bin: PathBuf,
        data_dir: PathBuf,
        log_dir: Option<PathBuf>,
    },
    /// Containers through the Docker Engine API (DOCKER_HOST or the local socket).
    Docker {
        image: String,
        network: String,
        /// Label value that marks this orchestrator's workers.
        instance: String,
        /// The engines workers may run on, by name (empty: DOCKER_HOST).
        hosts: Vec<(String, String)>,
    },
}

const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = crate::prometheus::install()
        .map_err(|e| warn!(error = %e, "metrics disabled"))
        .ok();
    let waiter = RpcWaiter::default().start();
    // The Scaler's address before it starts (it needs the supervisor, which
    // needs the election, which needs the dispatcher, which counts reads for
    // the Scaler); reads counted meanwhile wait in its mailbox.
    let scaler_context = Context::<Scaler>::new();
    let reads_here = Arc::new(AtomicU64::new(0));
    // No publisher until the broker session is up: requests get 503 meanwhile.
    let dispatcher = Dispatcher::<AmqpPublisher>::new(None)
        .counting_reads(scaler_context.address().recipient())
        .start();
    let election = Election::new()
        .with_routes(dispatcher.clone().recipient())
        .start();
    let tasks = crate::tasks::Tasks::default();
    let zk = Session::start(
        config.zk_hosts.clone(),
        config.zk_session_timeout,
        tasks.clone(),
    );

    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let runtime: Arc<dyn WorkerRuntime> = match &config.runtime {
        RuntimeOptions::Process {
            worker_bin,
            data_dir,
            log_dir,
        } => {
            let mut env = worker_env(&config);
            env.push(("DBAAS_DATA_DIR".into(), data_dir.display().to_string()));
            Arc::new(ProcessRuntime::new(
                ProcessConfig {
                    worker_bin: worker_bin.clone(),
                    env,
                    log_dir: log_dir.clone(),
                    stop_grace: STOP_GRACE,
                },
                exits_tx,
            ))
        }
        RuntimeOptions::Docker {
            image,
            network,
            instance,
            hosts,
        } => Arc::new(
            DockerRuntime::connect(
                DockerConfig {
                    image: image.clone(),
                    network: network.clone(),
                    instance: instance.clone(),
                    env: worker_env(&config),
                    stop_grace: STOP_GRACE,
                    hosts: hosts.clone(),
                },
                zk.clone(),
                exits_tx,
            )
            .await?,
        ),
    };
    info!(runtime = runtime.name(), "worker runtime ready");
    let zk_for_cleanup = zk.clone();
    let supervisor = ContainerSupervisor::new(runtime, config.initial_slaves)
        .under_leadership(Arc::new(ZkFence(zk.clone())))
        .with_election(election.clone().recipient())
        .with_znode_cleanup(Arc::new(move |pid| {
            let zk = zk_for_cleanup.clone();
            actix::spawn(async move {
                let forgotten = match zk.client() {
                    Ok(client) => coord::forget_dead_worker(&client, pid).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = forgotten {
                    warn!(pid, error = %e, "could not remove a dead worker's znodes");
                }
            });
        }))
        .start();
    let scaler = scaler_context.run(
        Scaler::new(
            config.scale_interval,
            config.reads_per_slave,
            config.slave_bounds,
            supervisor.clone().recipient(),
        )
        .under_leadership(reads_here.clone()),
    );

    // Every orchestrator stands for leadership; only the leader's supervisor
    // and scaler act (they start as followers).
    let me = OrchestratorInfo {
        id: config.id.clone(),
        http: config.advertise.clone(),
        started_at_ms: chrono::Utc::now().timestamp_millis(),
        reads: 0,
    };
    let (standing_tx, standing) = tokio::sync::watch::channel(Standing::Following { leader: None });
    let campaign = Campaign {
        session: zk.clone(),
        me: me.clone(),
        reads: reads_here.clone(),
        standing: Arc::new(standing_tx),
        actors: vec![supervisor.clone().recipient(), scaler.clone().recipient()],
    };
    info!(id = %me.id, advertise = %me.http, "standing for leadership among the orchestrators");
    let campaigning = tokio::spawn(crate::tasks::keep(
        tasks.clone(),
        "leadership",
        move |round| leadership::campaign(campaign.clone(), round),
    ));

    // The long-lived tasks, each meant to run as long as the process: owned
    // here, crash-only, so one that ends anyway (a panic) is reported and
    // stops the orchestrator rather than leaving it half alive.
    let mut background = crate::tasks::CrashOnly::new(tasks.clone());
    let sup = supervisor.clone();
    background.spawn_local("worker exit forwarder", async move {
        while let Some(pid) = exits.recv().await {
            sup.do_send(WorkerExited(pid));
        }
    });
    background.spawn_local(
        "membership watch",
        election::watch(
            zk.clone(),
            vec![election.clone().recipient(), supervisor.clone().recipient()],
            Duration::from_millis(500),
        ),
    );
    background.spawn_local(
        "read count",
        leadership::share_reads(
            zk.clone(),
            me.clone(),
            reads_here,
            standing.clone(),
            scaler.clone().recipient(),
            Duration::from_secs(1),
        ),
    );
    let (dead_tx, dead_writes) = tokio::sync::watch::channel(None);
    background.spawn_local(
        "broker session",
        broker_session(
            tasks.clone(),
            config.amqp_url.clone(),
            dispatcher.clone(),
            waiter.clone(),
            dead_tx,
        ),
    );

    let rpc = web::Data::new(Rpc::new(
        dispatcher.clone().recipient(),
        waiter,
        config.request_timeout,
    ));
    let state = web::Data::new(AppState {
        broker_probe: dispatcher.recipient(),
        zk: zk.clone(),
        me: me.clone(),
        standing: standing.clone(),
        forwarder: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()?,
        election,
        supervisor: supervisor.clone(),
        scaler,
        metrics,
        dead_writes,
        tasks,
    });
    let limits = config.http;
    let auth = web::Data::new(config.auth.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(rpc.clone())
            .app_data(limits)
            .app_data(auth.clone())
            // Inner: authentication; outer: request ids and metrics (401s counted too).
            .wrap(actix_web::middleware::from_fn(http::auth::require))
            .wrap(actix_web::middleware::from_fn(http::observe::observe))
            .configure(http::routes)
    })
    .workers(limits.workers())
    .max_connections(limits.connections_per_worker())
    .client_request_timeout(limits.client_timeout)
    .client_disconnect_timeout(limits.disconnect_timeout())
    .disable_signals()
    .shutdown_timeout(10)
    .bind(&config.bind)?
    .run();
    let handle = server.handle();
    info!(bind = %config.bind, "orchestrator serving HTTP");
    let (served_tx, served) = tokio::sync::oneshot::channel();
    background.spawn_local("http server", async move {
        if let Err(e) = server.await {
            error!(error = %e, "the HTTP server failed");
        }
        let _ = served_tx.send(());
    });

    let ended = tokio::select! {
        _ = crate::shutdown::signal() => None,
        why = background.ended() => Some(why),
    };
    if let Some(why) = ended {
        // Crash-only: the workers keep running and the restarted
        // orchestrator adopts them (its supervisor: compose's restart policy,
        // or whoever started it).
        error!(reason = %why, "stopping: a task of the orchestrator ended");
        handle.stop(false).await;
        return Err(anyhow::anyhow!("{why}"));
    }
    info!("shutting down: HTTP first, then workers");
    handle.stop(true).await;
    let _ = served.await;
    if config.stop_workers_on_exit {
        match others_running(&zk, &me.id).await {
            // The last orchestrator stops the workers; if the leader stopped
            // just before, this one leads in a moment (its campaign runs on).
            Some(0) => {
                let mut standing = standing.clone();
                let lead = async { standing.wait_for(|s| s.leading().is_some()).await.is_ok() };
                let led = tokio::time::timeout(Duration::from_secs(10), lead).await;
                if led == Ok(true) {
                    let _ = supervisor.send(StopAll).await;
                } else {
                    warn!("the last orchestrator could not lead: leaving the workers running");
                }
            }
            Some(n) => info!(
                others = n,
                "other orchestrators run: leaving the workers to them"
            ),
            None => {
                warn!("cannot tell whether other orchestrators run: leaving the workers running")
            }
        }
    }
    // The next leader need not wait for this session to expire.
    campaigning.abort();
    if let Ok(client) = zk.client() {
        if let Err(e) = leadership::step_down(&client, &me.id).await {
            warn!(error = %e, "leaving the leadership election failed");
        }
    }
    Ok(())
}

/// This machine's host name (`localhost` if it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An orchestrator's default name: its host and HTTP port. Two cannot share
/// both, and a restarted one keeps its name, so it takes over its
/// predecessor's record at once instead of leaving it to the session timeout
/// (a stale record would make the last orchestrator to stop think another
/// still runs, and leave the workers to it).
pub fn default_id(host: &str, bind: &str) -> String {
    match bind.rsplit_once(':') {
        Some((_, port)) => format!("{host}-{port}"),
        None => host.to_string(),
    }
}

/// The URL the other orchestrators use for a server bound to `bind`: the
/// bind address itself, or `host` in place of an unspecified address.
pub fn advertised(bind: &str, host: &str) -> String {
    let addr = match bind.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::", port)) => format!("{host}:{port}"),
        _ => bind.to_string(),
    };
    format!("http://{addr}")
}

/// How many other orchestrators are registered (None: ZooKeeper cannot tell).
async fn others_running(zk: &Session, me: &str) -> Option<usize> {
    let client = zk.client().ok()?;
    let all = tokio::time::timeout(Duration::from_secs(5), leadership::orchestrators(&client))
        .await
        .ok()?
        .ok()?;
    Some(all.iter().filter(|o| o.id != me).count())
}

/// Keeps the orchestrator's RabbitMQ session: on each connection, the
/// Dispatcher's publishing channels and the consumer of its reply queue feeding the
/// `RpcWaiter`. When the connection breaks, publishing stops at once (503) and
/// every request waiting for a reply is told (its reply cannot come), then it
/// reconnects with backoff. It also watches how many writes wait in
/// `writeQ.dead` (`dead`: None while unknown).
async fn broker_session(
    tasks: crate::tasks::Tasks,
    url: String,
    dispatcher: Addr<Dispatcher<AmqpPublisher>>,
    waiter: Addr<RpcWaiter>,
    dead: tokio::sync::watch::Sender<Option<u32>>,
) {
    let dead = Arc::new(dead);
    broker::link::maintain(
        tasks,
        "rabbitmq",
        url,
        "orchestrator".into(),
        move |conn, round| {
            let dispatcher = dispatcher.clone();
            let waiter = waiter.clone();
            let dead = dead.clone();
            async move {
                let why = match serve_broker(&conn, &dispatcher, &waiter, &dead, &round).await {
                    Ok(why) => why,
                    Err(e) => format!("setting up the session failed: {e}"),
                };
                dispatcher.do_send(SetPublisher(None));
                dead.send_replace(None);
                waiter.do_send(Abandon {
                    reason: "the connection to RabbitMQ was lost".into(),
                });
                let _ = conn.close(200, "session over".into()).await;
                why
            }
        },
    )
    .await
}

/// One broker session; returns why it ended.
async fn serve_broker(
    conn: &lapin::Connection,
    dispatcher: &Addr<Dispatcher<AmqpPublisher>>,
    waiter: &Addr<RpcWaiter>,
    dead: &tokio::sync::watch::Sender<Option<u32>>,
    round: &crate::tasks::Round,
) -> anyhow::Result<String> {
    let refused = Arc::new(tokio::sync::Notify::new());
    // Replies are consumed before anything is published, on this session's
    // own exclusive queue (no other orchestrator can consume it).
    let replies = replies::consume(conn).await?;
    let publisher = AmqpPublisher {
        reads: conn.create_channel().await?,
        writes: broker::confirmed_channel(conn).await?,
        reply_to: replies.queue().to_string(),
        refused: refused.clone(),
    };
    dispatcher.send(SetPublisher(Some(publisher))).await?;
    info!(
        replies = replies.queue(),
        "RabbitMQ session up: publishing and consuming replies"
    );
    round.up("publishing; consuming replies");
    let counting = conn.create_channel().await?;
    Ok(tokio::select! {
        why = replies.feed(waiter) => why,
        why = broker::link::broken(conn) => why,
        why = broker::link::cut_off(conn) => why,
        _ = refused.notified() => "the broker kept refusing writes on this channel: starting again on new channels".to_string(),
        why = count_dead_writes(&counting, dead) => why,
    })
}

/// How often the depth of `writeQ.dead` is read.
const DEAD_WRITES_EVERY: Duration = Duration::from_secs(1);

/// Reads the depth of `writeQ.dead` every [`DEAD_WRITES_EVERY`] into `dead`
/// and the `dbaas_dead_writes` gauge; returns why it could not.
async fn count_dead_writes(
    channel: &lapin::Channel,
    dead: &tokio::sync::watch::Sender<Option<u32>>,
) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), broker::dead::depth(channel)).await {
            Ok(Ok(n)) => {
                crate::prometheus::dead_writes(n);
                dead.send_replace(Some(n));
            }
            Ok(Err(e)) => return format!("counting writeQ.dead failed: {e}"),
            Err(_) => return "counting writeQ.dead timed out".into(),
        }
        tokio::time::sleep(DEAD_WRITES_EVERY).await;
    }
}

pub fn worker_env(config: &Config) -> Vec<(String, String)> {
    let mut env = vec![
        ("DBAAS_AMQP_URL".to_string(), config.amqp_url.clone()),
        ("DBAAS_ZK_HOSTS".to_string(), config.zk_hosts.clone()),
        (
            "DBAAS_ZK_SESSION_TIMEOUT_MS".to_string(),
            config.zk_session_timeout.as_millis().to_string(),
        ),
        ("DBAAS_REPLICAS".to_string(), broker::replicas().to_string()),
    ];
    if let Some(auth) = coord::auth() {
        env.push(("DBAAS_ZK_AUTH".to_string(), auth.expose().to_string()));
    }
    // The workers sign and check snapshots with the orchestrator's secret.
    if let Some(secret) = crate::worker::snapshot::secret() {
        env.push((
            crate::worker::snapshot::SECRET_ENV.to_string(),
            secret.expose().to_string(),
        ));
    }
    for passthrough in [
        "RUST_LOG",
        "DBAAS_LOG_FORMAT",
        "DBAAS_MAX_REPLY_BYTES",
        "DBAAS_SYNC_MAX_BYTES",
        "DBAAS_SYNC_SEGMENT_BYTES",
        "DBAAS_SYNC_MAX_AGE",
        broker::dead::DELIVERY_LIMIT_ENV,
    ] {
        if let Ok(v) = std::env::var(passthrough) {
            env.push((passthrough.to_string(), v));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orchestrator_is_named_by_host_and_port_and_advertised_where_others_reach_it() {
        assert_eq!(default_id("vm", "127.0.0.1:8000"), "vm-8000");
        assert_eq!(default_id("vm", "[::1]:80"), "vm-80");
        assert_eq!(advertised("0.0.0.0:80", "orch-1"), "http://orch-1:80");
        assert_eq!(advertised("10.77.0.2:8100", "h2"), "http://10.77.0.2:8100");
    }
}
