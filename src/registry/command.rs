//! Commands: the only way the registry changes.
//!
//! A command is proposed once (by the admin API, the importer or bootstrap), carried in an
//! [`Envelope`] that fixes its instant and actor, and applied by the pure [`super::apply`] on every
//! node. Invariants: this is a log format. Variants are matched by their `type` name, so names
//! and field names never change meaning; new fields get `#[serde(default)]`; `FORMAT` is bumped
//! when an old reader could misread a new entry. Commands never carry a plaintext secret.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::model::*;

/// Version of the command encoding written into every envelope.
pub const FORMAT: u16 = 1;

/// Who proposed a command. `user` is recorded in every history entry it causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: String,
    pub role: Role,
    #[serde(default)]
    pub agency: Option<String>,
}

impl Actor {
    /// The appliance itself (bootstrap, scheduled jobs).
    pub fn system() -> Self {
        Actor { user: "system".into(), role: Role::Operator, agency: None }
    }
}

/// A command with the context that makes applying it deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub format: u16,
    /// Instant assigned by the proposer; `apply` never reads a clock.
    pub at: Timestamp,
    pub actor: Actor,
    pub command: Command,
}

impl Envelope {
    pub fn new(at: Timestamp, actor: Actor, command: Command) -> Self {
        Envelope { format: FORMAT, at, actor, command }
    }
}

/// A new agency named in a restructuring command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgency {
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The provider agency agrees (requested -> provider_approved).
    ProviderApprove,
    /// The operator configures and grants (provider_approved -> active).
    Approve,
    /// Provider or operator refuses (requested|provider_approved -> rejected).
    Reject,
    /// Access withdrawn (provider_approved|active -> revoked).
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateAgency {
        code: String,
        name: String,
        #[serde(default)]
        parent: Option<String>,
        #[serde(default)]
        contacts: Vec<Contact>,
    },
    UpdateAgency {
        code: String,
        #[serde(default)]
        contacts: Option<Vec<Contact>>,
        #[serde(default)]
        parent: Option<String>,
    },
    /// New name, and optionally a new code (the old code becomes `recoded` with a successor link).
    RenameAgency {
        code: String,
        new_name: String,
        #[serde(default)]
        new_code: Option<String>,
        reason: String,
    },
    /// `systems` assigns every system of the split agency to one of the new agencies.
    SplitAgency {
        code: String,
        into: Vec<NewAgency>,
        #[serde(default)]
        systems: BTreeMap<String, String>,
        reason: String,
    },
    /// Merge `sources` into `into` (created if its code is new); their systems move to it.
    MergeAgencies {
        sources: Vec<String>,
        into: NewAgency,
        reason: String,
    },
    DissolveAgency {
        code: String,
        #[serde(default)]
        successor: Option<String>,
        reason: String,
    },
    SetAgencySuspended {
        code: String,
        suspended: bool,
        reason: String,
    },

    CreateSystem {
        id: String,
        agency: String,
        name: String,
        #[serde(default)]
        description: String,
        security: SecurityClearance,
        #[serde(default)]
        contacts: Vec<Contact>,
    },
    UpdateSystem {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        security: Option<SecurityClearance>,
        #[serde(default)]
        contacts: Option<Vec<Contact>>,
        #[serde(default)]
        disabled: Option<bool>,
    },

    CreateService {
        service: ServiceSpec,
    },
    UpdateService {
        context: String,
        spec: ServiceSpec,
    },
    AddVersion {
        context: String,
        version: String,
        #[serde(default)]
        upstream: Upstreams,
        #[serde(default)]
        max_body_bytes: Option<u64>,
    },
    UpdateVersion {
        context: String,
        version: String,
        #[serde(default)]
        upstream: Option<Upstreams>,
        #[serde(default)]
        max_body_bytes: Option<u64>,
        #[serde(default)]
        upstream_auth: Option<UpstreamAuth>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    PublishVersion {
        context: String,
        version: String,
    },
    /// Announce decommissioning at `retire_at` (≥ 60 days notice, ≥ 180 days after a newer
    /// version was published) unless an operator overrides with a reason.
    DeprecateVersion {
        context: String,
        version: String,
        retire_at: Timestamp,
        reason: String,
        #[serde(default)]
        override_reason: Option<String>,
    },
    RetireVersion {
        context: String,
        version: String,
        reason: String,
        #[serde(default)]
        override_reason: Option<String>,
    },

    RequestSubscription {
        id: String,
        consumer_system: String,
        service: String,
        version: String,
        environment: Environment,
        #[serde(default)]
        purpose: String,
        #[serde(default)]
        scope: String,
        #[serde(default)]
        contact: Option<Contact>,
        #[serde(default)]
        rate_limit: RateLimit,
    },
    DecideSubscription {
        id: String,
        decision: Decision,
        #[serde(default)]
        reason: String,
    },
    SetSubscriptionLimits {
        id: String,
        rate_limit: RateLimit,
    },

    IssueCredential {
        credential: Credential,
    },
    /// Replaces a credential's public keys (RFC 9421 and `private_key_jwt`).
    SetPublicKeys {
        id: String,
        public_keys: Vec<PublicKey>,
    },
    /// An OAuth access token revoked before its expiry (RFC 7009).
    RevokeAccessToken {
        jti: String,
        expires_at: Timestamp,
    },
    /// Forgets revocations and admin tokens that have expired anyway.
    PruneRevokedTokens,
    RevokeCredential {
        id: String,
        reason: String,
    },

    CreateCatalog {
        code: String,
        name: String,
        owner_agency: String,
        #[serde(default)]
        description: String,
    },
    /// A new immutable version; `append` keeps the previous version's entries and adds these.
    PublishCatalogVersion {
        code: String,
        #[serde(default)]
        fields: Option<Vec<CatalogField>>,
        entries: Vec<serde_json::Map<String, serde_json::Value>>,
        #[serde(default)]
        append: bool,
        #[serde(default)]
        note: String,
    },

    CreateUser {
        username: String,
        #[serde(default)]
        display_name: String,
        role: Role,
        #[serde(default)]
        agency: Option<String>,
        password_hash: String,
    },
    UpdateUser {
        username: String,
        #[serde(default)]
        display_name: Option<String>,
        #[serde(default)]
        disabled: Option<bool>,
    },
    SetPassword {
        username: String,
        password_hash: String,
    },
    RecordLoginFailure {
        username: String,
        threshold: u32,
        lock_seconds: u64,
    },
    RecordLoginSuccess {
        username: String,
    },
    UnlockUser {
        username: String,
    },
    IssueToken {
        token: ApiToken,
    },
    RevokeToken {
        id: String,
    },

    SetHolidays {
        holidays: Vec<NaiveDate>,
    },

    /// Declarative import: whole entities replaced after validation (SPEC §8).
    UpsertAgency {
        agency: Agency,
    },
    UpsertSystem {
        system: System,
    },
    UpsertService {
        service: Service,
    },
    UpsertSubscription {
        subscription: Subscription,
    },
    UpsertCredential {
        credential: Credential,
    },

    /// Replaces an agency's notice webhooks (secrets sealed by the proposer).
    SetAgencyWebhooks {
        code: String,
        webhooks: Vec<Webhook>,
    },
    /// A new maintenance window. `min_notice_secs` is the proposer's configured minimum notice
    /// (`[maintenance] min_notice`), carried so that `apply` checks it deterministically.
    AnnounceMaintenance {
        id: String,
        scope: MaintenanceScope,
        start: Timestamp,
        end: Timestamp,
        reason: Bilingual,
        #[serde(default)]
        emergency: bool,
        #[serde(default)]
        emergency_reason: String,
        min_notice_secs: u64,
    },
    /// Changes a window that has not ended; fields left out keep their value.
    ChangeMaintenance {
        id: String,
        #[serde(default)]
        scope: Option<MaintenanceScope>,
        #[serde(default)]
        start: Option<Timestamp>,
        #[serde(default)]
        end: Option<Timestamp>,
        #[serde(default)]
        reason: Option<Bilingual>,
        #[serde(default)]
        emergency: bool,
        #[serde(default)]
        emergency_reason: String,
        min_notice_secs: u64,
    },
    CancelMaintenance {
        id: String,
        reason: String,
    },
    /// The leader's scheduler: a window reached a stage (`reminder`, `start`, `end`); queues its
    /// notice once (a stage already reached is a no-op).
    MaintenanceStage {
        id: String,
        stage: String,
    },
    /// The leader's dispatcher reports what became of deliveries it attempted.
    RecordDeliveries {
        results: Vec<DeliveryResult>,
    },
    /// The leader's scheduler: a probe alert's hold-down ended; notify the settled status.
    FlushProbeAlert {
        target: String,
    },
    /// The leader's scheduler: forgets settled notices (nothing pending) created before `before`.
    PruneNotices {
        before: Timestamp,
    },
    /// Sets (or replaces) the health probe of a system or a service version (issue 6).
    SetProbe {
        owner: ProbeOwner,
        spec: ProbeSpec,
    },
    /// Removes a probe; its replicated status and events go with it.
    ClearProbe {
        owner: ProbeOwner,
    },
    /// A prober confirmed a new status of `target` (`system:{id}` or
    /// `service:{context}:{version}`). Applied only when `from` is the replicated status, so
    /// each change is recorded once cluster-wide however many nodes saw it; a change with
    /// `from == to` records the start or end of flapping only.
    ProbeStatusChanged {
        target: String,
        from: Option<ProbeHealth>,
        to: ProbeHealth,
        at: Timestamp,
        #[serde(default)]
        notify: bool,
        #[serde(default)]
        flapping: bool,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        cert_days_left: Option<i64>,
        #[serde(default)]
        node: String,
    },
    /// A prober saw `target`'s TLS certificate with `days_left` days to go and a threshold
    /// (30, 14, 7, 1 days) not notified yet for that certificate: queues the expiry notice.
    /// Refused when it was already notified (another node or an earlier check was first).
    ProbeCertChecked {
        target: String,
        days_left: i64,
        at: Timestamp,
        #[serde(default)]
        node: String,
    },

    /// A node's traffic on one local day (report, O6): replaces that node's rollup of that
    /// day unless the stored one is more recent. Rollups of days more than `keep_days` before
    /// the envelope's date are forgotten (the proposer's `[report] rollup_keep_days`).
    PublishTrafficRollup {
        rollup: super::traffic::TrafficRollup,
        keep_days: u32,
    },

    /// Opens an incident (O5). The pre-incident backup was proposed first (HP Art. 10.5c) and its
    /// outcome is carried here, so every node records the same backup id or the same failure.
    OpenIncident {
        id: String,
        title: Bilingual,
        #[serde(default)]
        description: String,
        severity: super::incident::Severity,
        #[serde(default)]
        services: Vec<String>,
        #[serde(default)]
        agencies: Vec<String>,
        detected_at: Timestamp,
        #[serde(default)]
        expected_fix_at: Option<Timestamp>,
        backup: super::incident::PreIncidentBackup,
    },
    /// A timeline entry and/or changes to an open incident; fields left out keep their value.
    /// A changed expected fix time is notified to those affected.
    UpdateIncident {
        id: String,
        changes: super::incident::IncidentChanges,
    },
    /// Closes an incident at the envelope's instant; those affected are notified.
    ResolveIncident {
        id: String,
        resolution: String,
        #[serde(default)]
        cause: Option<String>,
    },

    /// All or nothing: if one command fails, none of them took effect.
    Batch {
        label: String,
        commands: Vec<Command>,
    },
}

/// What became of one attempted delivery (`index` into the notice's deliveries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub notice: String,
    pub index: u32,
    pub outcome: DeliveryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Sent,
    /// Failed this time; try again at `next_at`.
    Retry {
        error: String,
        next_at: Timestamp,
    },
    /// Failed for good (attempts exhausted, or the channel is not configured).
    Failed {
        error: String,
    },
}

/// The Form 01 description of a service, as created or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceSpec {
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
}

impl Command {
    /// The command's name as written in the log (`type`).
    pub fn kind(&self) -> &'static str {
        use Command::*;
        match self {
            CreateAgency { .. } => "create_agency",
            UpdateAgency { .. } => "update_agency",
            RenameAgency { .. } => "rename_agency",
            SplitAgency { .. } => "split_agency",
            MergeAgencies { .. } => "merge_agencies",
            DissolveAgency { .. } => "dissolve_agency",
            SetAgencySuspended { .. } => "set_agency_suspended",
            CreateSystem { .. } => "create_system",
            UpdateSystem { .. } => "update_system",
            CreateService { .. } => "create_service",
            UpdateService { .. } => "update_service",
            AddVersion { .. } => "add_version",
            UpdateVersion { .. } => "update_version",
            PublishVersion { .. } => "publish_version",
            DeprecateVersion { .. } => "deprecate_version",
            RetireVersion { .. } => "retire_version",
            RequestSubscription { .. } => "request_subscription",
            DecideSubscription { .. } => "decide_subscription",
            SetSubscriptionLimits { .. } => "set_subscription_limits",
            IssueCredential { .. } => "issue_credential",
            SetPublicKeys { .. } => "set_public_keys",
            RevokeAccessToken { .. } => "revoke_access_token",
            PruneRevokedTokens => "prune_revoked_tokens",
            RevokeCredential { .. } => "revoke_credential",
            CreateCatalog { .. } => "create_catalog",
            PublishCatalogVersion { .. } => "publish_catalog_version",
            CreateUser { .. } => "create_user",
            UpdateUser { .. } => "update_user",
            SetPassword { .. } => "set_password",
            RecordLoginFailure { .. } => "record_login_failure",
            RecordLoginSuccess { .. } => "record_login_success",
            UnlockUser { .. } => "unlock_user",
            IssueToken { .. } => "issue_token",
            RevokeToken { .. } => "revoke_token",
            SetHolidays { .. } => "set_holidays",
            UpsertAgency { .. } => "upsert_agency",
            UpsertSystem { .. } => "upsert_system",
            UpsertService { .. } => "upsert_service",
            UpsertSubscription { .. } => "upsert_subscription",
            UpsertCredential { .. } => "upsert_credential",
            SetAgencyWebhooks { .. } => "set_agency_webhooks",
            AnnounceMaintenance { .. } => "announce_maintenance",
            ChangeMaintenance { .. } => "change_maintenance",
            CancelMaintenance { .. } => "cancel_maintenance",
            MaintenanceStage { .. } => "maintenance_stage",
            RecordDeliveries { .. } => "record_deliveries",
            FlushProbeAlert { .. } => "flush_probe_alert",
            PruneNotices { .. } => "prune_notices",
            SetProbe { .. } => "set_probe",
            ClearProbe { .. } => "clear_probe",
            ProbeStatusChanged { .. } => "probe_status_changed",
            ProbeCertChecked { .. } => "probe_cert_checked",
            PublishTrafficRollup { .. } => "publish_traffic_rollup",
            OpenIncident { .. } => "open_incident",
            UpdateIncident { .. } => "update_incident",
            ResolveIncident { .. } => "resolve_incident",
            Batch { .. } => "batch",
        }
    }

    /// The object a command is about, for the admin audit trail.
    pub fn target(&self) -> String {
        use Command::*;
        match self {
            CreateAgency { code, .. }
            | UpdateAgency { code, .. }
            | RenameAgency { code, .. }
            | SplitAgency { code, .. }
            | DissolveAgency { code, .. }
            | SetAgencySuspended { code, .. } => format!("agency/{code}"),
            MergeAgencies { into, .. } => format!("agency/{}", into.code),
            CreateSystem { id, .. } | UpdateSystem { id, .. } => format!("system/{id}"),
            CreateService { service } => format!("service/{}", service.context),
            UpdateService { context, .. } => format!("service/{context}"),
            AddVersion { context, version, .. }
            | UpdateVersion { context, version, .. }
            | PublishVersion { context, version }
            | DeprecateVersion { context, version, .. }
            | RetireVersion { context, version, .. } => format!("service/{context}/{version}"),
            RequestSubscription { id, .. } | DecideSubscription { id, .. } | SetSubscriptionLimits { id, .. } => {
                format!("subscription/{id}")
            }
            IssueCredential { credential } => format!("credential/{}", credential.id),
            RevokeCredential { id, .. } | SetPublicKeys { id, .. } => format!("credential/{id}"),
            RevokeAccessToken { jti, .. } => format!("access-token/{jti}"),
            PruneRevokedTokens => "access-token/*".into(),
            CreateCatalog { code, .. } | PublishCatalogVersion { code, .. } => {
                format!("catalog/{code}")
            }
            CreateUser { username, .. }
            | UpdateUser { username, .. }
            | SetPassword { username, .. }
            | RecordLoginFailure { username, .. }
            | RecordLoginSuccess { username }
            | UnlockUser { username } => format!("user/{username}"),
            IssueToken { token } => format!("token/{}", token.id),
            RevokeToken { id } => format!("token/{id}"),
            SetHolidays { .. } => "settings/holidays".into(),
            UpsertAgency { agency } => format!("agency/{}", agency.code),
            UpsertSystem { system } => format!("system/{}", system.id),
            UpsertService { service } => format!("service/{}", service.context),
            UpsertSubscription { subscription } => format!("subscription/{}", subscription.id),
            UpsertCredential { credential } => format!("credential/{}", credential.id),
            SetAgencyWebhooks { code, .. } => format!("agency/{code}/webhooks"),
            AnnounceMaintenance { id, .. } | ChangeMaintenance { id, .. } | CancelMaintenance { id, .. } | MaintenanceStage { id, .. } => {
                format!("maintenance/{id}")
            }
            RecordDeliveries { results } => format!("notices ({} deliveries)", results.len()),
            FlushProbeAlert { target } => format!("probe/{target}"),
            PruneNotices { .. } => "notices/*".into(),
            SetProbe { owner, .. } | ClearProbe { owner } => format!("probe/{}", owner.target_id()),
            ProbeStatusChanged { target, .. } | ProbeCertChecked { target, .. } => format!("probe/{target}"),
            PublishTrafficRollup { rollup, .. } => format!("traffic/{}", rollup.id),
            OpenIncident { id, .. } | UpdateIncident { id, .. } | ResolveIncident { id, .. } => format!("incident/{id}"),
            Batch { label, commands } => format!("batch/{label} ({} commands)", commands.len()),
        }
    }

    /// The reason given, if the command carries one.
    pub fn reason(&self) -> Option<&str> {
        use Command::*;
        match self {
            RenameAgency { reason, .. }
            | SplitAgency { reason, .. }
            | MergeAgencies { reason, .. }
            | DissolveAgency { reason, .. }
            | SetAgencySuspended { reason, .. }
            | RevokeCredential { reason, .. }
            | DecideSubscription { reason, .. }
            | CancelMaintenance { reason, .. } => Some(reason),
            DeprecateVersion { reason, override_reason, .. } | RetireVersion { reason, override_reason, .. } => {
                Some(override_reason.as_deref().unwrap_or(reason))
            }
            _ => None,
        }
    }

    /// Routine bookkeeping that is not an administrative change (kept out of the admin trail).
    pub fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            Command::RecordLoginSuccess { .. }
                | Command::PruneRevokedTokens
                | Command::RecordDeliveries { .. }
                | Command::MaintenanceStage { .. }
                | Command::FlushProbeAlert { .. }
                | Command::PruneNotices { .. }
                | Command::ProbeStatusChanged { .. }
                | Command::ProbeCertChecked { .. }
                | Command::PublishTrafficRollup { .. }
        )
    }
}
