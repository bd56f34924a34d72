//! The declarative registry document of SPEC §8 (`lgsp registry import|export`).
//!
//! [`plan`] validates a whole document against the current state and returns either every
//! error (each with its path, e.g. `system[2].agency`) or one `Batch` command that makes the
//! registry match it. Invariants: nothing is changed here; a document already applied plans to
//! no command at all (idempotent); entities absent from the document are left alone; secrets are
//! hashed or sealed through [`SecretTool`] and never exported.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::{Actor, Command};
use super::model::*;
use super::rules;
use super::state::State;

/// Hashing, sealing and id generation, provided by the caller so this module stays pure.
pub trait SecretTool {
    fn hash_imported(&mut self, secret: &str) -> SecretHash;
    fn verify(&self, hash: &SecretHash, secret: &str) -> bool;
    fn seal(&mut self, plain: &[u8]) -> Sealed;
    fn open(&self, sealed: &Sealed) -> Option<Vec<u8>>;
    fn new_id(&mut self, prefix: &str) -> String;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Where each parsed item stood in the file, and the names of items that did not parse,
    /// so errors keep their original paths and broken items cause no follow-on errors.
    #[serde(skip)]
    pub origin: Origin,
    #[serde(default)]
    pub agency: Vec<AgencyDoc>,
    #[serde(default)]
    pub system: Vec<SystemDoc>,
    #[serde(default)]
    pub service: Vec<ServiceDoc>,
    #[serde(default)]
    pub subscription: Vec<SubscriptionDoc>,
    #[serde(default)]
    pub credential: Vec<CredentialDoc>,
}

/// Original positions of parsed items, and names taken from items that failed to parse.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    agency: Vec<usize>,
    system: Vec<usize>,
    service: Vec<usize>,
    subscription: Vec<usize>,
    credential: Vec<usize>,
    broken_agencies: HashSet<String>,
    broken_systems: HashSet<String>,
    broken_versions: HashSet<(String, String)>,
}

/// The position of the `i`-th parsed item in the original file.
fn original(v: &[usize], i: usize) -> usize {
    v.get(i).copied().unwrap_or(i)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgencyDoc {
    pub code: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommitmentDoc {
    pub signed_on: chrono::NaiveDate,
    pub document: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SystemDoc {
    pub id: String,
    pub agency: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_commitment: Option<CommitmentDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
    /// The health probe agreed at registration (issue 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionDoc {
    pub version: String,
    pub state: VersionState,
    #[serde(default)]
    pub upstream: Upstreams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<Timestamp>,
    /// The health probe agreed at registration (issue 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    pub context: String,
    pub provider_system: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub version: Vec<VersionDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionDoc {
    pub consumer_system: String,
    pub service: String,
    pub version: String,
    pub environment: Environment,
    pub state: SubscriptionState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HmacDoc {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialDoc {
    pub system: String,
    pub environment: Environment,
    pub consumer_key: String,
    /// Required for a new credential; never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacDoc>,
}

/// Parses a document item by item, so that every malformed item is reported (with its path),
/// not just the first; the well-formed items are returned for validation all the same.
pub fn parse(value: Value) -> (Document, Vec<DocError>) {
    let mut errors = Vec::new();
    let mut doc = Document::default();
    let Value::Object(map) = value else {
        return (doc, vec![DocError { path: "$".into(), message: "the document must be a table/object".into() }]);
    };
    fn items<T: serde::de::DeserializeOwned>(
        key: &str,
        v: Option<&Value>,
        errors: &mut Vec<DocError>,
        pos: &mut Vec<usize>,
        broken: &mut Vec<Value>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        match v {
            None => {}
            Some(Value::Array(a)) => {
                for (i, item) in a.iter().enumerate() {
                    match serde_json::from_value::<T>(item.clone()) {
                        Ok(t) => {
                            out.push(t);
                            pos.push(i);
                        }
                        Err(e) => {
                            errors.push(DocError { path: format!("{key}[{i}]"), message: e.to_string() });
                            broken.push(item.clone());
                        }
                    }
                }
            }
            Some(_) => errors.push(DocError { path: key.into(), message: format!("must be an array of tables ([[{key}]])") }),
        }
        out
    }
    for k in map.keys() {
        if !matches!(k.as_str(), "agency" | "system" | "service" | "subscription" | "credential") {
            errors.push(DocError {
                path: k.clone(),
                message: "unknown section; expected agency, system, service, subscription or credential".into(),
            });
        }
    }
    let o = &mut doc.origin;
    let (mut ba, mut bs, mut bv, mut junk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    doc.agency = items("agency", map.get("agency"), &mut errors, &mut o.agency, &mut ba);
    doc.system = items("system", map.get("system"), &mut errors, &mut o.system, &mut bs);
    doc.service = items("service", map.get("service"), &mut errors, &mut o.service, &mut bv);
    doc.subscription = items("subscription", map.get("subscription"), &mut errors, &mut o.subscription, &mut junk);
    doc.credential = items("credential", map.get("credential"), &mut errors, &mut o.credential, &mut junk);
    let name = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    o.broken_agencies = ba.iter().filter_map(|v| name(v, "code")).collect();
    o.broken_systems = bs.iter().filter_map(|v| name(v, "id")).collect();
    for v in &bv {
        if let (Some(ctx), Some(Value::Array(vs))) = (name(v, "context"), v.get("version")) {
            for ver in vs.iter().filter_map(|x| name(x, "version")) {
                o.broken_versions.insert((ctx.clone(), ver));
            }
        }
    }
    (doc, errors)
}

struct Planner<'a> {
    s: &'a State,
    at: Timestamp,
    by: String,
    errors: Vec<DocError>,
    commands: Vec<Command>,
}

impl Planner<'_> {
    fn err(&mut self, path: String, message: impl Into<String>) {
        self.errors.push(DocError { path, message: message.into() });
    }
    fn check(&mut self, path: &str, r: Result<(), super::RegistryError>) {
        if let Err(e) = r {
            let (p, m) = match e {
                super::RegistryError::Invalid { field, reason } => (format!("{path}.{field}"), reason),
                other => (path.to_owned(), other.to_string()),
            };
            self.err(p, m);
        }
    }
}

/// Validates `doc` against `state` and plans the change. Empty `Ok` = already in sync.
pub fn plan(doc: &Document, state: &State, at: Timestamp, actor: &Actor, tool: &mut dyn SecretTool) -> Result<Vec<Command>, Vec<DocError>> {
    let mut p = Planner { s: state, at, by: actor.user.clone(), errors: vec![], commands: vec![] };

    // Agencies: field checks, duplicates, parents resolvable in the document or the registry.
    let doc_agencies: HashSet<&str> =
        doc.agency.iter().map(|a| a.code.as_str()).chain(doc.origin.broken_agencies.iter().map(String::as_str)).collect();
    let mut seen = HashSet::new();
    for (i, a) in doc.agency.iter().enumerate() {
        let path = format!("agency[{}]", original(&doc.origin.agency, i));
        p.check(&path, rules::agency_code("code", &a.code));
        p.check(&path, rules::text("name", &a.name, 300));
        if !seen.insert(a.code.as_str()) {
            p.err(format!("{path}.code"), format!("{} appears twice in the document", a.code));
        }
        if let Some(parent) = &a.parent {
            if !doc_agencies.contains(parent.as_str()) && !state.agencies.contains(parent) {
                p.err(format!("{path}.parent"), format!("agency {parent} is neither in the document nor in the registry"));
            }
        }
    }
    let agency_ok = |code: &str| doc_agencies.contains(code) || state.agencies.get(code).is_some_and(|a| a.status == AgencyStatus::Active);

    let doc_systems: HashSet<&str> =
        doc.system.iter().map(|s| s.id.as_str()).chain(doc.origin.broken_systems.iter().map(String::as_str)).collect();
    let mut seen = HashSet::new();
    for (i, s) in doc.system.iter().enumerate() {
        let path = format!("system[{}]", original(&doc.origin.system, i));
        p.check(&path, rules::slug("id", &s.id));
        p.check(&path, rules::text("name", &s.name, 300));
        if !seen.insert(s.id.as_str()) {
            p.err(format!("{path}.id"), format!("{} appears twice in the document", s.id));
        }
        if !agency_ok(&s.agency) {
            p.err(format!("{path}.agency"), format!("agency {} is neither in the document nor an active agency of the registry", s.agency));
        }
        if let Some(Err(e)) = s.probe.as_ref().map(ProbeSpec::validate) {
            p.err(format!("{path}.probe"), e);
        }
        match (&s.security_level, &s.security_commitment) {
            (Some(l), None) => p.check(&path, rules::security_level("security_level", *l)),
            (None, Some(c)) => p.check(&path, rules::text("security_commitment.document", &c.document, 500)),
            (Some(_), Some(_)) => p.err(path.clone(), "give either security_level or security_commitment, not both"),
            (None, None) => p.err(
                path.clone(),
                "a system needs security_level (1-5, NĐ 85/2016) or security_commitment (Form 03) before it may connect",
            ),
        }
    }
    let system_ok = |id: &str| doc_systems.contains(id) || state.systems.contains(id);

    let mut seen = HashSet::new();
    let mut doc_versions: HashSet<(String, String)> = doc.origin.broken_versions.clone();
    for (i, s) in doc.service.iter().enumerate() {
        let path = format!("service[{}]", original(&doc.origin.service, i));
        p.check(&path, rules::slug("context", &s.context));
        p.check(&path, rules::text("name", &s.name, 300));
        if !seen.insert(s.context.as_str()) {
            p.err(format!("{path}.context"), format!("{} appears twice in the document", s.context));
        }
        if !system_ok(&s.provider_system) {
            p.err(
                format!("{path}.provider_system"),
                format!("system {} is neither in the document nor in the registry", s.provider_system),
            );
        }
        if let Some(existing) = state.services.get(&s.context) {
            if existing.provider_system != s.provider_system {
                p.err(
                    format!("{path}.provider_system"),
                    format!(
                        "service {} is provided by {} in the registry; the provider cannot change",
                        s.context, existing.provider_system
                    ),
                );
            }
        }
        let mut vseen = HashSet::new();
        for (j, v) in s.version.iter().enumerate() {
            let vpath = format!("{path}.version[{j}]");
            p.check(&vpath, rules::version_label("version", &v.version));
            if !vseen.insert(v.version.as_str()) {
                p.err(format!("{vpath}.version"), format!("{} appears twice", v.version));
            }
            for (env, url) in [("production", &v.upstream.production), ("test", &v.upstream.test)] {
                if let Some(u) = url {
                    p.check(&vpath, rules::upstream_url(&format!("upstream.{env}"), u));
                }
            }
            if let Some(Err(e)) = v.probe.as_ref().map(ProbeSpec::validate) {
                p.err(format!("{vpath}.probe"), e);
            }
            if v.state != VersionState::Draft && v.upstream.production.is_none() && v.upstream.test.is_none() {
                p.err(format!("{vpath}.upstream"), "a published, deprecated or retired version needs at least one upstream");
            }
            doc_versions.insert((s.context.clone(), v.version.clone()));
        }
    }
    let version_ok = |svc: &str, v: &str| {
        doc_versions.contains(&(svc.to_owned(), v.to_owned())) || state.services.get(svc).is_some_and(|s| s.versions.contains_key(v))
    };

    let mut seen = HashSet::new();
    for (i, s) in doc.subscription.iter().enumerate() {
        let path = format!("subscription[{}]", original(&doc.origin.subscription, i));
        if !system_ok(&s.consumer_system) {
            p.err(
                format!("{path}.consumer_system"),
                format!("system {} is neither in the document nor in the registry", s.consumer_system),
            );
        }
        if !version_ok(&s.service, &s.version) {
            p.err(
                format!("{path}.version"),
                format!("service version {}/{} is neither in the document nor in the registry", s.service, s.version),
            );
        }
        let key = (s.consumer_system.as_str(), s.service.as_str(), s.version.as_str(), s.environment);
        if !seen.insert(key) {
            p.err(path.clone(), "the same consumer, service, version and environment appear twice");
        }
    }

    let mut seen = HashSet::new();
    for (i, c) in doc.credential.iter().enumerate() {
        let path = format!("credential[{}]", original(&doc.origin.credential, i));
        if !system_ok(&c.system) {
            p.err(format!("{path}.system"), format!("system {} is neither in the document nor in the registry", c.system));
        }
        if c.consumer_key.len() < 8 {
            p.err(format!("{path}.consumer_key"), "must be at least 8 characters");
        }
        if !seen.insert(c.consumer_key.as_str()) {
            p.err(format!("{path}.consumer_key"), "appears twice in the document");
        }
        let existing = state.credential_by_consumer_key(&c.consumer_key);
        match (existing, &c.consumer_secret) {
            (None, None) => p.err(format!("{path}.consumer_secret"), "required for a credential the registry does not have yet"),
            (_, Some(sec)) if sec.len() < 16 => p.err(format!("{path}.consumer_secret"), "must be at least 16 characters"),
            (Some(e), _) if e.system != c.system => p.err(format!("{path}.consumer_key"), "already belongs to another system"),
            _ => {}
        }
        if let Some(h) = &c.hmac {
            if h.key_id.trim().is_empty() {
                p.err(format!("{path}.hmac.key_id"), "must not be empty");
            }
            match &h.secret_base64 {
                Some(b) => {
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD.decode(b) {
                        Ok(bytes) if bytes.len() >= 16 => {}
                        Ok(_) => p.err(format!("{path}.hmac.secret_base64"), "an HMAC key must be at least 16 bytes"),
                        Err(e) => p.err(format!("{path}.hmac.secret_base64"), format!("is not base64: {e}")),
                    }
                }
                None if existing.and_then(|e| e.hmac.as_ref()).is_none_or(|eh| eh.key_id != h.key_id) => {
                    p.err(format!("{path}.hmac.secret_base64"), "required for an HMAC key the registry does not have yet")
                }
                None => {}
            }
        }
    }

    if !p.errors.is_empty() {
        return Err(p.errors);
    }

    // Plan: agencies without a parent in the document first, so parents exist when children land.
    let mut agencies: Vec<&AgencyDoc> = doc.agency.iter().collect();
    agencies.sort_by_key(|a| a.parent.as_ref().is_some_and(|x| doc_agencies.contains(x.as_str())));
    let mut remaining = agencies;
    let mut placed: HashSet<&str> = HashSet::new();
    while !remaining.is_empty() {
        let before = remaining.len();
        let mut next = Vec::new();
        for a in remaining {
            let ready = a.parent.as_ref().is_none_or(|x| !doc_agencies.contains(x.as_str()) || placed.contains(x.as_str()));
            if ready {
                placed.insert(&a.code);
                plan_agency(&mut p, a);
            } else {
                next.push(a);
            }
        }
        if next.len() == before {
            for a in &next {
                p.err(format!("agency {}", a.code), "parent links form a cycle");
            }
            return Err(p.errors);
        }
        remaining = next;
    }
    for s in &doc.system {
        plan_system(&mut p, s);
    }
    for s in &doc.service {
        plan_service(&mut p, s);
    }
    let current = current_subscriptions(state);
    for s in &doc.subscription {
        plan_subscription(&mut p, s, &current, tool);
    }
    for c in &doc.credential {
        plan_credential(&mut p, c, tool);
    }
    Ok(p.commands)
}

fn event(p: &Planner, kind: &str, detail: &str) -> AgencyEvent {
    AgencyEvent { at: p.at, by: p.by.clone(), kind: kind.into(), detail: detail.into() }
}

fn plan_agency(p: &mut Planner, a: &AgencyDoc) {
    let new = match p.s.agencies.get(&a.code) {
        Some(old) => {
            let mut n = old.clone();
            if n.name != a.name {
                n.history.push(event(p, "renamed", &format!("{} -> {} (import)", n.name, a.name)));
                n.name = a.name.clone();
            }
            n.parent = a.parent.clone();
            n.contacts = a.contacts.clone();
            if let Some(s) = a.suspended {
                if s != n.suspended {
                    n.history.push(event(p, if s { "suspended" } else { "reinstated" }, "import"));
                    n.suspended = s;
                }
            }
            if &n == old {
                return;
            }
            n
        }
        None => Agency {
            code: a.code.clone(),
            name: a.name.clone(),
            parent: a.parent.clone(),
            status: AgencyStatus::Active,
            suspended: a.suspended.unwrap_or(false),
            contacts: a.contacts.clone(),
            predecessors: vec![],
            successors: vec![],
            created_at: p.at,
            history: vec![event(p, "created", "import")],
            webhooks: vec![],
        },
    };
    p.commands.push(Command::UpsertAgency { agency: new });
}

fn plan_system(p: &mut Planner, s: &SystemDoc) {
    let security = match (&s.security_level, &s.security_commitment) {
        (Some(l), _) => SecurityClearance::Level { level: *l, decision: String::new() },
        (None, Some(c)) => SecurityClearance::Commitment { signed_on: c.signed_on, document: c.document.clone() },
        (None, None) => return, // refused during validation
    };
    let mut new = System {
        id: s.id.clone(),
        agency: s.agency.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        security,
        contacts: s.contacts.clone(),
        disabled: false,
        created_at: p.at,
        probe: s.probe.clone(),
    };
    if let Some(old) = p.s.systems.get(&s.id) {
        new.created_at = old.created_at;
        new.disabled = old.disabled;
        if let (SecurityClearance::Level { level: a, .. }, SecurityClearance::Level { level: b, decision }) = (&new.security, &old.security)
        {
            if a == b {
                new.security = SecurityClearance::Level { level: *b, decision: decision.clone() };
            }
        }
        if &new == old {
            return;
        }
    }
    p.commands.push(Command::UpsertSystem { system: new });
}

fn plan_service(p: &mut Planner, s: &ServiceDoc) {
    let old = p.s.services.get(&s.context);
    let mut new = match old {
        Some(o) => o.clone(),
        None => Service {
            context: s.context.clone(),
            provider_system: s.provider_system.clone(),
            name: String::new(),
            description: String::new(),
            purpose: String::new(),
            format: s.format,
            methods: vec![],
            request_description: String::new(),
            response_description: String::new(),
            sample_request: String::new(),
            sample_response: String::new(),
            created_at: p.at,
            versions: BTreeMap::new(),
        },
    };
    new.name = s.name.clone();
    new.description = s.description.clone();
    new.purpose = s.purpose.clone();
    new.format = s.format;
    new.methods = s.methods.clone();
    for v in &s.version {
        let entry = new.versions.entry(v.version.clone()).or_insert_with(|| ServiceVersion {
            version: v.version.clone(),
            state: VersionState::Draft,
            upstream: Upstreams::default(),
            max_body_bytes: None,
            upstream_auth: UpstreamAuth::None,
            timeout_ms: None,
            created_at: p.at,
            published_at: None,
            deprecated_at: None,
            retire_at: None,
            retired_at: None,
            history: vec![],
            probe: None,
        });
        entry.upstream = v.upstream.clone();
        entry.probe = v.probe.clone();
        entry.max_body_bytes = v.max_body_bytes;
        if v.retire_at.is_some() {
            entry.retire_at = v.retire_at;
        }
        if entry.state != v.state {
            entry.history.push(LifecycleEvent {
                at: p.at,
                by: p.by.clone(),
                from: entry.state,
                to: v.state,
                reason: "import".into(),
                override_reason: None,
            });
            let at = p.at;
            match v.state {
                VersionState::Draft => {}
                VersionState::Published => {
                    entry.published_at.get_or_insert(at);
                }
                VersionState::Deprecated => {
                    entry.published_at.get_or_insert(at);
                    entry.deprecated_at.get_or_insert(at);
                }
                VersionState::Retired => {
                    entry.retired_at.get_or_insert(at);
                }
            }
            entry.state = v.state;
        }
    }
    if old == Some(&new) {
        return;
    }
    p.commands.push(Command::UpsertService { service: new });
}

type SubKey<'a> = (&'a str, &'a str, &'a str, Environment);

/// For each (consumer, service, version, environment): the subscription a document row speaks
/// of, the open one if any, else the latest.
fn current_subscriptions(state: &State) -> HashMap<SubKey<'_>, &Subscription> {
    let mut best: HashMap<SubKey<'_>, &Subscription> = HashMap::new();
    for x in state.subscriptions.values() {
        let key = (x.consumer_system.as_str(), x.service.as_str(), x.version.as_str(), x.environment);
        let better = best.get(&key).is_none_or(|cur| (x.state.is_open(), x.requested_at) > (cur.state.is_open(), cur.requested_at));
        if better {
            best.insert(key, x);
        }
    }
    best
}

fn plan_subscription(p: &mut Planner, s: &SubscriptionDoc, current: &HashMap<SubKey<'_>, &Subscription>, tool: &mut dyn SecretTool) {
    let matching = current.get(&(s.consumer_system.as_str(), s.service.as_str(), s.version.as_str(), s.environment)).copied();
    let mut new = match matching {
        Some(m) => m.clone(),
        None => Subscription {
            id: tool.new_id("sub"),
            consumer_system: s.consumer_system.clone(),
            service: s.service.clone(),
            version: s.version.clone(),
            environment: s.environment,
            state: s.state,
            purpose: s.purpose.clone(),
            scope: s.scope.clone(),
            contact: None,
            rate_limit: s.rate_limit.unwrap_or_default(),
            requested_at: p.at,
            requested_by: p.by.clone(),
            decision_due: rules::add_working_days(p.at, rules::DECISION_WORKING_DAYS, &p.s.settings.holidays),
            history: vec![SubscriptionEvent { at: p.at, by: p.by.clone(), to: s.state, reason: "import".into() }],
        },
    };
    new.purpose = s.purpose.clone();
    new.scope = s.scope.clone();
    if let Some(r) = s.rate_limit {
        new.rate_limit = r;
    }
    if new.state != s.state {
        new.history.push(SubscriptionEvent { at: p.at, by: p.by.clone(), to: s.state, reason: "import".into() });
        new.state = s.state;
    }
    if matching == Some(&new) {
        return;
    }
    p.commands.push(Command::UpsertSubscription { subscription: new });
}

fn plan_credential(p: &mut Planner, c: &CredentialDoc, tool: &mut dyn SecretTool) {
    use base64::Engine;
    let old = p.s.credential_by_consumer_key(&c.consumer_key);
    let secret = match (&c.consumer_secret, old) {
        (Some(sec), Some(o)) if tool.verify(&o.secret, sec) => o.secret.clone(),
        (Some(sec), _) => tool.hash_imported(sec),
        (None, Some(o)) => o.secret.clone(),
        (None, None) => return, // refused during validation
    };
    let hmac = match (&c.hmac, old.and_then(|o| o.hmac.as_ref())) {
        (None, _) => None,
        (Some(h), existing) => {
            let wanted = h.secret_base64.as_ref().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            match (wanted, existing) {
                (Some(w), Some(e)) if e.key_id == h.key_id && tool.open(&e.secret).as_deref() == Some(&w[..]) => Some(e.clone()),
                (Some(w), _) => Some(HmacKey { key_id: h.key_id.clone(), secret: tool.seal(&w) }),
                (None, Some(e)) => Some(e.clone()),
                (None, None) => None,
            }
        }
    };
    let new = Credential {
        id: old.map(|o| o.id.clone()).unwrap_or_else(|| tool.new_id("cred")),
        system: c.system.clone(),
        environment: c.environment,
        consumer_key: c.consumer_key.clone(),
        secret,
        hmac,
        public_keys: old.map(|o| o.public_keys.clone()).unwrap_or_default(),
        created_at: old.map_or(p.at, |o| o.created_at),
        created_by: old.map_or(p.by.clone(), |o| o.created_by.clone()),
        revoked_at: None,
    };
    if old == Some(&new) {
        return;
    }
    p.commands.push(Command::UpsertCredential { credential: new });
}

/// The registry as a document (secrets omitted; retired agencies omitted, their successors stay).
pub fn export(state: &State) -> Document {
    let mut doc = Document::default();
    for a in state.agencies.values().filter(|a| a.status == AgencyStatus::Active) {
        doc.agency.push(AgencyDoc {
            code: a.code.clone(),
            name: a.name.clone(),
            parent: a.parent.clone(),
            contacts: a.contacts.clone(),
            suspended: a.suspended.then_some(true),
        });
    }
    for s in state.systems.values() {
        let (level, commitment) = match &s.security {
            SecurityClearance::Level { level, .. } => (Some(*level), None),
            SecurityClearance::Commitment { signed_on, document } => {
                (None, Some(CommitmentDoc { signed_on: *signed_on, document: document.clone() }))
            }
        };
        doc.system.push(SystemDoc {
            id: s.id.clone(),
            agency: s.agency.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            security_level: level,
            security_commitment: commitment,
            contacts: s.contacts.clone(),
            probe: s.probe.clone(),
        });
    }
    for s in state.services.values() {
        let mut versions: Vec<&ServiceVersion> = s.versions.values().collect();
        versions.sort_by(|a, b| version_order(&a.version, &b.version));
        doc.service.push(ServiceDoc {
            context: s.context.clone(),
            provider_system: s.provider_system.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            purpose: s.purpose.clone(),
            format: s.format,
            methods: s.methods.clone(),
            version: versions
                .into_iter()
                .map(|v| VersionDoc {
                    version: v.version.clone(),
                    state: v.state,
                    upstream: v.upstream.clone(),
                    max_body_bytes: v.max_body_bytes,
                    retire_at: v.retire_at,
                    probe: v.probe.clone(),
                })
                .collect(),
        });
    }
    // One row per (consumer, service, version, environment): the open subscription, else the latest.
    // Sorted by key so that equal registries export equal documents.
    let subs: BTreeMap<SubKey<'_>, &Subscription> = current_subscriptions(state).into_iter().collect();
    for s in subs.into_values() {
        doc.subscription.push(SubscriptionDoc {
            consumer_system: s.consumer_system.clone(),
            service: s.service.clone(),
            version: s.version.clone(),
            environment: s.environment,
            state: s.state,
            purpose: s.purpose.clone(),
            scope: s.scope.clone(),
            rate_limit: (s.rate_limit != RateLimit::default()).then_some(s.rate_limit),
        });
    }
    // Ordered by what the document shows, not by internal ids, so equal registries export equally.
    let mut creds: Vec<&Credential> = state.credentials.values().filter(|c| c.revoked_at.is_none()).collect();
    creds.sort_by(|a, b| (&a.system, a.environment, &a.consumer_key).cmp(&(&b.system, b.environment, &b.consumer_key)));
    for c in creds {
        doc.credential.push(CredentialDoc {
            system: c.system.clone(),
            environment: c.environment,
            consumer_key: c.consumer_key.clone(),
            consumer_secret: None,
            hmac: c.hmac.as_ref().map(|h| HmacDoc { key_id: h.key_id.clone(), secret_base64: None }),
        });
    }
    doc
}
