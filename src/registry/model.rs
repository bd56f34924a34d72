//! The registry's entities: agencies, information systems, services and their versions,
//! subscriptions, credentials, shared catalogs, users and API tokens.
//!
//! Invariants: every type here is plain data (no I/O, no clocks); identifiers are validated
//! newtypes or checked strings; secrets appear only as hashes or sealed (encrypted) bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Every instant in the registry is UTC; local (Asia/Ho_Chi_Minh) dates are derived when needed.
pub type Timestamp = DateTime<Utc>;

/// Who may do what in the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Staff of the city data center: everything.
    Operator,
    /// An agency's IT staff: only its own agency's objects.
    AgencyAdmin,
    /// Read-only, audit and reports.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::AgencyAdmin => "agency-admin",
            Role::Auditor => "auditor",
        }
    }
}

/// Lifecycle of an agency after restructuring (R2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyStatus {
    Active,
    /// Took a new identifier code; the successor holds its systems.
    Recoded,
    /// Split into several successors.
    Split,
    /// Merged into a successor.
    Merged,
    Dissolved,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
}

/// One entry in an agency's restructuring history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgencyEvent {
    pub at: Timestamp,
    pub by: String,
    /// created, renamed, recoded, split, merged, dissolved, suspended, reinstated, updated
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agency {
    /// QĐ 20/2020 electronic identifier code, `NNN.NN.NN.ANN`.
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub status: AgencyStatus,
    /// Suspended agencies keep their registry entries but the gateway refuses their traffic.
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub predecessors: Vec<String>,
    #[serde(default)]
    pub successors: Vec<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub history: Vec<AgencyEvent>,
    /// Where the agency wants machine-readable notices (O2, O3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// An HTTPS endpoint receiving notices as JSON, signed with HMAC-SHA256 under `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// The shared signing secret, sealed with the cluster's secrets key.
    pub secret: Sealed,
}

/// How a system is cleared to connect (R3): an approved security level or a signed commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[serde(deny_unknown_fields)]
pub enum SecurityClearance {
    /// NĐ 85/2016 level 1..=5, with the approving decision if known.
    Level {
        level: u8,
        #[serde(default)]
        decision: String,
    },
    /// Form 03 security commitment signed by the agency.
    Commitment { signed_on: NaiveDate, document: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    /// Slug, unique across the registry.
    pub id: String,
    pub agency: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub security: SecurityClearance,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub disabled: bool,
    pub created_at: Timestamp,
    /// The health probe agreed at registration (issue 6), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    Draft,
    Published,
    Deprecated,
    Retired,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Draft => "draft",
            VersionState::Published => "published",
            VersionState::Deprecated => "deprecated",
            VersionState::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Json,
    Xml,
}

/// Where a version's traffic goes, per environment (R6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

impl Upstreams {
    pub fn get(&self, env: Environment) -> Option<&str> {
        match env {
            Environment::Production => self.production.as_deref(),
            Environment::Test => self.test.as_deref(),
        }
    }
}

/// A recorded lifecycle transition; `override_reason` is set when an operator bypassed a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub at: Timestamp,
    pub by: String,
    pub from: VersionState,
    pub to: VersionState,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
}

/// How the appliance authenticates itself to a provider's system, per version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UpstreamAuth {
    /// The provider trusts the network (or authenticates by other means).
    #[default]
    None,
    Basic {
        username: String,
        password: Sealed,
    },
    Bearer {
        token: Sealed,
    },
    /// TLS client certificate presented to the provider.
    MutualTls {
        cert_pem: String,
        key_pem: Sealed,
    },
    /// An RFC 9421 signature by the appliance's own Ed25519 key over method, target URI,
    /// transaction id and content digest.
    Signature,
}

impl UpstreamAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamAuth::None => "none",
            UpstreamAuth::Basic { .. } => "basic",
            UpstreamAuth::Bearer { .. } => "bearer",
            UpstreamAuth::MutualTls { .. } => "mutual_tls",
            UpstreamAuth::Signature => "signature",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceVersion {
    pub version: String,
    pub state: VersionState,
    #[serde(default)]
    pub upstream: Upstreams,
    /// Largest request body the gateway forwards; `None` uses the gateway default.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub upstream_auth: UpstreamAuth,
    /// Whole-request timeout towards the provider; `None` uses the gateway default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub published_at: Option<Timestamp>,
    #[serde(default)]
    pub deprecated_at: Option<Timestamp>,
    /// Announced decommission instant (≥ 60 days after the notice, R7).
    #[serde(default)]
    pub retire_at: Option<Timestamp>,
    #[serde(default)]
    pub retired_at: Option<Timestamp>,
    #[serde(default)]
    pub history: Vec<LifecycleEvent>,
    /// The health probe agreed at registration (issue 6), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
}

/// A data-sharing service (Form 01, R4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// URL context, unique: `/{context}/{version}/...`.
    pub context: String,
    pub provider_system: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub purpose: String,
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub request_description: String,
    #[serde(default)]
    pub response_description: String,
    #[serde(default)]
    pub sample_request: String,
    #[serde(default)]
    pub sample_response: String,
    pub created_at: Timestamp,
    /// Keyed by version label; ordered for display with [`version_order`].
    #[serde(default)]
    pub versions: BTreeMap<String, ServiceVersion>,
}

impl Service {
    /// The default version: the newest published one (SPEC §3).
    pub fn default_version(&self) -> Option<&ServiceVersion> {
        self.versions.values().filter(|v| v.state == VersionState::Published).max_by(|a, b| version_order(&a.version, &b.version))
    }
}

/// Orders version labels like `v1 < v2 < v10 < v10.1` (numeric parts compared as numbers).
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<u64> {
        s.trim_start_matches(['v', 'V']).split(['.', '-', '_']).map(|p| p.parse::<u64>().unwrap_or(0)).collect()
    }
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    Requested,
    ProviderApproved,
    Active,
    Rejected,
    Revoked,
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Requested => "requested",
            SubscriptionState::ProviderApproved => "provider_approved",
            SubscriptionState::Active => "active",
            SubscriptionState::Rejected => "rejected",
            SubscriptionState::Revoked => "revoked",
        }
    }
    /// Still pending or in force (a second request for the same thing would be a duplicate).
    pub fn is_open(self) -> bool {
        matches!(self, SubscriptionState::Requested | SubscriptionState::ProviderApproved | SubscriptionState::Active)
    }
}

/// Per-subscription traffic control (G6); enforced by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub per_second: Option<u32>,
    #[serde(default)]
    pub per_day: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEvent {
    pub at: Timestamp,
    pub by: String,
    pub to: SubscriptionState,
    #[serde(default)]
    pub reason: String,
}

/// A consumer system's access to one service version in one environment (Form 02, R5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    pub environment: Environment,
    pub state: SubscriptionState,
    #[serde(default)]
    pub purpose: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub contact: Option<Contact>,
    #[serde(default)]
    pub rate_limit: RateLimit,
    pub requested_at: Timestamp,
    pub requested_by: String,
    /// Last local date (Asia/Ho_Chi_Minh) by which a decision is due: 5 working days (R5).
    pub decision_due: NaiveDate,
    #[serde(default)]
    pub history: Vec<SubscriptionEvent>,
}

/// A stored secret. Generated secrets (256 random bits) are kept as salted SHA-256;
/// imported ones, whose entropy we cannot vouch for, as argon2id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecretHash {
    Sha256 { salt: String, hash: String },
    Argon2id { phc: String },
}

/// Bytes encrypted with the cluster's secrets key (XChaCha20-Poly1305), base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmacKey {
    pub key_id: String,
    /// HMAC needs the shared secret itself, so it is encrypted, not hashed.
    pub secret: Sealed,
}

/// RFC 9421 signature algorithms accepted from consumers (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum SigAlg {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "rsa-pss-sha512")]
    RsaPssSha512,
    #[serde(rename = "rsa-v1_5-sha256")]
    RsaV15Sha256,
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl SigAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigAlg::HmacSha256 => "hmac-sha256",
            SigAlg::RsaPssSha512 => "rsa-pss-sha512",
            SigAlg::RsaV15Sha256 => "rsa-v1_5-sha256",
            SigAlg::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            SigAlg::Ed25519 => "ed25519",
        }
    }
    pub fn parse(s: &str) -> Option<SigAlg> {
        [SigAlg::HmacSha256, SigAlg::RsaPssSha512, SigAlg::RsaV15Sha256, SigAlg::EcdsaP256Sha256, SigAlg::Ed25519]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// A consumer's public key, for RFC 9421 signatures and RS256 `private_key_jwt` assertions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The `keyid` the consumer puts in `Signature-Input` (unique across the registry).
    pub key_id: String,
    pub alg: SigAlg,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: String,
}

/// An OAuth access token withdrawn before it expires (RFC 7009); kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at: Timestamp,
    pub revoked_at: Timestamp,
}

/// Connection details of one consumer system in one environment (R6, O8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub system: String,
    pub environment: Environment,
    pub consumer_key: String,
    pub secret: SecretHash,
    #[serde(default)]
    pub hmac: Option<HmacKey>,
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
    pub created_at: Timestamp,
    pub created_by: String,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogField {
    pub name: String,
    #[serde(rename = "type", default = "default_field_type")]
    pub field_type: String,
    #[serde(default)]
    pub description: String,
}

fn default_field_type() -> String {
    "string".into()
}

/// One catalog entry: field name -> value.
pub type CatalogEntry = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogVersion {
    pub version: u32,
    pub fields: Vec<CatalogField>,
    pub entries: Vec<serde_json::Map<String, serde_json::Value>>,
    pub published_at: Timestamp,
    pub published_by: String,
    #[serde(default)]
    pub note: String,
}

/// A shared code list ("danh mục dùng chung", R8). Versions are immutable once published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub code: String,
    pub name: String,
    pub owner_agency: String,
    #[serde(default)]
    pub description: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub versions: Vec<CatalogVersion>,
}

impl Catalog {
    pub fn latest(&self) -> Option<&CatalogVersion> {
        self.versions.last()
    }
}

/// An admin account (O7). Passwords are argon2id PHC strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    pub role: Role,
    /// Set exactly when `role` is agency-admin.
    #[serde(default)]
    pub agency: Option<String>,
    pub password_hash: String,
    pub password_changed_at: Timestamp,
    #[serde(default)]
    pub failed_logins: u32,
    #[serde(default)]
    pub locked_until: Option<Timestamp>,
    #[serde(default)]
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// A bearer token for the admin API: a console session or a long-lived tool token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub username: String,
    pub name: String,
    /// Salted SHA-256 of the secret part (256 random bits).
    pub secret: SecretHash,
    pub created_at: Timestamp,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub session: bool,
}

/// Registry-wide settings that rules depend on; replicated like everything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Settings {
    /// Public holidays (local dates) skipped by the 5-working-day clock.
    #[serde(default)]
    pub holidays: Vec<NaiveDate>,
}

/// A text in Vietnamese and English (notices, maintenance reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Bilingual {
    pub vi: String,
    pub en: String,
}

/// What a maintenance window takes out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaintenanceScope {
    /// Every service on every node.
    Platform,
    /// These nodes (by name): `/status` answers 503 so load balancers move away.
    Nodes { nodes: Vec<String> },
    /// These services (by context) on every node: the gateway answers 503 `MAINTENANCE`.
    Services { services: Vec<String> },
}

impl MaintenanceScope {
    pub fn covers_service(&self, context: &str) -> bool {
        match self {
            MaintenanceScope::Platform => true,
            MaintenanceScope::Nodes { .. } => false,
            MaintenanceScope::Services { services } => services.iter().any(|s| s == context),
        }
    }
    pub fn covers_node(&self, name: &str) -> bool {
        match self {
            MaintenanceScope::Nodes { nodes } => nodes.iter().any(|n| n == name),
            _ => false,
        }
    }
}

/// One entry in a window's history (announced, changed, cancelled, reminder, started, ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceEvent {
    pub at: Timestamp,
    pub by: String,
    pub kind: String,
    #[serde(default)]
    pub detail: String,
}

/// A planned (or emergency) maintenance window (O3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub id: String,
    pub scope: MaintenanceScope,
    pub start: Timestamp,
    pub end: Timestamp,
    pub reason: Bilingual,
    /// Announced with less than the minimum notice; `emergency_reason` says why.
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub emergency_reason: String,
    /// The window touches office hours (Mon–Fri 07:30–17:00 Vietnam time, holidays excepted).
    #[serde(default)]
    pub office_hours: bool,
    /// Incremented by every change; part of the change notices' dedup keys.
    #[serde(default)]
    pub revision: u32,
    pub announced_at: Timestamp,
    pub announced_by: String,
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    #[serde(default)]
    pub cancelled_at: Option<Timestamp>,
    /// Stages whose notice was queued: `reminder`, `start`, `end`.
    #[serde(default)]
    pub stages: Vec<String>,
    #[serde(default)]
    pub history: Vec<MaintenanceEvent>,
}

impl MaintenanceWindow {
    /// In force at `now` (not cancelled, start ≤ now < end).
    pub fn active_at(&self, now: Timestamp) -> bool {
        self.cancelled_at.is_none() && self.start <= now && now < self.end
    }
    /// `scheduled`, `in_progress`, `completed` or `cancelled` at `now` (API and feed).
    pub fn status_at(&self, now: Timestamp) -> &'static str {
        if self.cancelled_at.is_some() {
            "cancelled"
        } else if now >= self.end {
            "completed"
        } else if now >= self.start {
            "in_progress"
        } else {
            "scheduled"
        }
    }
    pub fn stage_done(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s == stage)
    }
}

/// Where one copy of a notice goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// A contact of an agency, system or subscription.
    Email { to: String },
    /// An agency's webhook (its secret is looked up in the agency when sending).
    Webhook { agency: String, url: String },
    /// The operator's addresses from `[notify] operator_emails`.
    OperatorEmail,
    /// `[notify] operator_webhook`.
    OperatorWebhook,
}

impl Channel {
    pub fn label(&self) -> &'static str {
        match self {
            Channel::Email { .. } => "email",
            Channel::Webhook { .. } => "webhook",
            Channel::OperatorEmail => "operator_email",
            Channel::OperatorWebhook => "operator_webhook",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Sent,
    /// Gave up after the configured attempts, or nothing is configured for this channel.
    Failed,
}

/// One recipient of a notice and how delivering to it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub channel: Channel,
    pub state: DeliveryState,
    #[serde(default)]
    pub attempts: u32,
    /// Not before this instant (backoff after a failure); `None` = at once.
    #[serde(default)]
    pub next_at: Option<Timestamp>,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub sent_at: Option<Timestamp>,
}

/// A notice in the replicated outbox; `id` is its dedup key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub id: String,
    /// e.g. `maintenance.announced`, `probe.down`, `probe.cert_expiring`.
    pub kind: String,
    pub subject: Bilingual,
    pub body: Bilingual,
    /// Machine-readable facts for webhooks.
    #[serde(default)]
    pub data: serde_json::Value,
    pub created_at: Timestamp,
    pub deliveries: Vec<Delivery>,
}

impl Notice {
    pub fn pending(&self) -> bool {
        self.deliveries.iter().any(|d| d.state == DeliveryState::Pending)
    }
}

/// What a probe checks (issue 6). See ARCHITECTURE.md "Probes".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// GET the URL; healthy when it answers `expect_status` within the timeout.
    Http,
    /// Connect to `host:port` within the timeout.
    Tcp,
    /// TLS handshake with `host:port`; reports the days left on the server certificate.
    Tls,
}

/// A health probe agreed at registration for a system or a service version.
///
/// Invariants (enforced by [`ProbeSpec::validate`]): the interval is within
/// [`ProbeSpec::MIN_INTERVAL_S`]..=[`ProbeSpec::MAX_INTERVAL_S`]; the timeout is positive and
/// not longer than the interval; `target` is an `http(s)://` URL for `http` and `host:port`
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// URL (`http`) or `host:port` (`tcp`, `tls`).
    pub target: String,
    pub interval_s: u32,
    #[serde(default = "ProbeSpec::default_timeout_ms")]
    pub timeout_ms: u32,
    /// HTTP status meaning healthy (`http` only).
    #[serde(default = "ProbeSpec::default_expect_status")]
    pub expect_status: u16,
    /// Fewer days left on the certificate than this is `degraded` (`tls`, and `http` over https).
    #[serde(default = "ProbeSpec::default_tls_warn_days")]
    pub tls_warn_days: u32,
}

impl ProbeSpec {
    pub const MIN_INTERVAL_S: u32 = 10;
    pub const MAX_INTERVAL_S: u32 = 3600;

    fn default_timeout_ms() -> u32 {
        5000
    }
    fn default_expect_status() -> u16 {
        200
    }
    fn default_tls_warn_days() -> u32 {
        21
    }

    /// Checks the invariants; the error is a sentence for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if !(Self::MIN_INTERVAL_S..=Self::MAX_INTERVAL_S).contains(&self.interval_s) {
            return Err(format!(
                "interval_s must be between {} and {} seconds, not {}",
                Self::MIN_INTERVAL_S,
                Self::MAX_INTERVAL_S,
                self.interval_s
            ));
        }
        if self.timeout_ms == 0 || u64::from(self.timeout_ms) > u64::from(self.interval_s) * 1000 {
            return Err(format!(
                "timeout_ms must be positive and at most the interval ({} ms), not {}",
                self.interval_s * 1000,
                self.timeout_ms
            ));
        }
        match self.kind {
            ProbeKind::Http => {
                let lower = self.target.to_ascii_lowercase();
                let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(format!("an http probe needs an http:// or https:// URL with a host, not {:?}", self.target));
                }
                if !(100..=599).contains(&self.expect_status) {
                    return Err(format!("expect_status must be an HTTP status (100-599), not {}", self.expect_status));
                }
            }
            ProbeKind::Tcp | ProbeKind::Tls => {
                let ok = self.target.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(format!("a tcp or tls probe needs host:port, not {:?}", self.target));
                }
            }
        }
        Ok(())
    }
}

/// A probe's verdict, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeHealth {
    Up,
    Degraded,
    Down,
}

impl ProbeHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeHealth::Up => "up",
            ProbeHealth::Degraded => "degraded",
            ProbeHealth::Down => "down",
        }
    }
}

/// What was last notified about a probed target (dedup and flapping hold-down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAlert {
    pub target: String,
    /// The system whose contacts are told (its agency's too).
    pub system: String,
    pub notified: ProbeHealth,
    #[serde(default)]
    pub notified_at: Option<Timestamp>,
    /// The latest reported status and since when.
    pub current: ProbeHealth,
    pub current_since: Timestamp,
    #[serde(default)]
    pub reason: String,
    /// The last certificate-expiry notice queued for this target, so each threshold is
    /// notified once per certificate however often and by whichever node it is checked.
    #[serde(default)]
    pub cert_notified: Option<CertNotified>,
}

/// A certificate-expiry notice already queued: the threshold it crossed and the expiry date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertNotified {
    pub threshold_days: i64,
    pub expires: NaiveDate,
}

/// What a probe belongs to: a system, or one version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeOwner {
    System { id: String },
    Version { service: String, version: String },
}

impl ProbeOwner {
    /// The probe's target id: `system:{id}` or `service:{context}:{version}`.
    pub fn target_id(&self) -> String {
        match self {
            ProbeOwner::System { id } => format!("system:{id}"),
            ProbeOwner::Version { service, version } => format!("service:{service}:{version}"),
        }
    }

    /// The owner named by a target id (the inverse of [`ProbeOwner::target_id`]).
    pub fn parse(target: &str) -> Option<ProbeOwner> {
        if let Some(id) = target.strip_prefix("system:") {
            return (!id.is_empty() && !id.contains(':')).then(|| ProbeOwner::System { id: id.to_owned() });
        }
        let rest = target.strip_prefix("service:")?;
        let (service, version) = rest.split_once(':')?;
        (!service.is_empty() && !version.is_empty() && !version.contains(':'))
            .then(|| ProbeOwner::Version { service: service.to_owned(), version: version.to_owned() })
    }
}

/// One confirmed status change of a probe target, as replicated (issue 6). Carries what a
/// notice needs: the owning system and agency, the change, why, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEvent {
    /// 1, 2, ... per target: with the target id, identifies the event cluster-wide.
    pub seq: u64,
    /// When the prober confirmed the change.
    pub at: Timestamp,
    /// `None` for the first confirmed status.
    pub from: Option<ProbeHealth>,
    pub to: ProbeHealth,
    /// False while the target flaps (the change is recorded, nobody is told).
    pub notify: bool,
    /// The target flaps since this event (changes notify no more until it is stable).
    #[serde(default)]
    pub flapping: bool,
    /// The check's own sentence (HTTP status, error text, certificate expiry).
    #[serde(default)]
    pub reason: String,
    /// Days left on the server certificate (TLS checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// The node whose checks confirmed the change.
    #[serde(default)]
    pub node: String,
    /// The system the target belongs to (a service version's provider system).
    pub system: String,
    /// That system's agency when the change was applied.
    pub agency: String,
}

/// The replicated status of one probe target and its recent status changes.
///
/// Invariants: `status` is the `to` of the last event; events are ordered by `seq` and
/// bounded ([`ProbeStatus::MAX_EVENTS`] and [`ProbeStatus::KEEP_DAYS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub target: String,
    pub status: ProbeHealth,
    pub since: Timestamp,
    #[serde(default)]
    pub flapping: bool,
    #[serde(default)]
    pub events: Vec<ProbeEvent>,
}

impl ProbeStatus {
    pub const MAX_EVENTS: usize = 500;
    pub const KEEP_DAYS: i64 = 400;
}
