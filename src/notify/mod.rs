//! The leader's notice duties (ARCHITECTURE.md, "Notifications" and "Maintenance windows"):
//! send the replicated outbox's pending deliveries (SMTP with lettre, HMAC-signed webhooks),
//! propose `RecordDeliveries` with what became of them, and propose the maintenance stages and
//! probe-alert flushes that have come due.
//!
//! Invariants: only the Raft leader acts (checked at every tick); nothing here changes state
//! except through proposed commands, so a new leader simply carries on from the replicated
//! outbox (a crash between sending and the commit of `RecordDeliveries` resends that delivery
//! once: at-least-once, receivers de-duplicate on the notice id); secrets (SMTP password,
//! webhook secrets) are never logged; imports only `registry`, `config` and `secrets`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::{MaintenanceConfig, NotifyConfig, SmtpSecurity};
use crate::registry::{maintenance, notice, Bilingual, Channel, Command, DeliveryOutcome, DeliveryResult, DeliveryState, Sealed, State};
use crate::secrets::SecretsKey;

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error("notify.smtp_server {server:?}: {reason}")]
    Smtp { server: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("notify.from {0:?} is not a mailbox like \"LGSP <lgsp@example.gov.vn>\"")]
    From(String),
    #[error("notification metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client for webhooks: {0}")]
    Http(String),
}

/// One delivery to attempt, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct Job {
    pub notice: String,
    pub index: u32,
    pub channel: Channel,
    pub kind: String,
    pub subject: Bilingual,
    pub body: Bilingual,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    /// The agency webhook's sealed secret (`None` if the webhook was removed since).
    pub secret: Option<Sealed>,
}

/// What is due at `now`, read from the applied state.
#[derive(Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub stages: Vec<(String, &'static str)>,
    pub flush: Vec<String>,
    pub pending: usize,
    /// Settled notices older than [`KEEP_NOTICES_DAYS`] exist: propose `PruneNotices`.
    pub prune_before: Option<DateTime<Utc>>,
}

/// Settled notices are kept this long (what was sent to whom, for the operator), then pruned.
pub const KEEP_NOTICES_DAYS: i64 = 90;

/// Reads what is due: pending deliveries whose backoff has passed (oldest notice first, at
/// most `limit`), maintenance stages and probe alerts whose hold-down ended.
pub fn plan(state: &State, now: DateTime<Utc>, reminder_secs: u64, limit: usize) -> Plan {
    let mut p = Plan::default();
    let mut notices: Vec<_> = state.notices.values().filter(|n| n.pending()).collect();
    notices.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    for n in notices {
        for (i, d) in n.deliveries.iter().enumerate() {
            if d.state != DeliveryState::Pending {
                continue;
            }
            p.pending += 1;
            if d.next_at.is_some_and(|t| t > now) || p.jobs.len() >= limit {
                continue;
            }
            let secret = match &d.channel {
                Channel::Webhook { agency, url } => {
                    state.agencies.get(agency).and_then(|a| a.webhooks.iter().find(|w| &w.url == url)).map(|w| w.secret.clone())
                }
                _ => None,
            };
            p.jobs.push(Job {
                notice: n.id.clone(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                channel: d.channel.clone(),
                kind: n.kind.clone(),
                subject: n.subject.clone(),
                body: n.body.clone(),
                data: n.data.clone(),
                created_at: n.created_at,
                attempts: d.attempts,
                secret,
            });
        }
    }
    for w in state.maintenance.values() {
        if let Some(s) = maintenance::due_stage(w, now, reminder_secs) {
            p.stages.push((w.id.clone(), s));
        }
    }
    let horizon = now - chrono::Duration::days(KEEP_NOTICES_DAYS);
    if state.notices.values().any(|n| n.created_at < horizon && !n.pending()) {
        p.prune_before = Some(horizon);
    }
    for a in state.probe_alerts.values() {
        if notice::probe_alert_due(state, &a.target, now).is_some_and(|t| t <= now) {
            p.flush.push(a.target.clone());
        }
    }
    p
}

/// `X-Lgsp-Signature` value: `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"").expect("HMAC takes any key"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What the node gives the duties: whether it leads, what is due, and a way to propose.
pub struct Hooks {
    pub is_leader: Arc<dyn Fn() -> bool + Send + Sync>,
    pub plan: Arc<dyn Fn(DateTime<Utc>, u64) -> Plan + Send + Sync>,
    #[allow(clippy::type_complexity)]
    pub propose: Arc<dyn Fn(Command) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>,
}

/// Sends notices; built once from `[notify]`.
pub struct Notifier {
    cfg: NotifyConfig,
    from: Option<Mailbox>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    http: reqwest::Client,
    key: SecretsKey,
    operator_secret: Option<Vec<u8>>,
    deliveries: IntCounterVec,
    pending: IntGauge,
}

impl Notifier {
    pub fn new(cfg: &NotifyConfig, key: SecretsKey, metrics: &Registry) -> Result<Notifier, NotifyError> {
        let smtp = match &cfg.smtp_server {
            None => None,
            Some(server) => Some(smtp_transport(cfg, server)?),
        };
        let from = if cfg.smtp_server.is_some() {
            Some(cfg.from.parse::<Mailbox>().map_err(|_| NotifyError::From(cfg.from.clone()))?)
        } else {
            None
        };
        let operator_secret = match &cfg.operator_webhook_secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| NotifyError::Read { path: p.display().to_string(), source })?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            None => None,
        };
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(15)).connect_timeout(Duration::from_secs(5));
        for c in rustls_native_certs::load_native_certs().certs {
            if let Ok(cert) = reqwest::Certificate::from_der(c.as_ref()) {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b.build().map_err(|e| NotifyError::Http(e.to_string()))?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "lgsp_notify_deliveries_total",
                "Notice deliveries attempted by this node as leader, by channel and result (sent, retry, failed)",
            ),
            &["channel", "result"],
        )?;
        metrics.register(Box::new(deliveries.clone()))?;
        let pending = IntGauge::new(
            "lgsp_notify_pending_deliveries",
            "Deliveries waiting in the replicated outbox (as this node last saw as leader)",
        )?;
        metrics.register(Box::new(pending.clone()))?;
        Ok(Notifier { cfg: cfg.clone(), from, smtp, http, key, operator_secret, deliveries, pending })
    }

    async fn email(&self, to: &[String], job: &Job) -> Result<(), String> {
        let (Some(smtp), Some(from)) = (&self.smtp, &self.from) else {
            return Err("not configured: set [notify] smtp_server".into());
        };
        let mut b = Message::builder()
            .from(from.clone())
            .subject(format!("{} / {}", job.subject.vi, job.subject.en))
            .message_id(Some(format!("<{}@lgsp>", hex::encode(&Sha256::digest(job.notice.as_bytes())[..16]))))
            .header(ContentType::TEXT_PLAIN);
        for t in to {
            b = b.to(t.parse::<Mailbox>().map_err(|e| format!("{t:?} is not an email address: {e}"))?);
        }
        let text = format!("{}\n----------------------------------------\n{}\n-- \nLGSP notice {}\n", job.body.vi, job.body.en, job.notice);
        let msg = b.body(text).map_err(|e| format!("cannot build the message: {e}"))?;
        smtp.send(msg).await.map(|_| ()).map_err(|e| format!("SMTP: {e}"))
    }

    async fn webhook(&self, url: &str, secret: &[u8], job: &Job) -> Result<(), String> {
        let body = serde_json::to_vec(&serde_json::json!({
            "id": job.notice,
            "kind": job.kind,
            "subject": job.subject,
            "body": job.body,
            "data": job.data,
            "created_at": job.created_at,
        }))
        .map_err(|e| e.to_string())?;
        let ts = Utc::now().timestamp();
        let r = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-lgsp-notice-id", &job.notice)
            .header("x-lgsp-timestamp", ts.to_string())
            .header("x-lgsp-signature", sign(secret, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: HTTP {}", r.status().as_u16()))
        }
    }

    async fn attempt(&self, job: &Job) -> Result<(), (bool, String)> {
        // (permanent?, error)
        match &job.channel {
            Channel::Email { to } => self.email(std::slice::from_ref(to), job).await.map_err(|e| (false, e)),
            Channel::OperatorEmail => {
                if self.cfg.operator_emails.is_empty() {
                    return Err((true, "not configured: [notify] operator_emails is empty".into()));
                }
                self.email(&self.cfg.operator_emails, job).await.map_err(|e| (false, e))
            }
            Channel::Webhook { url, agency } => {
                let secret = job.secret.as_ref().and_then(|s| self.key.open(s));
                let Some(secret) = secret else {
                    return Err((true, format!("agency {agency} no longer has the webhook {url} (or its secret cannot be opened)")));
                };
                self.webhook(url, &secret, job).await.map_err(|e| (false, e))
            }
            Channel::OperatorWebhook => match (&self.cfg.operator_webhook, &self.operator_secret) {
                (Some(url), Some(secret)) => self.webhook(url, secret, job).await.map_err(|e| (false, e)),
                (Some(_), None) => Err((true, "not configured: [notify] operator_webhook_secret_file is missing".into())),
                _ => Err((true, "not configured: [notify] operator_webhook is not set".into())),
            },
        }
    }

    /// Sends the jobs (a few at a time) and says what became of each.
    pub async fn send_all(self: &Arc<Self>, jobs: Vec<Job>) -> Vec<DeliveryResult> {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(jobs.len());
        let sem = Arc::new(tokio::sync::Semaphore::new(8));
        for job in jobs {
            let me = self.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = me.attempt(&job).await;
                (job, r)
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((job, r)) = done else { continue };
            let label = job.channel.label();
            let outcome = match r {
                Ok(()) => {
                    tracing::info!(notice = %job.notice, channel = label, "notice delivered");
                    DeliveryOutcome::Sent
                }
                Err((permanent, error)) => {
                    let attempts = job.attempts + 1;
                    if permanent || attempts >= self.cfg.max_attempts {
                        tracing::warn!(notice = %job.notice, channel = label, attempts, error = %error, "notice delivery failed for good");
                        DeliveryOutcome::Failed { error }
                    } else {
                        let delay = self.cfg.retry_base_secs().saturating_mul(1u64 << job.attempts.min(16)).min(3600);
                        let next_at = Utc::now() + chrono::Duration::seconds(i64::try_from(delay).unwrap_or(3600));
                        tracing::warn!(notice = %job.notice, channel = label, attempts, retry_in_s = delay, error = %error, "notice delivery failed; will retry");
                        DeliveryOutcome::Retry { error, next_at }
                    }
                }
            };
            let result = match &outcome {
                DeliveryOutcome::Sent => "sent",
                DeliveryOutcome::Retry { .. } => "retry",
                DeliveryOutcome::Failed { .. } => "failed",
            };
            self.deliveries.with_label_values(&[label, result]).inc();
            out.push(DeliveryResult { notice: job.notice, index: job.index, outcome });
        }
        out
    }
}

fn smtp_transport(cfg: &NotifyConfig, server: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let err = |reason: String| NotifyError::Smtp { server: server.to_owned(), reason };
    let (host, port) = server.rsplit_once(':').ok_or_else(|| err("not host:port".into()))?;
    let port: u16 = port.parse().map_err(|_| err("bad port".into()))?;
    let tls = || -> Result<TlsParameters, NotifyError> {
        let mut b = TlsParameters::builder(host.to_owned());
        if let Some(ca) = &cfg.smtp_ca_file {
            let pem = std::fs::read(ca).map_err(|source| NotifyError::Read { path: ca.display().to_string(), source })?;
            b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| err(format!("smtp_ca_file: {e}")))?);
        }
        b.build_rustls().map_err(|e| err(format!("TLS set-up: {e}")))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).timeout(Some(Duration::from_secs(20)));
    b = match cfg.smtp_security {
        SmtpSecurity::Starttls => b.tls(Tls::Required(tls()?)),
        SmtpSecurity::Tls => b.tls(Tls::Wrapper(tls()?)),
        SmtpSecurity::Plain => b.tls(Tls::None),
    };
    if let (Some(user), Some(pw)) = (&cfg.smtp_username, &cfg.smtp_password_file) {
        let pass = std::fs::read_to_string(pw).map_err(|source| NotifyError::Read { path: pw.display().to_string(), source })?;
        b = b.credentials(Credentials::new(user.clone(), pass.trim().to_owned()));
    }
    Ok(b.build())
}

/// The leader's loop: every `tick`, if this node leads, propose due stages and flushes, send
/// due deliveries and record the results. Returns when `stop` resolves.
pub async fn run(notifier: Arc<Notifier>, hooks: Hooks, maint: MaintenanceConfig, tick: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let reminder = maint.reminder_secs();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if !(hooks.is_leader)() {
            continue;
        }
        let p = (hooks.plan)(Utc::now(), reminder);
        notifier.pending.set(i64::try_from(p.pending).unwrap_or(i64::MAX));
        for (id, stage) in p.stages {
            if let Err(e) = (hooks.propose)(Command::MaintenanceStage { id: id.clone(), stage: stage.to_owned() }).await {
                tracing::warn!(window = %id, stage, error = %e, "could not record a maintenance stage; will retry");
            }
        }
        for target in p.flush {
            if let Err(e) = (hooks.propose)(Command::FlushProbeAlert { target: target.clone() }).await {
                tracing::warn!(target = %target, error = %e, "could not flush a probe alert; will retry");
            }
        }
        if let Some(before) = p.prune_before {
            if let Err(e) = (hooks.propose)(Command::PruneNotices { before }).await {
                tracing::warn!(error = %e, "could not prune old notices; will retry");
            }
        }
        if p.jobs.is_empty() {
            continue;
        }
        let results = notifier.send_all(p.jobs).await;
        if let Err(e) = (hooks.propose)(Command::RecordDeliveries { results }).await {
            tracing::warn!(error = %e, "could not record notice deliveries; they will be sent again (at-least-once)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Actor, Delivery, Envelope, Notice};

    fn notice(id: &str, at: DateTime<Utc>, state: DeliveryState) -> Notice {
        Notice {
            id: id.into(),
            kind: "probe.down".into(),
            subject: Bilingual::default(),
            body: Bilingual::default(),
            data: serde_json::Value::Null,
            created_at: at,
            deliveries: vec![Delivery {
                channel: Channel::OperatorEmail,
                state,
                attempts: 1,
                next_at: None,
                last_error: String::new(),
                sent_at: None,
            }],
        }
    }

    #[test]
    fn plan_sends_pending_and_prunes_settled_notices_after_90_days() {
        let now = Utc::now();
        let old = now - chrono::Duration::days(100);
        let mut s = State::default();
        s.notices.put(notice("old-sent", old, DeliveryState::Sent));
        s.notices.put(notice("old-pending", old, DeliveryState::Pending));
        s.notices.put(notice("new-sent", now, DeliveryState::Sent));
        let p = plan(&s, now, 86_400, 10);
        assert_eq!(p.jobs.iter().map(|j| j.notice.as_str()).collect::<Vec<_>>(), ["old-pending"]);
        let before = p.prune_before.expect("an old settled notice is due for pruning");
        crate::registry::apply(&mut s, &Envelope::new(now, Actor::system(), Command::PruneNotices { before })).expect("prune");
        let mut left: Vec<&str> = s.notices.values().map(|n| n.id.as_str()).collect();
        left.sort();
        assert_eq!(left, ["new-sent", "old-pending"], "pending notices are never pruned");
        assert!(plan(&s, now, 86_400, 10).prune_before.is_none());
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Reference value computed with Python's hmac module:
        // hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        let s = sign(b"secret", 1_700_000_000, b"{}");
        assert_eq!(s, "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163");
        assert_ne!(s, sign(b"secret", 1_700_000_001, b"{}"), "the timestamp is signed");
        assert_ne!(s, sign(b"other", 1_700_000_000, b"{}"), "the key matters");
    }
}
