//! Linearizability checker of the chaos suite: reads the register history the harness recorded
//! (`chaos/harness/workload.py`) and checks it, one key at a time, with stateright's
//! `LinearizabilityTester` over its `Register` model. Partitioning by key is sound for a map of
//! independent registers (linearizability is local) and keeps each search small.
//!
//! Input (the file named by the first argument): JSON lines, one per operation, e.g.
//!   {"process":7,"key":"reg-3","f":"write","value":"c1-17","type":"ok","invoke":12.5,"complete":12.6}
//! `type` is `ok` (acknowledged; a read's `value` is what it returned), `info` (outcome unknown:
//! a timeout or an ambiguous error; the write may or may not have taken effect, at any time after
//! its invocation) or `fail` (certainly not applied, e.g. the connection was refused: left out).
//! A process has at most one operation in flight; after an `info` operation the harness goes on
//! under a new process id, as Jepsen does, so the unknown write stays in flight to the end and the
//! tester may linearize it anywhere after its invocation, or not at all. Reads whose outcome is
//! unknown change nothing and are left out.
//!
//! Output (stdout): one JSON object: keys, operations checked, linearizable keys, the keys that
//! are not (each with its operations, so the report can show the history), and the keys whose
//! search did not finish within `--timeout-s` (reported as unknown, never as linearizable).
//!
//! Usage: lgsp-chaos-checker HISTORY.jsonl [--initial VALUE] [--timeout-s SECONDS]

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Op {
    process: u64,
    key: String,
    f: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    invoke: f64,
    #[serde(default)]
    complete: Option<f64>,
    /// Anything else the harness recorded (node, HTTP status): passed through to the report.
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The history itself is malformed (a harness bug), with the tester's explanation.
    Invalid(String),
}

/// Feeds one key's operations to the tester in real-time order and asks for a linearization.
fn check_key(ops: &[Op], initial: &str) -> Verdict {
    // Events in time order; at equal times invocations first, so that touching operations count
    // as concurrent (the more permissive reading, never a false alarm).
    let mut events: Vec<(f64, u8, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, i));
        if op.kind == "ok" {
            events.push((op.complete.unwrap_or(op.invoke), 1, i));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut t: LinearizabilityTester<u64, Register<String>> = LinearizabilityTester::new(Register(initial.to_owned()));
    for (_, kind, i) in events {
        let op = &ops[i];
        let r = if kind == 0 {
            let call = if op.f == "write" { RegisterOp::Write(op.value.clone().unwrap_or_default()) } else { RegisterOp::Read };
            t.on_invoke(op.process, call).map(|_| ())
        } else {
            let ret = if op.f == "write" { RegisterRet::WriteOk } else { RegisterRet::ReadOk(op.value.clone().unwrap_or_default()) };
            t.on_return(op.process, ret).map(|_| ())
        };
        if let Err(e) = r {
            return Verdict::Invalid(e);
        }
    }
    if t.serialized_history().is_some() {
        Verdict::Linearizable
    } else {
        Verdict::NotLinearizable
    }
}

/// The operations the tester sees: acknowledged ones, and writes of unknown outcome.
fn relevant(op: &Op) -> bool {
    match op.kind.as_str() {
        "ok" => true,
        "info" => op.f == "write",
        _ => false,
    }
}

struct Args {
    history: String,
    initial: String,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut history = None;
    let mut initial = "init".to_owned();
    let mut timeout = Duration::from_secs(20);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--initial" => initial = it.next().ok_or("--initial needs a value")?,
            "--timeout-s" => {
                let v = it.next().ok_or("--timeout-s needs a value")?;
                timeout = Duration::from_secs_f64(v.parse::<f64>().map_err(|e| format!("--timeout-s {v}: {e}"))?);
            }
            _ if history.is_none() && !a.starts_with("--") => history = Some(a),
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    Ok(Args {
        history: history.ok_or("usage: lgsp-chaos-checker HISTORY.jsonl [--initial VALUE] [--timeout-s SECONDS]")?,
        initial,
        timeout,
    })
}

fn load(path: &str) -> Result<BTreeMap<String, Vec<Op>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let op: Op = serde_json::from_str(line).map_err(|e| format!("{path} line {}: {e}", n + 1))?;
        if relevant(&op) {
            by_key.entry(op.key.clone()).or_default().push(op);
        }
    }
    Ok(by_key)
}

/// Stack of each key's checking thread.
const CHECK_STACK: usize = 1024 * 1024 * 1024;

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lgsp-chaos-checker: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let by_key = match load(&args.history) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("lgsp-chaos-checker: {e}");
            return std::process::ExitCode::from(66);
        }
    };
    let total_ops: usize = by_key.values().map(Vec::len).sum();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut queue: VecDeque<(String, Vec<Op>)> = by_key.into_iter().collect();
    let keys = queue.len();
    // Each key runs on its own thread; one whose search outlives the timeout is reported unknown
    // and abandoned (the tester cannot be interrupted; the process exits when the rest is done).
    let (tx, rx) = mpsc::channel::<(String, Verdict)>();
    let mut running: BTreeMap<String, (Instant, Vec<Op>)> = BTreeMap::new();
    let (mut ok, mut bad, mut unknown, mut invalid) = (0usize, Vec::new(), Vec::new(), Vec::new());
    loop {
        while running.len() < workers {
            let Some((key, ops)) = queue.pop_front() else { break };
            let (tx, initial, k, o) = (tx.clone(), args.initial.clone(), key.clone(), ops.clone());
            // The tester's search recurses once per operation of a history: a long one overflowed
            // the default 2 MiB stack (seen in partition-leader). Only the pages used are mapped.
            let spawned = std::thread::Builder::new().stack_size(CHECK_STACK).spawn(move || {
                let v = check_key(&o, &initial);
                let _ = tx.send((k, v));
            });
            if let Err(e) = spawned {
                invalid.push(serde_json::json!({"key": key, "error": format!("cannot start a checking thread: {e}")}));
                continue;
            }
            running.insert(key, (Instant::now(), ops));
        }
        if running.is_empty() {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((key, v)) => {
                if let Some((_, ops)) = running.remove(&key) {
                    match v {
                        Verdict::Linearizable => ok += 1,
                        Verdict::NotLinearizable => bad.push(serde_json::json!({"key": key, "ops": ops})),
                        Verdict::Invalid(e) => invalid.push(serde_json::json!({"key": key, "error": e})),
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let late: Vec<String> = running.iter().filter(|(_, (t, _))| t.elapsed() > args.timeout).map(|(k, _)| k.clone()).collect();
        for k in late {
            if let Some((_, ops)) = running.remove(&k) {
                unknown.push(serde_json::json!({"key": k, "ops": ops.len()}));
            }
        }
    }
    let out = serde_json::json!({
        "checker": "stateright::semantics::LinearizabilityTester (Register model), per key",
        "keys": keys,
        "ops": total_ops,
        "linearizable": ok,
        "not_linearizable": bad,
        "unknown": unknown,
        "invalid": invalid,
    });
    println!("{out}");
    // Abandoned searches may still run: returning from main ends the process without them.
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, f: &str, value: &str, kind: &str, invoke: f64, complete: f64) -> Op {
        Op {
            process,
            key: "k".into(),
            f: f.into(),
            value: Some(value.into()),
            kind: kind.into(),
            invoke,
            complete: if kind == "ok" { Some(complete) } else { None },
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let h = vec![op(1, "write", "a", "ok", 0.0, 2.0), op(2, "read", "init", "ok", 1.0, 1.5), op(3, "read", "a", "ok", 1.2, 1.6)];
        assert_eq!(check_key(&h, "init"), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let h = vec![op(1, "write", "a", "ok", 0.0, 1.0), op(2, "read", "init", "ok", 2.0, 3.0)];
        assert_eq!(check_key(&h, "init"), Verdict::NotLinearizable);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        let late = vec![op(1, "write", "a", "info", 0.0, 0.0), op(2, "read", "init", "ok", 1.0, 2.0), op(3, "read", "a", "ok", 3.0, 4.0)];
        assert_eq!(check_key(&late, "init"), Verdict::Linearizable);
        let never = vec![op(1, "write", "a", "info", 0.0, 0.0), op(2, "read", "init", "ok", 5.0, 6.0)];
        assert_eq!(check_key(&never, "init"), Verdict::Linearizable);
        // ...but once seen, it cannot be undone.
        let undone = vec![op(1, "write", "a", "info", 0.0, 0.0), op(2, "read", "a", "ok", 1.0, 2.0), op(3, "read", "init", "ok", 3.0, 4.0)];
        assert_eq!(check_key(&undone, "init"), Verdict::NotLinearizable);
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        let h = vec![op(1, "read", "zzz", "ok", 0.0, 1.0)];
        assert_eq!(check_key(&h, "init"), Verdict::NotLinearizable);
    }
}
