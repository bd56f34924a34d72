//! The gateway's read-only view of the registry: everything a request needs, indexed for
//! O(1) lookups, with public keys parsed and upstream secrets opened once per rebuild.
//!
//! Invariants: built from a registry `State` by `app` after each applied command and handed
//! over through a watch channel, so the gateway never touches storage or locks and keeps
//! serving the last view if the registry stops changing (quorum lost). Only active
//! subscriptions, live credentials and servable versions appear here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderValue, Method};

use super::httpsig::ParsedKey;
use crate::registry::{
    AgencyStatus, Catalog, Entity, Environment, MaintenanceWindow, PublicKey, RateLimit, SecretHash, SigAlg, State, SubscriptionState,
    UpstreamAuth, VersionState,
};
use crate::secrets::SecretsKey;

/// A live consumer credential.
#[derive(Debug)]
pub struct CredView {
    pub id: String,
    pub system: String,
    pub agency: String,
    pub environment: Environment,
    pub consumer_key: String,
    pub secret: SecretHash,
    pub public_keys: Vec<PublicKey>,
}

impl CredView {
    #[cfg(test)]
    pub fn test(id: &str, system: &str) -> CredView {
        CredView {
            id: id.into(),
            system: system.into(),
            agency: "000.00.00.H31".into(),
            environment: Environment::Production,
            consumer_key: format!("key-{id}"),
            secret: SecretHash::Sha256 { salt: String::new(), hash: String::new() },
            public_keys: vec![],
        }
    }
}

/// A signature key (HMAC or public) with its owner.
pub struct SigKey {
    pub cred: Arc<CredView>,
    pub alg: SigAlg,
    pub key: ParsedKey,
}

/// How the appliance authenticates to the provider, secrets opened.
#[derive(Debug, Clone)]
pub enum UpstreamAuthMaterial {
    None,
    /// A ready `Authorization` header value (Basic or Bearer).
    Header(HeaderValue),
    MutualTls {
        cert_pem: String,
        key_pem: String,
    },
    Signature,
}

/// A provider endpoint: scheme, authority and path prefix of the upstream URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash ("" for the root).
    pub prefix: String,
}

impl Upstream {
    fn parse(url: &str) -> Option<Upstream> {
        let uri: http::Uri = url.parse().ok()?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Some(Upstream { scheme: uri.scheme()?.clone(), authority: uri.authority()?.clone(), prefix })
    }
}

#[derive(Debug)]
pub struct RouteVersion {
    pub version: String,
    pub state: VersionState,
    pub production: Option<Upstream>,
    pub test: Option<Upstream>,
    pub max_body_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub auth: UpstreamAuthMaterial,
}

impl RouteVersion {
    pub fn upstream(&self, env: Environment) -> Option<&Upstream> {
        match env {
            Environment::Production => self.production.as_ref(),
            Environment::Test => self.test.as_ref(),
        }
    }
}

#[derive(Debug)]
pub struct RouteService {
    pub context: String,
    pub provider_system: String,
    pub provider_agency: String,
    /// The provider's agency is suspended or no longer active.
    pub provider_unavailable: bool,
    /// Methods the provider allows; empty = all.
    pub methods: Vec<Method>,
    pub default_version: Option<Arc<RouteVersion>>,
    pub versions: HashMap<String, Arc<RouteVersion>>,
}

#[derive(Debug, Clone)]
pub struct SubView {
    pub id: String,
    pub rate_limit: RateLimit,
}

/// Whether a consumer system may call at all.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    pub agency: String,
    /// System disabled, or its agency suspended or no longer active.
    pub refused: bool,
}

#[derive(Default)]
pub struct View {
    /// Registry index this view reflects.
    pub applied: u64,
    services: HashMap<String, Arc<RouteService>>,
    by_consumer_key: HashMap<String, Arc<CredView>>,
    by_id: HashMap<String, Arc<CredView>>,
    sig_keys: HashMap<String, Arc<SigKey>>,
    /// "system\0context\0version\0env" -> active subscription
    subs: HashMap<String, SubView>,
    revoked: HashSet<String>,
    consumers: HashMap<String, ConsumerStatus>,
    catalogs: HashMap<String, Arc<Catalog>>,
    /// Maintenance windows, newest start first (published in the feed).
    maintenance: Vec<Arc<MaintenanceWindow>>,
    /// The windows not cancelled and not ended when the view was built: the only ones a
    /// request can fall in (checked against its own clock), so the proxy path scans a handful
    /// however many windows the registry remembers.
    not_over: Vec<Arc<MaintenanceWindow>>,
}

fn sub_key(system: &str, context: &str, version: &str, env: Environment) -> String {
    let mut k = String::with_capacity(system.len() + context.len() + version.len() + 14);
    k.push_str(system);
    k.push('\0');
    k.push_str(context);
    k.push('\0');
    k.push_str(version);
    k.push('\0');
    k.push_str(env.as_str());
    k
}

impl View {
    /// The registry tables [`View::build`] reads (by [`crate::registry::Entity::TABLE`] name).
    /// Entries that change none of them (probe status, the notice outbox, logins) leave the
    /// view current, so it is not rebuilt for them. Keep in step with `build`.
    pub const READS: [&'static str; 8] = [
        <crate::registry::Agency as Entity>::TABLE,
        <crate::registry::System as Entity>::TABLE,
        <crate::registry::Service as Entity>::TABLE,
        <crate::registry::Subscription as Entity>::TABLE,
        <crate::registry::Credential as Entity>::TABLE,
        <crate::registry::RevokedToken as Entity>::TABLE,
        <Catalog as Entity>::TABLE,
        <MaintenanceWindow as Entity>::TABLE,
    ];

    /// Builds the view. Keys that fail to parse and secrets that fail to open are left out
    /// and logged (the affected callers or versions are refused, nothing else).
    pub fn build(state: &State, key: &SecretsKey, applied: u64) -> View {
        let mut v = View { applied, ..View::default() };
        let agency_ok = |code: &str| state.agencies.get(code).is_some_and(|a| a.status == AgencyStatus::Active && !a.suspended);
        for s in state.systems.values() {
            v.consumers.insert(s.id.clone(), ConsumerStatus { agency: s.agency.clone(), refused: s.disabled || !agency_ok(&s.agency) });
        }
        for svc in state.services.values() {
            let provider_agency = state.agency_of_system(&svc.provider_system).unwrap_or_default().to_owned();
            let mut versions = HashMap::new();
            for ver in svc.versions.values() {
                if ver.state == VersionState::Draft {
                    continue;
                }
                let auth = match &ver.upstream_auth {
                    UpstreamAuth::None => UpstreamAuthMaterial::None,
                    UpstreamAuth::Basic { username, password } => match key.open(password).and_then(|p| String::from_utf8(p).ok()) {
                        Some(p) => {
                            use base64::Engine;
                            let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{p}"));
                            match HeaderValue::from_str(&format!("Basic {token}")) {
                                Ok(mut h) => {
                                    h.set_sensitive(true);
                                    UpstreamAuthMaterial::Header(h)
                                }
                                Err(_) => continue,
                            }
                        }
                        None => {
                            tracing::error!(service = %svc.context, version = %ver.version, "cannot open the upstream password; is secrets.key the cluster's?");
                            continue;
                        }
                    },
                    UpstreamAuth::Bearer { token } => match key
                        .open(token)
                        .and_then(|t| String::from_utf8(t).ok())
                        .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
                    {
                        Some(mut h) => {
                            h.set_sensitive(true);
                            UpstreamAuthMaterial::Header(h)
                        }
                        None => {
                            tracing::error!(service = %svc.context, version = %ver.version, "cannot open the upstream bearer token");
                            continue;
                        }
                    },
                    UpstreamAuth::MutualTls { cert_pem, key_pem } => match key.open(key_pem).and_then(|k| String::from_utf8(k).ok()) {
                        Some(k) => UpstreamAuthMaterial::MutualTls { cert_pem: cert_pem.clone(), key_pem: k },
                        None => {
                            tracing::error!(service = %svc.context, version = %ver.version, "cannot open the upstream client key");
                            continue;
                        }
                    },
                    UpstreamAuth::Signature => UpstreamAuthMaterial::Signature,
                };
                let rv = RouteVersion {
                    version: ver.version.clone(),
                    state: ver.state,
                    production: ver.upstream.production.as_deref().and_then(Upstream::parse),
                    test: ver.upstream.test.as_deref().and_then(Upstream::parse),
                    max_body_bytes: ver.max_body_bytes,
                    timeout_ms: ver.timeout_ms,
                    auth,
                };
                versions.insert(ver.version.clone(), Arc::new(rv));
            }
            let default_version = svc.default_version().and_then(|d| versions.get(&d.version).cloned());
            let methods = svc.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
            v.services.insert(
                svc.context.clone(),
                Arc::new(RouteService {
                    context: svc.context.clone(),
                    provider_system: svc.provider_system.clone(),
                    provider_unavailable: !agency_ok(&provider_agency),
                    provider_agency,
                    methods,
                    default_version,
                    versions,
                }),
            );
        }
        for c in state.credentials.values().filter(|c| c.revoked_at.is_none()) {
            let agency = state.agency_of_system(&c.system).unwrap_or_default().to_owned();
            let cv = Arc::new(CredView {
                id: c.id.clone(),
                system: c.system.clone(),
                agency,
                environment: c.environment,
                consumer_key: c.consumer_key.clone(),
                secret: c.secret.clone(),
                public_keys: c.public_keys.clone(),
            });
            if let Some(h) = &c.hmac {
                match key.open(&h.secret) {
                    Some(secret) => {
                        v.sig_keys.insert(
                            h.key_id.clone(),
                            Arc::new(SigKey { cred: cv.clone(), alg: SigAlg::HmacSha256, key: ParsedKey::hmac(&secret) }),
                        );
                    }
                    None => {
                        tracing::error!(credential = %c.id, key_id = %h.key_id, "cannot open the HMAC key; is secrets.key the cluster's?")
                    }
                }
            }
            for pk in &c.public_keys {
                match ParsedKey::from_pem(pk.alg, &pk.pem) {
                    Ok(parsed) => {
                        v.sig_keys.insert(pk.key_id.clone(), Arc::new(SigKey { cred: cv.clone(), alg: pk.alg, key: parsed }));
                    }
                    Err(e) => tracing::warn!(credential = %c.id, key_id = %pk.key_id, error = %e, "public key ignored"),
                }
            }
            v.by_consumer_key.insert(c.consumer_key.clone(), cv.clone());
            v.by_id.insert(c.id.clone(), cv);
        }
        for s in state.subscriptions.values().filter(|s| s.state == SubscriptionState::Active) {
            v.subs.insert(
                sub_key(&s.consumer_system, &s.service, &s.version, s.environment),
                SubView { id: s.id.clone(), rate_limit: s.rate_limit },
            );
        }
        v.revoked = state.revoked_tokens.values().map(|t| t.jti.clone()).collect();
        for c in state.catalogs.values() {
            v.catalogs.insert(c.code.clone(), Arc::new(c.clone()));
        }
        v.maintenance = state.maintenance.values().map(|w| Arc::new(w.clone())).collect();
        v.maintenance.sort_by(|a, b| b.start.cmp(&a.start).then_with(|| a.id.cmp(&b.id)));
        let built = chrono::Utc::now();
        v.not_over = v.maintenance.iter().filter(|w| w.cancelled_at.is_none() && w.end > built).cloned().collect();
        v
    }

    /// The window in force for this service at `now` (the one ending last if several).
    pub fn maintenance_for(&self, context: &str, now: chrono::DateTime<chrono::Utc>) -> Option<&Arc<MaintenanceWindow>> {
        self.not_over.iter().filter(|w| w.active_at(now) && w.scope.covers_service(context)).max_by_key(|w| w.end)
    }

    /// Every window, newest start first.
    pub fn maintenance_windows(&self) -> &[Arc<MaintenanceWindow>] {
        &self.maintenance
    }

    pub fn service(&self, context: &str) -> Option<&Arc<RouteService>> {
        self.services.get(context)
    }
    pub fn credential_by_consumer_key(&self, key: &str) -> Option<Arc<CredView>> {
        self.by_consumer_key.get(key).cloned()
    }
    pub fn credential(&self, id: &str) -> Option<&Arc<CredView>> {
        self.by_id.get(id)
    }
    pub fn sig_key(&self, key_id: &str) -> Option<&Arc<SigKey>> {
        self.sig_keys.get(key_id)
    }
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }
    pub fn consumer(&self, system: &str) -> Option<&ConsumerStatus> {
        self.consumers.get(system)
    }
    pub fn subscription(&self, system: &str, context: &str, version: &str, env: Environment) -> Option<&SubView> {
        self.subs.get(&sub_key(system, context, version, env))
    }
    pub fn catalog(&self, code: &str) -> Option<&Arc<Catalog>> {
        self.catalogs.get(code)
    }
}
