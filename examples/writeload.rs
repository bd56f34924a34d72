//! `writeload`: a closed-loop HTTP write load generator, used by `scripts/bench-cluster` to drive
//! LGSP's admin API and etcd's v3 JSON gateway with the same code, so that their numbers compare.
//!
//! ```text
//! cargo run --release --example writeload -- --url URL --body-template '{"code":"{code}","name":"Agency {n}"}' \
//!     [--header 'K: V']... --clients C --duration S [--method POST|PUT|GET] [--rotate-urls URL1,URL2,...]
//! ```
//!
//! Each of `--clients` clients sends one request at a time, as fast as answers come back
//! (optionally `--pace-ms` apart). Every *logical write* takes the next number `n` of a shared
//! counter (from `--start`) and its body is the template with these placeholders replaced:
//!
//! - `{n}`: the number; `{code}`: a QĐ 20/2020 agency code unique per `n` (`NNN.NN.NN.WNN`,
//!   the letter `W` so it never collides with the fixtures' `H` codes);
//! - `{n_b64key}` / `{n_b64val}`: base64 of `writeload/{n}` and of the LGSP agency body
//!   `{"code":"{code}","name":"Agency {n}"}`, for etcd's `POST /v3/kv/put` (`--etcd` sets that
//!   template), so both systems store the same bytes per write.
//!
//! A request fails on a transport error or a non-2xx answer. The client then retries the *same*
//! logical write, after `--retry-delay-ms`, on the next URL of `--rotate-urls` (round robin; the
//! same URL when there is no list). A `409` on a retry, after an attempt whose outcome was unknown
//! (transport error or 5xx: the write may have been applied), counts as acknowledged
//! (`acked_after_conflict`): LGSP refuses to create an agency twice.
//!
//! Prints one JSON object: acknowledged writes, failed attempts by status (`connect`, `timeout`,
//! `transport` for transport errors), throughput, latency of acknowledged writes (from the first
//! attempt to the acknowledgement) and the longest gap between two consecutive acknowledgements
//! (`max_gap_ms`, with when it started, in ms since the start; `max_gap_open` when no write was
//! acknowledged between its start and the end of `--duration`). `--acks-out FILE` writes every
//! acknowledgement's time (ms since the start), one per line.
//!
//! Invariants: no new request starts after `--duration`; requests in flight then are awaited
//! (bounded by `--timeout-ms`) and counted. The tool never sleeps a thread: pauses are
//! `tokio::time::sleep`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Parser;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

/// Body of etcd's v3 JSON gateway `PUT` (`POST /v3/kv/put`).
const ETCD_TEMPLATE: &str = r#"{"key":"{n_b64key}","value":"{n_b64val}"}"#;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop HTTP write load: C sequential clients, unique body per write, JSON report")]
struct Args {
    /// Where every client starts.
    #[arg(long)]
    url: String,
    /// Request body; `{n}`, `{code}`, `{n_b64key}`, `{n_b64val}` are replaced per write.
    #[arg(long)]
    body_template: Option<String>,
    /// Use etcd's `/v3/kv/put` body (`{"key":"{n_b64key}","value":"{n_b64val}"}`).
    #[arg(long, conflicts_with = "body_template")]
    etcd: bool,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Concurrent clients, each sequential.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds during which new writes start.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Comma-separated URLs a client moves through, round robin, after a failed request.
    #[arg(long, value_delimiter = ',')]
    rotate_urls: Vec<String>,
    /// First value of the write counter `n` (give each run its own range).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Pause before retrying a failed write (keeps a refused client from spinning).
    #[arg(long, default_value_t = 10)]
    retry_delay_ms: u64,
    /// Pause between a client's acknowledged write and its next one (0: closed loop, full speed).
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Runtime worker threads of the load generator itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write every acknowledgement's time (ms since the start) to this file, one per line.
    #[arg(long)]
    acks_out: Option<std::path::PathBuf>,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.threads == 0 || args.duration.is_nan() || args.duration <= 0.0 {
        bail!("--clients, --threads and --duration must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    let report = rt.block_on(run(&args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    /// Acknowledgement times, ms since the start.
    acks_ms: Vec<f64>,
    /// Latency of each acknowledged write, µs, first attempt to acknowledgement.
    latencies_us: Vec<u64>,
    /// Failed attempts by status (`"503"`, `"connect"`, `"timeout"`, `"transport"`).
    failures: BTreeMap<String, u64>,
    /// Times of failed attempts, ms since the start.
    failures_ms: Vec<f64>,
    acked_after_conflict: u64,
}

/// The parts of a request that do not change between writes.
struct Plan {
    method: Method,
    headers: HeaderMap,
    template: Option<String>,
    /// `--url` first, then the other `--rotate-urls`.
    urls: Vec<String>,
    end: Instant,
    start: Instant,
    retry_delay: Duration,
    pace: Duration,
}

async fn run(args: &Args) -> Result<serde_json::Value> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()).context("--method")?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("--header {h:?} is not `Name: value`"))?;
        headers.insert(HeaderName::from_bytes(k.trim().as_bytes())?, HeaderValue::from_str(v.trim())?);
    }
    let template = if args.etcd { Some(ETCD_TEMPLATE.to_owned()) } else { args.body_template.clone() };
    if template.is_some() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut urls = vec![args.url.clone()];
    urls.extend(args.rotate_urls.iter().filter(|u| **u != args.url).cloned());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .build()?;
    let counter = Arc::new(AtomicU64::new(args.start));
    let start = Instant::now();
    let start_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let plan = Arc::new(Plan {
        method,
        headers,
        template,
        urls,
        end: start + Duration::from_secs_f64(args.duration),
        start,
        retry_delay: Duration::from_millis(args.retry_delay_ms),
        pace: Duration::from_millis(args.pace_ms),
    });
    let tasks: Vec<_> = (0..args.clients).map(|_| tokio::spawn(client_loop(client.clone(), plan.clone(), counter.clone()))).collect();
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let report = summarise(args, &logs, elapsed, start_unix_ms);
    if let Some(path) = &args.acks_out {
        let mut acks: Vec<f64> = logs.iter().flat_map(|l| l.acks_ms.iter().copied()).collect();
        acks.sort_by(f64::total_cmp);
        let text: String = acks.iter().map(|t| format!("{t:.3}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// One sequential client: a logical write, retried (rotating URLs) until acknowledged or the
/// duration is over, then the next.
async fn client_loop(client: reqwest::Client, plan: Arc<Plan>, counter: Arc<AtomicU64>) -> ClientLog {
    let mut log = ClientLog::default();
    let mut url_ix = 0;
    'writes: while Instant::now() < plan.end {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let body = plan.template.as_deref().map(|t| render(t, n));
        let first_attempt = Instant::now();
        // True once an attempt may have been applied without our seeing the answer.
        let mut maybe_applied = false;
        loop {
            let mut req = client.request(plan.method.clone(), &plan.urls[url_ix]).headers(plan.headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let failure = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    // Read the body so the connection goes back to the pool.
                    let _ = resp.bytes().await;
                    if status.is_success() || (status == StatusCode::CONFLICT && maybe_applied) {
                        let now = Instant::now();
                        log.acks_ms.push(ms_since(plan.start, now));
                        log.latencies_us.push((now - first_attempt).as_micros() as u64);
                        log.acked_after_conflict += u64::from(!status.is_success());
                        break;
                    }
                    maybe_applied |= status.is_server_error();
                    status.as_u16().to_string()
                }
                Err(e) => {
                    // A refused connection never carried the request; anything else may have.
                    maybe_applied |= !e.is_connect();
                    if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "transport"
                    }
                    .to_owned()
                }
            };
            *log.failures.entry(failure).or_default() += 1;
            log.failures_ms.push(ms_since(plan.start, Instant::now()));
            if Instant::now() >= plan.end {
                break 'writes;
            }
            tokio::time::sleep(plan.retry_delay).await;
            url_ix = (url_ix + 1) % plan.urls.len();
        }
        if !plan.pace.is_zero() {
            tokio::time::sleep(plan.pace).await;
        }
    }
    log
}

fn ms_since(start: Instant, t: Instant) -> f64 {
    (t - start).as_secs_f64() * 1e3
}

/// A QĐ 20/2020 identifier code (`NNN.NN.NN.ANN`) unique for `n` < 10⁹.
fn agency_code(n: u64) -> String {
    let n = n % 1_000_000_000;
    format!("{:03}.{:02}.{:02}.W{:02}", n / 1_000_000, n / 10_000 % 100, n / 100 % 100, n % 100)
}

fn render(template: &str, n: u64) -> String {
    let code = agency_code(n);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s = template.replace("{n}", &n.to_string()).replace("{code}", &code);
    if s.contains("{n_b64key}") {
        s = s.replace("{n_b64key}", &b64.encode(format!("writeload/{n}")));
    }
    if s.contains("{n_b64val}") {
        s = s.replace("{n_b64val}", &b64.encode(format!(r#"{{"code":"{code}","name":"Agency {n}"}}"#)));
    }
    s
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1e3
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn summarise(args: &Args, logs: &[ClientLog], elapsed_s: f64, start_unix_ms: u64) -> serde_json::Value {
    let mut acks: Vec<f64> = logs.iter().flat_map(|l| l.acks_ms.iter().copied()).collect();
    acks.sort_by(f64::total_cmp);
    let mut lat: Vec<u64> = logs.iter().flat_map(|l| l.latencies_us.iter().copied()).collect();
    lat.sort_unstable();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for l in logs {
        for (k, v) in &l.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let mut fail_times: Vec<f64> = logs.iter().flat_map(|l| l.failures_ms.iter().copied()).collect();
    fail_times.sort_by(f64::total_cmp);
    // Longest gap between consecutive acknowledgements, and the next two for context.
    let mut gaps: Vec<(f64, f64)> = acks.windows(2).map(|w| (w[1] - w[0], w[0])).collect();
    gaps.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut max_gap, mut max_gap_at) = gaps.first().copied().unwrap_or((0.0, 0.0));
    // A gap still open when the duration ends (no acknowledgement since) counts up to the end.
    let end_ms = args.duration * 1e3;
    let last = acks.last().copied().unwrap_or(0.0);
    let open = end_ms - last > max_gap;
    if open {
        (max_gap, max_gap_at) = (end_ms - last, last);
    }
    let ok = acks.len() as u64;
    let failed: u64 = failures.values().sum();
    json!({
        "label": args.label,
        "url": args.url,
        "method": args.method.to_ascii_uppercase(),
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round3(elapsed_s),
        "start_unix_ms": start_unix_ms,
        "ok": ok,
        "acked_after_conflict": logs.iter().map(|l| l.acked_after_conflict).sum::<u64>(),
        "failed": failed,
        "failed_by_status": failures,
        "first_failure_ms": fail_times.first().map(|t| round3(*t)),
        "last_failure_ms": fail_times.last().map(|t| round3(*t)),
        "throughput_per_s": round3(ok as f64 / elapsed_s),
        "latency_ms": {
            "mean": if lat.is_empty() { 0.0 } else { round3(lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e3) },
            "p50": percentile(&lat, 50.0),
            "p90": percentile(&lat, 90.0),
            "p99": percentile(&lat, 99.0),
            "max": lat.last().map_or(0.0, |m| *m as f64 / 1e3),
        },
        "first_ack_ms": acks.first().map(|t| round3(*t)),
        "last_ack_ms": acks.last().map(|t| round3(*t)),
        "max_gap_ms": round3(max_gap),
        "max_gap_from_ms": round3(max_gap_at),
        "max_gap_open": open,
        "next_gaps_ms": gaps.iter().skip(1).take(2).map(|g| round3(g.0)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_valid_and_distinct() {
        assert_eq!(agency_code(0), "000.00.00.W00");
        assert_eq!(agency_code(123_456_789), "123.45.67.W89");
        for n in [0, 99, 100, 12_345, 999_999_999, 1_000_000_042] {
            lgsp::registry::rules::agency_code("code", &agency_code(n)).unwrap();
        }
        assert_ne!(agency_code(1), agency_code(100));
    }

    #[test]
    fn etcd_body_carries_the_agency_document() {
        let b = render(ETCD_TEMPLATE, 7);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let dec = |k: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v[k].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(dec("key"), "writeload/7");
        assert_eq!(dec("value"), r#"{"code":"000.00.00.W07","name":"Agency 7"}"#);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
