//! The checker of the Jepsen-style test: a history of operations on
//! independent keys, each key a register with compare-and-set, decided key by
//! key by stateright's `LinearizabilityTester` (linearizability is local, so a
//! history is linearizable exactly when the history of every key is).
//!
//! What goes in, Jepsen's way:
//! - `ok` operations with their invoke and return times;
//! - writes and compare-and-sets of `unknown` outcome (timeout, 5xx, lost
//!   connection) as returning at the end of time with an answer that fits any
//!   outcome: the search may apply them at any point after their invocation,
//!   and applying one last is the same as never applying it (Knossos does the
//!   same with `:info` operations). The client's process id is never used
//!   again (it continues as a fresh process);
//! - nothing of `fail`ed operations (definitely not applied) nor of reads that
//!   did not answer (a read changes nothing).
//!
//! A failed compare-and-set (`rows_affected` 0) is a result like any other: it
//! says the register held another value at some point of the call.
//!
//! **Memoization.** stateright's tester is a plain depth-first search for a
//! linearization, without a cache: k concurrent reads of one value alone cost
//! k! orders when the history is not linearizable. The specification below
//! therefore also remembers every configuration of the search it has entered,
//! the set of operations linearized so far plus the register's value (the
//! cache of Wing & Gong / Lowe's algorithm, which porcupine uses too), and
//! refuses a step into a configuration entered before. That is sound and
//! complete: the search's state is exactly that configuration, so a second
//! visit has the same subtree as the first; the first visit cannot be an
//! ancestor (the set only grows along a path); and the search stops at its
//! first success, so a subtree it left had none.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// Every value the test writes is unique (the initial value of every key is 0).
pub type Value = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Op {
    /// A strong read of the key.
    Read,
    /// A blind write: `update ... where username = key`.
    Write { value: Value },
    /// `update ... where username = key and password = from`.
    Cas { from: Value, to: Value },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ret {
    /// The value read, or `None` when the key's row was missing.
    Read(Option<Value>),
    WriteOk,
    CasApplied,
    CasFailed,
    /// An answer the register can never give (a blind write that matched no
    /// row, an unparsable value, two rows): never linearizable.
    Impossible(String),
    /// No answer (only in the checker): fits whatever the operation did.
    Unknown,
}

/// An operation as the checker feeds it: its index among the key's operations
/// (for the memo) and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    pub id: usize,
    pub op: Op,
}

/// The sequential specification, a register with compare-and-set, plus the
/// search's memo (see the module documentation).
#[derive(Clone, Debug)]
pub struct CasRegister {
    value: Option<Value>,
    /// Bit i: the key's operation i is linearized.
    linearized: Vec<u64>,
    entered: Rc<RefCell<HashSet<Configuration>>>,
}

/// A configuration of the search: the operations linearized, the value.
type Configuration = (Vec<u64>, Option<Value>);

impl CasRegister {
    /// A register holding `value`, with a memo for one search.
    pub fn new(value: Option<Value>) -> CasRegister {
        CasRegister {
            value,
            linearized: Vec::new(),
            entered: Rc::default(),
        }
    }

    fn apply(&mut self, call: &Call) -> Ret {
        let (word, bit) = (call.id / 64, call.id % 64);
        if self.linearized.len() <= word {
            self.linearized.resize(word + 1, 0);
        }
        self.linearized[word] |= 1 << bit;
        match call.op {
            Op::Read => Ret::Read(self.value),
            Op::Write { value } => {
                self.value = Some(value);
                Ret::WriteOk
            }
            Op::Cas { from, to } if self.value == Some(from) => {
                self.value = Some(to);
                Ret::CasApplied
            }
            Op::Cas { .. } => Ret::CasFailed,
        }
    }
}

impl SequentialSpec for CasRegister {
    type Op = Call;
    type Ret = Ret;

    fn invoke(&mut self, call: &Call) -> Ret {
        self.apply(call)
    }

    fn is_valid_step(&mut self, call: &Call, ret: &Ret) -> bool {
        let got = self.apply(call);
        let fits = match ret {
            Ret::Unknown => true,
            ret => *ret == got,
        };
        fits && self
            .entered
            .borrow_mut()
            .insert((self.linearized.clone(), self.value))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered: `ret` is the answer.
    Ok,
    /// Definitely not applied (a 4xx).
    Fail,
    /// May have been applied, now or at any later time.
    Unknown,
}

/// One operation of the history (one JSON line of the history file).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// The logical process: a client gets a fresh one after an unknown outcome.
    pub process: u32,
    pub client: u32,
    pub key: u32,
    pub op: Op,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// Nanoseconds since the start of the test (one monotonic clock for all
    /// clients), taken just before the request was sent and just after its
    /// answer arrived (or the client gave up).
    pub invoke_ns: u64,
    pub return_ns: u64,
    /// HTTP status, when there was an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The worker that served a read; the `seq` of a write or a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    /// Whether the checker sees this operation at all, and whether its return.
    fn checked(&self) -> Option<bool> {
        match (self.outcome, self.op) {
            (Outcome::Ok, _) => Some(true),
            (Outcome::Unknown, Op::Write { .. } | Op::Cas { .. }) => Some(false),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        let what = match self.op {
            Op::Read => "read".to_string(),
            Op::Write { value } => format!("write {value}"),
            Op::Cas { from, to } => format!("cas {from}->{to}"),
        };
        let outcome = match (&self.outcome, &self.ret) {
            (Outcome::Ok, Some(Ret::Read(Some(v)))) => format!("ok, read {v}"),
            (Outcome::Ok, Some(Ret::Read(None))) => "ok, read no row".to_string(),
            (Outcome::Ok, Some(r)) => format!("ok, {r:?}"),
            (o, _) => format!("{o:?}").to_lowercase(),
        };
        let mut s = format!(
            "process {} (client {}) {what} on key {} [{} -> {}] {outcome}",
            self.process,
            self.client,
            self.key,
            secs(self.invoke_ns),
            secs(self.return_ns)
        );
        if let Some(w) = self.worker {
            s.push_str(&format!(", served by worker {w}"));
        }
        if let Some(q) = self.seq {
            s.push_str(&format!(", seq {q}"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(", error: {e}"));
        }
        s
    }
}

fn secs(ns: u64) -> String {
    format!("{}.{:06}s", ns / 1_000_000_000, ns % 1_000_000_000 / 1000)
}

/// The checker's decision on a whole history.
#[derive(Debug, Default)]
pub struct Verdict {
    pub keys: usize,
    /// Operations the checker saw (answered ones, and writes of unknown outcome).
    pub ops_checked: usize,
    /// Per non-linearizable key: the key and the explanation.
    pub violations: Vec<(u32, String)>,
    pub elapsed: Duration,
}

impl Verdict {
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks every key of `history` as a register that starts at `initial`.
pub fn check(history: &[Entry], initial: Value) -> Verdict {
    let started = Instant::now();
    let mut by_key: BTreeMap<u32, Vec<&Entry>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.key).or_default().push(e);
    }
    let mut verdict = Verdict {
        keys: by_key.len(),
        ..Verdict::default()
    };
    for (key, entries) in by_key {
        let events = events(&entries);
        verdict.ops_checked += events.len() / 2;
        match replay(&entries, &events, events.len(), initial) {
            Ok(true) => {}
            Ok(false) => verdict
                .violations
                .push((key, explain(key, &entries, &events, initial))),
            Err(e) => verdict
                .violations
                .push((key, format!("key {key}: the history is malformed: {e}"))),
        }
    }
    verdict.elapsed = started.elapsed();
    verdict
}

/// (time, is a return, index into the key's entries), in time order; at equal
/// times invocations first, which makes the two calls concurrent (the
/// permissive reading). Operations of unknown outcome return at the end.
type Event = (u64, bool, usize);

fn events(entries: &[&Entry]) -> Vec<Event> {
    let mut events = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(answered) = e.checked() {
            events.push((e.invoke_ns, false, i));
            let returned = if answered {
                e.return_ns.max(e.invoke_ns)
            } else {
                u64::MAX
            };
            events.push((returned, true, i));
        }
    }
    events.sort_unstable();
    // At the same nanosecond: invocations before returns (concurrent, the
    // permissive reading), except that a process's next call comes after the
    // return of its previous one.
    let process = |&(_, _, id): &Event| entries[id].process;
    let mut ordered = Vec::with_capacity(events.len());
    let mut open = std::collections::HashSet::new();
    for group in events.chunk_by(|a, b| a.0 == b.0) {
        let mut group = group.to_vec();
        while !group.is_empty() {
            let free_invoke = group
                .iter()
                .position(|e| !e.1 && !open.contains(&process(e)));
            let unblocking_return = || {
                group
                    .iter()
                    .position(|e| e.1 && group.iter().any(|o| !o.1 && process(o) == process(e)))
            };
            let any_return = || group.iter().position(|e| e.1);
            let pick = free_invoke
                .or_else(unblocking_return)
                .or_else(any_return)
                .unwrap_or(0);
            let e = group.remove(pick);
            if e.1 {
                open.remove(&process(&e));
            } else {
                open.insert(process(&e));
            }
            ordered.push(e);
        }
    }
    ordered
}

/// Feeds the first `n` events to a fresh tester: is that prefix linearizable?
/// Operations still open at the cut return last with an unknown answer: they
/// may have taken effect at any point after their invocation, or not at all.
fn replay(entries: &[&Entry], events: &[Event], n: usize, initial: Value) -> Result<bool, String> {
    let mut tester = LinearizabilityTester::new(CasRegister::new(Some(initial)));
    let mut open = BTreeMap::new();
    for &(_, is_return, id) in &events[..n] {
        let e = entries[id];
        if is_return {
            open.remove(&id);
            let ret = match e.outcome {
                Outcome::Ok => e.ret.clone().ok_or("an ok operation without its answer")?,
                _ => Ret::Unknown,
            };
            tester.on_return(e.process, ret)?;
        } else {
            open.insert(id, e.process);
            tester.on_invoke(e.process, Call { id, op: e.op })?;
        }
    }
    for process in open.into_values() {
        tester.on_return(process, Ret::Unknown)?;
    }
    // One search per tester: the memo belongs to it.
    Ok(tester.is_consistent())
}

/// Linearizability is prefix-closed, so the shortest non-linearizable prefix
/// ends with the return that made the history impossible: that operation, with
/// the operations on the key that finished before it began and those
/// concurrent with it, is the explanation.
fn explain(key: u32, entries: &[&Entry], events: &[Event], initial: Value) -> String {
    let (mut good, mut bad) = (0, events.len());
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match replay(entries, events, mid, initial) {
            Ok(true) => good = mid,
            _ => bad = mid,
        }
    }
    let culprit = entries[events[bad - 1].2];
    let mut out = format!(
        "key {key} is not linearizable (stateright's LinearizabilityTester found no \
         linearization) from the moment this operation returned:\n  {}\n",
        culprit.describe()
    );
    let mut before: Vec<&&Entry> = entries
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && e.return_ns < culprit.invoke_ns)
        .collect();
    before.sort_by_key(|e| e.return_ns);
    out.push_str("the latest operations on the key acknowledged before it was invoked:\n");
    for e in before.iter().rev().take(5).rev() {
        out.push_str(&format!("  {}\n", e.describe()));
    }
    out.push_str("the operations on the key concurrent with it:\n");
    for e in entries.iter().filter(|e| {
        !std::ptr::eq(**e, culprit)
            && e.checked().is_some()
            && e.invoke_ns <= culprit.return_ns
            && (e.return_ns >= culprit.invoke_ns || e.outcome == Outcome::Unknown)
    }) {
        out.push_str(&format!("  {}\n", e.describe()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u32, op: Op, span: (u64, u64), outcome: Outcome, ret: Option<Ret>) -> Entry {
        Entry {
            process,
            client: process,
            key: 7,
            op,
            outcome,
            ret,
            invoke_ns: span.0,
            return_ns: span.1,
            status: None,
            worker: None,
            seq: None,
            error: None,
        }
    }

    fn ok(process: u32, o: Op, span: (u64, u64), ret: Ret) -> Entry {
        op(process, o, span, Outcome::Ok, Some(ret))
    }

    fn write(v: Value) -> Op {
        Op::Write { value: v }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_rejected() {
        let history = vec![
            ok(0, write(1), (0, 10), Ret::WriteOk),
            ok(1, Op::Read, (5, 15), Ret::Read(Some(1))),
            // Begins after the write of 1 was acknowledged, yet reads 0.
            ok(2, Op::Read, (20, 30), Ret::Read(Some(0))),
        ];
        let v = check(&history, 0);
        assert!(!v.linearizable(), "{v:?}");
        assert_eq!(v.violations.len(), 1);
        let why = &v.violations[0].1;
        assert!(why.contains("process 2"), "names the stale read: {why}");
        assert!(why.contains("write 1"), "names the write it missed: {why}");
    }

    #[test]
    fn a_linearizable_history_is_accepted() {
        let history = vec![
            // A read concurrent with a write may see either value.
            ok(0, write(1), (0, 10), Ret::WriteOk),
            ok(1, Op::Read, (2, 4), Ret::Read(Some(1))),
            ok(2, Op::Read, (3, 12), Ret::Read(Some(0))),
            // Compare-and-set, applied and refused.
            ok(0, Op::Cas { from: 1, to: 2 }, (20, 30), Ret::CasApplied),
            ok(1, Op::Cas { from: 1, to: 3 }, (31, 40), Ret::CasFailed),
            ok(2, Op::Read, (41, 50), Ret::Read(Some(2))),
            // A write of unknown outcome, applied later, after a read that
            // did not see it yet.
            op(0, write(4), (60, 70), Outcome::Unknown, None),
            ok(1, Op::Read, (80, 90), Ret::Read(Some(2))),
            ok(2, Op::Read, (100, 110), Ret::Read(Some(4))),
            // A failed write and an unanswered read are left out.
            op(3, write(5), (120, 130), Outcome::Fail, None),
            op(4, Op::Read, (120, 130), Outcome::Unknown, None),
            ok(1, Op::Read, (140, 150), Ret::Read(Some(4))),
        ];
        let v = check(&history, 0);
        assert!(v.linearizable(), "{:?}", v.violations);
        assert_eq!(v.ops_checked, 10);
    }

    #[test]
    fn impossible_answers_are_rejected() {
        // Read a value before anyone wrote it.
        let early = vec![
            ok(0, Op::Read, (0, 10), Ret::Read(Some(1))),
            op(1, write(1), (20, 30), Outcome::Unknown, None),
        ];
        assert!(!check(&early, 0).linearizable());
        // A compare-and-set that failed although nothing else ran.
        let cas = vec![ok(0, Op::Cas { from: 0, to: 1 }, (0, 10), Ret::CasFailed)];
        assert!(!check(&cas, 0).linearizable());
        // A value the register cannot hold.
        let odd = vec![ok(0, write(1), (0, 10), Ret::Impossible("rows 0".into()))];
        assert!(!check(&odd, 0).linearizable());
        // An unknown write does not apply twice: 1, 2, then 1 again is stale.
        let twice = vec![
            op(0, write(1), (0, 10), Outcome::Unknown, None),
            ok(1, Op::Read, (20, 30), Ret::Read(Some(1))),
            ok(2, write(2), (40, 50), Ret::WriteOk),
            ok(1, Op::Read, (60, 70), Ret::Read(Some(1))),
        ];
        assert!(!check(&twice, 0).linearizable());
    }

    #[test]
    fn many_concurrent_reads_are_decided_quickly() {
        // 10 concurrent reads of the new value and one stale read among them
        // that began after the write was acknowledged: without the memo the
        // search would try 10! (3.6 million) orders before giving up.
        let mut history = vec![
            ok(0, write(1), (0, 10), Ret::WriteOk),
            op(1, write(2), (5, 6), Outcome::Unknown, None),
            op(2, write(3), (5, 6), Outcome::Unknown, None),
        ];
        for p in 3..13 {
            let t = u64::from(p);
            history.push(ok(p, Op::Read, (20 + t, 100 + t), Ret::Read(Some(1))));
        }
        history.push(ok(13, Op::Read, (30, 90), Ret::Read(Some(0))));
        let started = Instant::now();
        let v = check(&history, 0);
        assert!(!v.linearizable());
        history.pop();
        assert!(check(&history, 0).linearizable());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    /// Every linearization of `ops` (all answered ones, any subset of the
    /// unknown ones) by brute force: the reference the memo is checked against.
    fn brute_force(ops: &[Entry], placed: &mut Vec<usize>, initial: Value) -> bool {
        let done = |placed: &Vec<usize>| {
            ops.iter()
                .enumerate()
                .all(|(i, e)| e.outcome != Outcome::Ok || placed.contains(&i))
        };
        if done(placed) {
            // Replay the order on a plain register.
            let mut value = Some(initial);
            return placed.iter().all(|&i| {
                let got = match ops[i].op {
                    Op::Read => Ret::Read(value),
                    Op::Write { value: v } => {
                        value = Some(v);
                        Ret::WriteOk
                    }
                    Op::Cas { from, to } if value == Some(from) => {
                        value = Some(to);
                        Ret::CasApplied
                    }
                    Op::Cas { .. } => Ret::CasFailed,
                };
                ops[i].outcome != Outcome::Ok || ops[i].ret.as_ref() == Some(&got)
            });
        }
        for (i, e) in ops.iter().enumerate() {
            let ready = !placed.contains(&i)
                && ops.iter().enumerate().all(|(j, a)| {
                    let before = a.return_ns < e.invoke_ns || (a.process == e.process && j < i);
                    a.outcome != Outcome::Ok || !before || placed.contains(&j)
                });
            if ready {
                placed.push(i);
                if brute_force(ops, placed, initial) {
                    return true;
                }
                placed.pop();
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..1500 {
            let mut history = Vec::new();
            for process in 0..3 {
                let mut t = next(5);
                for _ in 0..next(3) + 1 {
                    let v = next(3);
                    let o = match next(3) {
                        0 => Op::Read,
                        1 => write(v),
                        _ => Op::Cas {
                            from: next(3),
                            to: v,
                        },
                    };
                    let ret = match (o, next(2)) {
                        (Op::Read, _) => Ret::Read(Some(next(3))),
                        (Op::Write { .. }, _) => Ret::WriteOk,
                        (Op::Cas { .. }, 0) => Ret::CasApplied,
                        (Op::Cas { .. }, _) => Ret::CasFailed,
                    };
                    // Clients' times never tie (3t + client), but one
                    // client may call again at the very time it returned.
                    let at = |t: u64| 3 * t + u64::from(process);
                    let (start, end) = (at(t), at(t + 1 + next(8)));
                    t = (end - u64::from(process)) / 3 + next(3);
                    if next(6) == 0 && o != Op::Read {
                        history.push(op(process, o, (start, end), Outcome::Unknown, None));
                        break;
                    }
                    history.push(ok(process, o, (start, end), ret));
                }
            }
            let expected = brute_force(&history, &mut Vec::new(), 0);
            let v = check(&history, 0);
            assert_eq!(
                v.linearizable(),
                expected,
                "{history:#?}\n{:?}",
                v.violations
            );
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        assert!(linearizable > 100 && not > 100, "{linearizable} {not}");
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = ok(1, Op::Read, (20, 30), Ret::Read(Some(0)));
        other.key = 8;
        let history = vec![ok(0, write(1), (0, 10), Ret::WriteOk), other];
        assert!(check(&history, 0).linearizable());
    }
}
