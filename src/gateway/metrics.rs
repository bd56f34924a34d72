//! Gateway metrics (SPEC §7): requests by service, consumer agency and outcome; responses by
//! HTTP status class; latency histograms split gateway vs upstream; bytes; authentication
//! failures by reason.
//!
//! Invariants: labels come only from registry identifiers (service context, agency code) and
//! stable outcome codes, never from a transaction id, path or header; unknown services are
//! counted under `service="-"`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    /// Responses by service and HTTP status class (`2xx` .. `5xx`), whether the provider or the
    /// gateway produced them: what error-ratio alerts divide.
    pub responses: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub view_index: IntGauge,
    /// Nonces and jtis that did not reach the peers (outbox full) or were not remembered from
    /// them (replay cache full); labelled `kind` (nonce, jti) and `stage` (outbox, absorb).
    pub shared_dropped: IntCounterVec,
}

const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> Result<GatewayMetrics, prometheus::Error> {
        let m = GatewayMetrics {
            requests: IntCounterVec::new(
                Opts::new("lgsp_gateway_requests_total", "Transactions handled by the gateway, by service, consumer agency and outcome"),
                &["service", "consumer", "outcome"],
            )?,
            responses: IntCounterVec::new(
                Opts::new("lgsp_gateway_responses_total", "Responses sent to consumers, by service and HTTP status class (2xx, 4xx, 5xx)"),
                &["service", "status_class"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("lgsp_gateway_request_duration_seconds", "Time from request received to response headers sent")
                    .buckets(BUCKETS.to_vec()),
                &["service"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new("lgsp_gateway_upstream_duration_seconds", "Time the provider took to answer with headers")
                    .buckets(BUCKETS.to_vec()),
                &["service"],
            )?,
            request_bytes: IntCounterVec::new(
                Opts::new("lgsp_gateway_request_bytes_total", "Request body bytes forwarded to providers"),
                &["service"],
            )?,
            response_bytes: IntCounterVec::new(
                Opts::new("lgsp_gateway_response_bytes_total", "Response body bytes returned to consumers"),
                &["service"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new("lgsp_gateway_auth_failures_total", "Refused authentications, by reason code"),
                &["reason"],
            )?,
            view_index: IntGauge::new("lgsp_gateway_registry_index", "Registry index of the view the gateway is serving from")?,
            shared_dropped: IntCounterVec::new(
                Opts::new(
                    "lgsp_gateway_shared_dropped_total",
                    "Nonces and assertion jtis not shared with the other nodes, by kind and stage (outbox full, or peer's entry not remembered)",
                ),
                &["kind", "stage"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.responses.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.request_bytes.clone()))?;
        registry.register(Box::new(m.response_bytes.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.view_index.clone()))?;
        registry.register(Box::new(m.shared_dropped.clone()))?;
        // Every (kind, stage) starts at 0, so the series exist before the first drop and
        // `increase()` sees the first one.
        for kind in ["nonce", "jti"] {
            for stage in ["outbox", "absorb"] {
                m.shared_dropped.with_label_values(&[kind, stage]);
            }
        }
        Ok(m)
    }
}
