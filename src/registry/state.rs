//! The registry's in-memory state and its change journal.
//!
//! Every mutation goes through [`Table::put`] / [`Table::remove`], which record the previous
//! value. That journal lets `apply` roll a failed command back completely (a command is all or
//! nothing) and tells the store exactly which keys to persist after a successful one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{de::DeserializeOwned, Serialize};

use super::incident::Incident;
use super::model::*;
use super::traffic::TrafficRollup;

/// An entity kept in its own table, keyed by a string.
pub trait Entity: Clone + Serialize + DeserializeOwned {
    /// Name of the persistent table; part of the storage format.
    const TABLE: &'static str;
    fn key(&self) -> &str;
}

macro_rules! entity {
    ($t:ty, $table:literal, $field:ident) => {
        impl Entity for $t {
            const TABLE: &'static str = $table;
            fn key(&self) -> &str {
                &self.$field
            }
        }
    };
}
entity!(Agency, "agencies", code);
entity!(System, "systems", id);
entity!(Service, "services", context);
entity!(Subscription, "subscriptions", id);
entity!(Credential, "credentials", id);
entity!(Catalog, "catalogs", code);
entity!(User, "users", username);
entity!(ApiToken, "tokens", id);
entity!(RevokedToken, "revoked_tokens", jti);
entity!(MaintenanceWindow, "maintenance", id);
entity!(Notice, "notices", id);
entity!(ProbeAlert, "probe_alerts", target);
entity!(ProbeStatus, "probe_status", target);
entity!(TrafficRollup, "traffic_rollups", id);
entity!(Incident, "incidents", id);

/// A keyed collection that journals every change.
#[derive(Debug, Clone)]
pub struct Table<V> {
    rows: BTreeMap<String, V>,
    undo: Vec<(String, Option<V>)>,
    touched: BTreeSet<String>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table { rows: BTreeMap::new(), undo: Vec::new(), touched: BTreeSet::new() }
    }
}

impl<V: Entity> Table<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.rows.get(key)
    }
    pub fn contains(&self, key: &str) -> bool {
        self.rows.contains_key(key)
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.rows.values()
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// Rows whose keys are in `[from, to)`, in key order.
    pub fn range<'a>(&'a self, from: &str, to: &str) -> impl Iterator<Item = &'a V> {
        let bounds = (std::ops::Bound::Included(from.to_owned()), std::ops::Bound::Excluded(to.to_owned()));
        self.rows.range::<String, _>(bounds).map(|(_, v)| v)
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Inserts or replaces, journaling the old value.
    pub fn put(&mut self, value: V) {
        let key = value.key().to_owned();
        let old = self.rows.insert(key.clone(), value);
        self.touched.insert(key.clone());
        self.undo.push((key, old));
    }
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let old = self.rows.remove(key);
        if old.is_some() {
            self.touched.insert(key.to_owned());
            self.undo.push((key.to_owned(), old.clone()));
        }
        old
    }
    /// Loads a row from storage without journaling it.
    pub fn load(&mut self, value: V) {
        self.rows.insert(value.key().to_owned(), value);
    }
    fn mark(&self) -> usize {
        self.undo.len()
    }
    fn rollback(&mut self, mark: usize) {
        while self.undo.len() > mark {
            if let Some((key, old)) = self.undo.pop() {
                match old {
                    Some(v) => {
                        self.rows.insert(key, v);
                    }
                    None => {
                        self.rows.remove(&key);
                    }
                }
            }
        }
    }
    /// Forgets how to undo the changes so far; which keys changed is kept for the next drain.
    fn forget_undo(&mut self) {
        self.undo.clear();
    }
    /// True when a change since the last [`Table::forget_undo`] (or drain) was not rolled back.
    fn undoable(&self) -> bool {
        !self.undo.is_empty()
    }
    /// Keys changed since the last drain, with their current value (`None` = deleted).
    pub fn drain_changes(&mut self) -> Vec<(String, Option<&V>)> {
        self.undo.clear();
        let keys = std::mem::take(&mut self.touched);
        keys.into_iter()
            .map(|k| {
                let v = self.rows.get(&k);
                (k, v)
            })
            .collect()
    }
}

/// The whole registry. Indexes are derived and rebuilt on load and after a rollback.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub agencies: Table<Agency>,
    pub systems: Table<System>,
    pub services: Table<Service>,
    pub subscriptions: Table<Subscription>,
    pub credentials: Table<Credential>,
    pub catalogs: Table<Catalog>,
    pub users: Table<User>,
    pub tokens: Table<ApiToken>,
    pub revoked_tokens: Table<RevokedToken>,
    pub maintenance: Table<MaintenanceWindow>,
    /// The replicated outbox (see `notice`).
    pub notices: Table<Notice>,
    pub probe_alerts: Table<ProbeAlert>,
    pub probe_status: Table<ProbeStatus>,
    /// Per node and local day, what its gateway carried (`traffic`; read by the report).
    pub traffic_rollups: Table<TrafficRollup>,
    /// The incident log (O5; `incident`).
    pub incidents: Table<Incident>,
    pub settings: Settings,
    settings_undo: Vec<Settings>,
    settings_touched: bool,
    /// consumer_key -> credential id
    by_consumer_key: HashMap<String, String>,
    /// signature key id (HMAC or public key) -> credential id
    by_key_id: HashMap<String, String>,
    /// (consumer system, service, version, environment) -> the open subscription's id
    open_subs: HashMap<(String, String, String, Environment), String>,
}

/// The name the settings go by where tables are named (they are one value, not a table).
pub const SETTINGS_TABLE: &str = "settings";

/// A point to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint([usize; 16]);

/// What changed in one successful apply, for the store to persist.
#[derive(Debug, Default)]
pub struct Changes {
    /// (table, key, serialised value or None for a deletion)
    pub rows: Vec<(&'static str, String, Option<Vec<u8>>)>,
    pub settings: Option<Vec<u8>>,
}

fn encode<V: Serialize>(v: &V) -> Vec<u8> {
    // Serialising our own plain-data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

impl State {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint([
            self.agencies.mark(),
            self.systems.mark(),
            self.services.mark(),
            self.subscriptions.mark(),
            self.credentials.mark(),
            self.catalogs.mark(),
            self.users.mark(),
            self.tokens.mark(),
            self.settings_undo.len(),
            self.revoked_tokens.mark(),
            self.maintenance.mark(),
            self.notices.mark(),
            self.probe_alerts.mark(),
            self.probe_status.mark(),
            self.traffic_rollups.mark(),
            self.incidents.mark(),
        ])
    }

    pub fn rollback(&mut self, cp: Checkpoint) {
        let m = cp.0;
        self.agencies.rollback(m[0]);
        self.systems.rollback(m[1]);
        self.services.rollback(m[2]);
        self.subscriptions.rollback(m[3]);
        self.credentials.rollback(m[4]);
        self.catalogs.rollback(m[5]);
        self.users.rollback(m[6]);
        self.tokens.rollback(m[7]);
        self.revoked_tokens.rollback(m[9]);
        self.maintenance.rollback(m[10]);
        self.notices.rollback(m[11]);
        self.probe_alerts.rollback(m[12]);
        self.probe_status.rollback(m[13]);
        self.traffic_rollups.rollback(m[14]);
        self.incidents.rollback(m[15]);
        while self.settings_undo.len() > m[8] {
            if let Some(s) = self.settings_undo.pop() {
                self.settings = s;
            }
        }
        self.rebuild_indexes();
    }

    pub fn set_settings(&mut self, settings: Settings) {
        let old = std::mem::replace(&mut self.settings, settings);
        self.settings_undo.push(old);
        self.settings_touched = true;
    }

    /// Takes the journal: every changed row serialised, ready to persist.
    pub fn drain_changes(&mut self) -> Changes {
        let mut rows = Vec::new();
        fn take<V: Entity>(t: &mut Table<V>, out: &mut Vec<(&'static str, String, Option<Vec<u8>>)>) {
            for (k, v) in t.drain_changes() {
                out.push((V::TABLE, k, v.map(encode)));
            }
        }
        take(&mut self.agencies, &mut rows);
        take(&mut self.systems, &mut rows);
        take(&mut self.services, &mut rows);
        take(&mut self.subscriptions, &mut rows);
        take(&mut self.credentials, &mut rows);
        take(&mut self.catalogs, &mut rows);
        take(&mut self.users, &mut rows);
        take(&mut self.tokens, &mut rows);
        take(&mut self.revoked_tokens, &mut rows);
        take(&mut self.maintenance, &mut rows);
        take(&mut self.notices, &mut rows);
        take(&mut self.probe_alerts, &mut rows);
        take(&mut self.probe_status, &mut rows);
        take(&mut self.traffic_rollups, &mut rows);
        take(&mut self.incidents, &mut rows);
        self.settings_undo.clear();
        let settings = std::mem::take(&mut self.settings_touched).then(|| encode(&self.settings));
        Changes { rows, settings }
    }

    /// Ends a batch of changes that will not be rolled back: forgets how to undo them and
    /// returns the tables (and [`SETTINGS_TABLE`] for the settings) they changed. Which rows
    /// changed is kept for the next [`State::drain_changes`], which persists them.
    pub fn settle(&mut self) -> Vec<&'static str> {
        fn settle<V: Entity>(t: &mut Table<V>, out: &mut Vec<&'static str>) {
            if t.undoable() {
                out.push(V::TABLE);
            }
            t.forget_undo();
        }
        let mut out = Vec::new();
        settle(&mut self.agencies, &mut out);
        settle(&mut self.systems, &mut out);
        settle(&mut self.services, &mut out);
        settle(&mut self.subscriptions, &mut out);
        settle(&mut self.credentials, &mut out);
        settle(&mut self.catalogs, &mut out);
        settle(&mut self.users, &mut out);
        settle(&mut self.tokens, &mut out);
        settle(&mut self.revoked_tokens, &mut out);
        settle(&mut self.maintenance, &mut out);
        settle(&mut self.notices, &mut out);
        settle(&mut self.probe_alerts, &mut out);
        settle(&mut self.probe_status, &mut out);
        settle(&mut self.traffic_rollups, &mut out);
        settle(&mut self.incidents, &mut out);
        if !self.settings_undo.is_empty() {
            out.push(SETTINGS_TABLE);
        }
        self.settings_undo.clear();
        out
    }

    /// Names of every persistent table, for the store.
    pub const TABLES: [&'static str; 15] = [
        Agency::TABLE,
        System::TABLE,
        Service::TABLE,
        Subscription::TABLE,
        Credential::TABLE,
        Catalog::TABLE,
        User::TABLE,
        ApiToken::TABLE,
        RevokedToken::TABLE,
        MaintenanceWindow::TABLE,
        Notice::TABLE,
        ProbeAlert::TABLE,
        ProbeStatus::TABLE,
        TrafficRollup::TABLE,
        Incident::TABLE,
    ];

    /// Loads one stored row into the right table (used when opening the store).
    pub fn load_row(&mut self, table: &str, bytes: &[u8]) -> Result<(), serde_json::Error> {
        match table {
            "agencies" => self.agencies.load(serde_json::from_slice(bytes)?),
            "systems" => self.systems.load(serde_json::from_slice(bytes)?),
            "services" => self.services.load(serde_json::from_slice(bytes)?),
            "subscriptions" => self.subscriptions.load(serde_json::from_slice(bytes)?),
            "credentials" => self.credentials.load(serde_json::from_slice(bytes)?),
            "catalogs" => self.catalogs.load(serde_json::from_slice(bytes)?),
            "users" => self.users.load(serde_json::from_slice(bytes)?),
            "tokens" => self.tokens.load(serde_json::from_slice(bytes)?),
            "revoked_tokens" => self.revoked_tokens.load(serde_json::from_slice(bytes)?),
            "maintenance" => self.maintenance.load(serde_json::from_slice(bytes)?),
            "notices" => self.notices.load(serde_json::from_slice(bytes)?),
            "probe_alerts" => self.probe_alerts.load(serde_json::from_slice(bytes)?),
            "probe_status" => self.probe_status.load(serde_json::from_slice(bytes)?),
            "traffic_rollups" => self.traffic_rollups.load(serde_json::from_slice(bytes)?),
            "incidents" => self.incidents.load(serde_json::from_slice(bytes)?),
            _ => {}
        }
        Ok(())
    }

    pub fn load_settings(&mut self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        self.settings = serde_json::from_slice(bytes)?;
        Ok(())
    }

    pub fn rebuild_indexes(&mut self) {
        self.by_consumer_key.clear();
        self.by_key_id.clear();
        self.open_subs = self
            .subscriptions
            .values()
            .filter(|s| s.state.is_open())
            .map(|s| ((s.consumer_system.clone(), s.service.clone(), s.version.clone(), s.environment), s.id.clone()))
            .collect();
        let creds: Vec<Credential> = self.credentials.values().cloned().collect();
        for c in &creds {
            self.index_credential(None, c);
        }
    }

    /// Keeps the key indexes in step with a credential being replaced (`old`) by `new`.
    pub(super) fn index_credential(&mut self, old: Option<&Credential>, new: &Credential) {
        fn key_ids(c: &Credential) -> impl Iterator<Item = &String> {
            c.hmac.iter().map(|h| &h.key_id).chain(c.public_keys.iter().map(|k| &k.key_id))
        }
        if let Some(o) = old {
            self.by_consumer_key.remove(&o.consumer_key);
            for k in key_ids(o) {
                self.by_key_id.remove(k);
            }
        }
        if new.revoked_at.is_none() {
            self.by_consumer_key.insert(new.consumer_key.clone(), new.id.clone());
            for k in key_ids(new) {
                self.by_key_id.insert(k.clone(), new.id.clone());
            }
        }
    }

    /// Stores a subscription, keeping the open-subscription index in step.
    pub(super) fn put_subscription(&mut self, sub: Subscription) {
        if let Some(old) = self.subscriptions.get(&sub.id) {
            let key = (old.consumer_system.clone(), old.service.clone(), old.version.clone(), old.environment);
            if self.open_subs.get(&key) == Some(&old.id) {
                self.open_subs.remove(&key);
            }
        }
        if sub.state.is_open() {
            self.open_subs.insert((sub.consumer_system.clone(), sub.service.clone(), sub.version.clone(), sub.environment), sub.id.clone());
        }
        self.subscriptions.put(sub);
    }

    /// The requested, provider-approved or active subscription for this combination, if any.
    pub fn open_subscription(&self, consumer: &str, service: &str, version: &str, env: Environment) -> Option<&Subscription> {
        self.open_subs.get(&(consumer.to_owned(), service.to_owned(), version.to_owned(), env)).and_then(|id| self.subscriptions.get(id))
    }

    /// The live credential holding this consumer key.
    pub fn credential_by_consumer_key(&self, key: &str) -> Option<&Credential> {
        self.by_consumer_key.get(key).and_then(|id| self.credentials.get(id))
    }

    /// The live credential holding this signature key id (HMAC or public key).
    pub fn credential_by_key_id(&self, key_id: &str) -> Option<&Credential> {
        self.by_key_id.get(key_id).and_then(|id| self.credentials.get(id))
    }

    /// The agency owning a system, if both exist.
    pub fn agency_of_system(&self, system: &str) -> Option<&str> {
        self.systems.get(system).map(|s| s.agency.as_str())
    }

    /// The agency that provides a service (through its provider system).
    pub fn provider_agency(&self, context: &str) -> Option<&str> {
        self.services.get(context).and_then(|s| self.agency_of_system(&s.provider_system))
    }

    /// Every probe that should run: (target id, spec, owning system, its agency). Probes of
    /// disabled systems and retired versions do not run.
    pub fn probe_targets(&self) -> Vec<ProbeTarget<'_>> {
        let mut out = Vec::new();
        for s in self.systems.values().filter(|s| !s.disabled) {
            if let Some(spec) = &s.probe {
                out.push(ProbeTarget { target: format!("system:{}", s.id), spec, system: &s.id, agency: &s.agency });
            }
        }
        for svc in self.services.values() {
            let Some(sys) = self.systems.get(&svc.provider_system) else { continue };
            for v in svc.versions.values().filter(|v| v.state != VersionState::Retired) {
                if let Some(spec) = &v.probe {
                    out.push(ProbeTarget {
                        target: format!("service:{}:{}", svc.context, v.version),
                        spec,
                        system: &sys.id,
                        agency: &sys.agency,
                    });
                }
            }
        }
        out
    }

    /// The probe spec of an owner, with the owning system (`None`: no such owner or no probe).
    pub fn probe_of(&self, owner: &ProbeOwner) -> Option<(&ProbeSpec, &System)> {
        match owner {
            ProbeOwner::System { id } => self.systems.get(id).and_then(|s| s.probe.as_ref().map(|p| (p, s))),
            ProbeOwner::Version { service, version } => {
                let svc = self.services.get(service)?;
                let sys = self.systems.get(&svc.provider_system)?;
                svc.versions.get(version)?.probe.as_ref().map(|p| (p, sys))
            }
        }
    }
}

/// One probe the cluster runs, as [`State::probe_targets`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget<'a> {
    pub target: String,
    pub spec: &'a ProbeSpec,
    pub system: &'a str,
    pub agency: &'a str,
}
