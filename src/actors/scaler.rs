//! `Scaler`: counts `db/read` requests and, every interval (2 minutes by
//! default) from the first one, asks the supervisor for
//! `max(1, ceil(reads / reads_per_slave))` slaves, kept within
//! [`SlaveBounds`], and resets the count.
//! Only valid, servable reads are counted: the `Dispatcher`
//! (`super::dispatcher`) sends [`ReadReceived`] for each read it takes, after
//! its servability check (a `min_seq` beyond any sequence number is refused
//! there, uncounted), and HTTP hands the boundary only a `db/read` whose body
//! validated (malformed reads, writes, crash calls and worker listings never
//! get there), so junk cannot scale the cluster.
//!
//! With several orchestrators every Scaler counts its own reads into a shared
//! tally (published in ZooKeeper by `coord::leadership::share_reads`), and only
//! the leader's decides: it adds what the others counted
//! ([`ReadsElsewhere`]), so the rule holds for the sum. A follower's Scaler
//! keeps no interval; a new leader's starts one at the next read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use tracing::info;

use super::supervisor::SetSlaves;
use crate::coord::leadership::{ReadsElsewhere, Standing};

/// One `db/read` request arrived.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ReadReceived;

/// End of an interval: decide and reset. Sent by the actor's own timer (tests
/// send it directly).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Tick;

#[derive(Message)]
#[rtype(result = "ScalerStatus")]
pub struct GetScalerStatus;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub at_ms: i64,
    pub reads: u64,
    pub slaves: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalerStatus {
    pub interval_secs: u64,
    pub reads_per_slave: u64,
    pub min_slaves: usize,
    pub max_slaves: usize,
    /// Whether this Scaler decides (its orchestrator leads).
    pub deciding: bool,
    /// Reads this orchestrator counted since it started.
    pub counted_here: u64,
    /// Reads counted in the current interval (on the leader: by every orchestrator).
    pub reads: u64,
    /// False until the first read starts the timer.
    pub timer_started: bool,
    pub next_tick_in_ms: Option<u64>,
    pub decisions: Vec<Decision>,
}

/// The spec's rule: 0–20 reads → 1 slave, 21–40 → 2, and so on.
pub fn slaves_for(reads: u64, reads_per_slave: u64) -> usize {
    let per = reads_per_slave.max(1);
    usize::try_from(reads.div_ceil(per).max(1)).unwrap_or(usize::MAX)
}

/// The fewest and the most slaves the scaler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveBounds {
    pub min: usize,
    pub max: usize,
}

impl SlaveBounds {
    /// Checked bounds: `1 <= min <= max`.
    pub fn new(min: usize, max: usize) -> Result<SlaveBounds, String> {
        if min == 0 {
            return Err("the minimum number of slaves is at least 1".into());
        }
        if min > max {
            return Err(format!(
                "the minimum number of slaves ({min}) is above the maximum ({max})"
            ));
        }
        Ok(SlaveBounds { min, max })
    }

    pub fn clamp(self, slaves: usize) -> usize {
        slaves.clamp(self.min, self.max)
    }
}

impl Default for SlaveBounds {
    /// 1 to 8: each slave is a process with its own copy of the data, and on
    /// the 2-core, 24 GiB machine this runs on more than 8 add memory and
    /// sync work rather than read throughput.
    fn default() -> Self {
        SlaveBounds { min: 1, max: 8 }
    }
}

pub struct Scaler {
    interval: Duration,
    reads_per_slave: u64,
    bounds: SlaveBounds,
    reads: u64,
    next_tick: Option<std::time::Instant>,
    decisions: VecDeque<Decision>,
    supervisor: Recipient<SetSlaves>,
    /// Every read this orchestrator counted, never reset (what the others see).
    tally: Arc<AtomicU64>,
    /// Whether it decides (its orchestrator leads).
    leading: bool,
    timer: Option<SpawnHandle>,
}

impl Scaler {
    pub fn new(
        interval: Duration,
        reads_per_slave: u64,
        bounds: SlaveBounds,
        supervisor: Recipient<SetSlaves>,
    ) -> Self {
        Scaler {
            interval,
            reads_per_slave,
            bounds,
            reads: 0,
            next_tick: None,
            decisions: VecDeque::new(),
            supervisor,
            tally: Arc::default(),
            leading: true,
            timer: None,
        }
    }

    /// A Scaler that decides only while its orchestrator leads (told by
    /// [`Standing`]), counting every read into `tally` meanwhile.
    pub fn under_leadership(mut self, tally: Arc<AtomicU64>) -> Self {
        self.tally = tally;
        self.leading = false;
        self
    }

    /// Adds `n` reads to the interval, starting it at the first.
    fn count(&mut self, n: u64, ctx: &mut Context<Self>) {
        if !self.leading || n == 0 {
            return;
        }
        self.reads = self.reads.saturating_add(n);
        if self.next_tick.is_none() {
            info!(interval = ?self.interval, "first read: scaling timer started");
            self.next_tick = Some(std::time::Instant::now() + self.interval);
            self.timer = Some(ctx.run_interval(self.interval, |act, ctx| {
                act.next_tick = Some(std::time::Instant::now() + act.interval);
                ctx.notify(Tick);
            }));
        }
    }

    /// Back to no interval and no count.
    fn stop_interval(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.next_tick = None;
        self.reads = 0;
    }
}

impl Actor for Scaler {
    type Context = Context<Self>;
}

impl Handler<ReadReceived> for Scaler {
    type Result = ();
    fn handle(&mut self, _: ReadReceived, ctx: &mut Context<Self>) {
        self.tally.fetch_add(1, Ordering::Relaxed);
        self.count(1, ctx);
    }
}

impl Handler<ReadsElsewhere> for Scaler {
    type Result = ();
    fn handle(&mut self, ReadsElsewhere(n): ReadsElsewhere, ctx: &mut Context<Self>) {
        self.count(n, ctx);
    }
}

impl Handler<Standing> for Scaler {
    type Result = ();
    fn handle(&mut self, standing: Standing, ctx: &mut Context<Self>) {
        let leading = standing.leading().is_some();
        if leading != self.leading {
            self.leading = leading;
            self.stop_interval(ctx);
        }
    }
}

impl Handler<Tick> for Scaler {
    type Result = ();
    fn handle(&mut self, _: Tick, _: &mut Context<Self>) {
        if !self.leading {
            return;
        }
        let wanted = slaves_for(self.reads, self.reads_per_slave);
        let slaves = self.bounds.clamp(wanted);
        info!(reads = self.reads, wanted, slaves, "scaling decision");
        self.decisions.push_back(Decision {
            at_ms: chrono::Utc::now().timestamp_millis(),
            reads: self.reads,
            slaves,
        });
        while self.decisions.len() > 50 {
            self.decisions.pop_front();
        }
        crate::prometheus::scaler_decision(self.reads, slaves);
        self.reads = 0;
        self.supervisor.do_send(SetSlaves(slaves));
    }
}

impl Handler<GetScalerStatus> for Scaler {
    type Result = MessageResult<GetScalerStatus>;
    fn handle(&mut self, _: GetScalerStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ScalerStatus {
            interval_secs: self.interval.as_secs(),
            reads_per_slave: self.reads_per_slave,
            min_slaves: self.bounds.min,
            max_slaves: self.bounds.max,
            deciding: self.leading,
            counted_here: self.tally.load(Ordering::Relaxed),
            reads: self.reads,
            timer_started: self.next_tick.is_some(),
            next_tick_in_ms: self.next_tick.map(|t| {
                t.saturating_duration_since(std::time::Instant::now())
                    .as_millis() as u64
            }),
            decisions: self.decisions.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_spec_boundaries() {
        for (reads, slaves) in [
            (0, 1),
            (1, 1),
            (20, 1),
            (21, 2),
            (40, 2),
            (41, 3),
            (60, 3),
            (61, 4),
            (1000, 50),
        ] {
            assert_eq!(slaves_for(reads, 20), slaves, "{reads} reads");
        }
    }

    /// Records what the scaler asks of the supervisor.
    #[derive(Default)]
    struct Sink(Arc<Mutex<Vec<usize>>>);
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<SetSlaves> for Sink {
        type Result = ();
        fn handle(&mut self, SetSlaves(n): SetSlaves, _: &mut Context<Self>) {
            if let Ok(mut v) = self.0.lock() {
                v.push(n);
            }
        }
    }

    fn scaler(interval: Duration) -> (Addr<Scaler>, Arc<Mutex<Vec<usize>>>) {
        bounded(interval, SlaveBounds::default())
    }

    fn bounded(interval: Duration, bounds: SlaveBounds) -> (Addr<Scaler>, Arc<Mutex<Vec<usize>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(seen.clone()).start();
        (
            Scaler::new(interval, 20, bounds, sink.recipient()).start(),
            seen,
        )
    }

    fn seen(v: &Arc<Mutex<Vec<usize>>>) -> Vec<usize> {
        v.lock().map(|v| v.clone()).unwrap_or_default()
    }

    #[actix_rt::test]
    async fn only_the_leaders_scaler_decides_and_it_decides_on_the_sum() {
        let seen_by_sink = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(seen_by_sink.clone()).start();
        let tally = Arc::new(AtomicU64::new(0));
        let s = Scaler::new(
            Duration::from_secs(3600),
            20,
            SlaveBounds::default(),
            sink.recipient(),
        )
        .under_leadership(tally.clone())
        .start();
        // A follower counts its reads for the leader, and decides nothing.
        for _ in 0..30 {
            s.send(ReadReceived).await.expect("send");
        }
        s.send(ReadsElsewhere(100)).await.expect("send");
        s.send(Tick).await.expect("send");
        let status = s.send(GetScalerStatus).await.expect("send");
        assert_eq!(
            (status.deciding, status.counted_here, status.reads),
            (false, 30, 0)
        );
        assert!(!status.timer_started);
        assert!(seen(&seen_by_sink).is_empty());

        // Leading: its own reads and the others' make one interval.
        s.send(Standing::Leading {
            epoch: 1,
            slaves: None,
        })
        .await
        .expect("send");
        for _ in 0..15 {
            s.send(ReadReceived).await.expect("send");
        }
        s.send(ReadsElsewhere(30)).await.expect("send");
        let status = s.send(GetScalerStatus).await.expect("send");
        assert!(status.deciding && status.timer_started);
        s.send(Tick).await.expect("send");
        assert_eq!(seen(&seen_by_sink), vec![3], "15 + 30 reads → 3 slaves");
        assert_eq!(tally.load(Ordering::Relaxed), 45);

        // Deposed mid-interval: the count and the timer go.
        s.send(ReadReceived).await.expect("send");
        s.send(Standing::Following { leader: None })
            .await
            .expect("send");
        let status = s.send(GetScalerStatus).await.expect("send");
        assert_eq!(
            (status.deciding, status.reads, status.timer_started),
            (false, 0, false)
        );
    }

    #[actix_rt::test]
    async fn decides_from_the_count_and_resets_it() {
        let (s, asked) = scaler(Duration::from_secs(3600));
        for _ in 0..45 {
            s.send(ReadReceived).await.expect("send");
        }
        s.send(Tick).await.expect("send");
        s.send(Tick).await.expect("send");
        let status = s.send(GetScalerStatus).await.expect("send");
        assert_eq!(status.reads, 0);
        assert_eq!(
            seen(&asked),
            vec![3, 1],
            "45 reads → 3 slaves, then an idle interval → 1"
        );
        assert_eq!(
            status.decisions.iter().map(|d| d.reads).collect::<Vec<_>>(),
            vec![45, 0]
        );
    }

    #[actix_rt::test]
    async fn decisions_stay_within_the_bounds() {
        let (s, asked) = bounded(
            Duration::from_secs(3600),
            SlaveBounds::new(2, 5).expect("bounds"),
        );
        // 20 000 reads in one interval would be 1 000 slaves unbounded.
        for _ in 0..20_000 {
            s.do_send(ReadReceived);
        }
        s.send(Tick).await.expect("send");
        s.send(ReadReceived).await.expect("send");
        s.send(Tick).await.expect("send");
        for _ in 0..61 {
            s.send(ReadReceived).await.expect("send");
        }
        s.send(Tick).await.expect("send");
        assert_eq!(seen(&asked), vec![5, 2, 4], "capped, floored, in between");
        let status = s.send(GetScalerStatus).await.expect("send");
        assert_eq!((status.min_slaves, status.max_slaves), (2, 5));
        assert_eq!(
            status.decisions.iter().map(|d| d.reads).collect::<Vec<_>>(),
            vec![20_000, 1, 61]
        );
        assert_eq!(SlaveBounds::default(), SlaveBounds { min: 1, max: 8 });
        assert!(SlaveBounds::new(0, 3).is_err());
        assert!(SlaveBounds::new(4, 3).is_err());
    }

    #[actix_rt::test]
    async fn the_timer_starts_with_the_first_read() {
        let (s, asked) = scaler(Duration::from_millis(50));
        let before = s.send(GetScalerStatus).await.expect("send");
        assert!(!before.timer_started);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(seen(&asked).is_empty(), "no decision before the first read");
        s.send(ReadReceived).await.expect("send");
        assert!(s.send(GetScalerStatus).await.expect("send").timer_started);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen(&asked).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen(&asked).first(), Some(&1));
    }
}
