//! `apply(&mut State, &Envelope)`: the registry's only mutator.
//!
//! Invariants: deterministic (no clock, no randomness, no I/O: the instant and every generated
//! id or hash come in the envelope); all or nothing (a refused command leaves the state exactly
//! as it was, see [`State::checkpoint`]); every refusal is a [`RegistryError`] naming the field
//! or rule.

use chrono::Duration;

use super::command::*;
use super::error::RegistryError as E;
use super::model::*;
use super::rules;
use super::state::State;
use super::traffic;
use super::{incident, maintenance, notice};

/// What a successful command did, for the caller and the admin audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: &'static str,
    pub target: String,
}

/// Applies one command. On error the state is unchanged.
pub fn apply(state: &mut State, env: &Envelope) -> Result<Outcome, E> {
    if env.format > FORMAT {
        return Err(E::conflict(
            "UNSUPPORTED_FORMAT",
            format!("command format {} is newer than this node understands ({FORMAT}); upgrade the node", env.format),
        ));
    }
    let cp = state.checkpoint();
    let mut cx = Cx { s: state, at: env.at, actor: &env.actor };
    match cx.run(&env.command) {
        Ok(()) => Ok(Outcome { kind: env.command.kind(), target: env.command.target() }),
        Err(e) => {
            cx.s.rollback(cp);
            Err(e)
        }
    }
}

struct Cx<'a> {
    s: &'a mut State,
    at: Timestamp,
    actor: &'a Actor,
}

fn agency_event(at: Timestamp, by: &str, kind: &str, detail: String) -> AgencyEvent {
    AgencyEvent { at, by: by.to_owned(), kind: kind.to_owned(), detail }
}

impl Cx<'_> {
    fn by(&self) -> String {
        self.actor.user.clone()
    }

    fn agency(&self, code: &str) -> Result<Agency, E> {
        self.s.agencies.get(code).cloned().ok_or_else(|| E::not_found("agency", code))
    }

    fn active_agency(&self, field: &str, code: &str) -> Result<Agency, E> {
        let a = self.agency(code)?;
        if a.status != AgencyStatus::Active {
            return Err(E::conflict(
                "AGENCY_INACTIVE",
                format!(
                    "{field}: agency {code} is {:?} (successors: {}); use its successor",
                    a.status,
                    if a.successors.is_empty() { "none".into() } else { a.successors.join(", ") }
                ),
            ));
        }
        Ok(a)
    }

    fn system(&self, id: &str) -> Result<System, E> {
        self.s.systems.get(id).cloned().ok_or_else(|| E::not_found("system", id))
    }

    fn service(&self, context: &str) -> Result<Service, E> {
        self.s.services.get(context).cloned().ok_or_else(|| E::not_found("service", context))
    }

    fn new_agency(&mut self, field: &str, na: &NewAgency, predecessors: Vec<String>, kind: &str) -> Result<(), E> {
        rules::agency_code(&format!("{field}.code"), &na.code)?;
        rules::text(&format!("{field}.name"), &na.name, 300)?;
        if self.s.agencies.contains(&na.code) {
            return Err(E::exists("agency", &na.code));
        }
        let detail = format!("{kind} from {}", predecessors.join(", "));
        self.s.agencies.put(Agency {
            code: na.code.clone(),
            name: na.name.clone(),
            parent: None,
            status: AgencyStatus::Active,
            suspended: false,
            contacts: vec![],
            predecessors,
            successors: vec![],
            created_at: self.at,
            history: vec![agency_event(self.at, &self.actor.user, "created", detail)],
            webhooks: vec![],
        });
        Ok(())
    }

    /// Moves a system (and nothing else) to another agency.
    fn move_system(&mut self, id: &str, to: &str) -> Result<(), E> {
        let mut sys = self.system(id)?;
        sys.agency = to.to_owned();
        self.s.systems.put(sys);
        Ok(())
    }

    /// Agency-admin users follow their agency to its single successor.
    fn move_users(&mut self, from: &str, to: &str) {
        let users: Vec<User> = self.s.users.values().filter(|u| u.agency.as_deref() == Some(from)).cloned().collect();
        for mut u in users {
            u.agency = Some(to.to_owned());
            self.s.users.put(u);
        }
    }

    fn systems_of(&self, agency: &str) -> Vec<String> {
        self.s.systems.values().filter(|s| s.agency == agency).map(|s| s.id.clone()).collect()
    }

    fn retire_agency(&mut self, code: &str, status: AgencyStatus, successors: Vec<String>, kind: &str, reason: &str) -> Result<(), E> {
        let mut a = self.agency(code)?;
        a.status = status;
        a.successors = successors.clone();
        let detail = if successors.is_empty() { reason.to_owned() } else { format!("{reason} (successors: {})", successors.join(", ")) };
        a.history.push(agency_event(self.at, &self.actor.user, kind, detail));
        self.s.agencies.put(a);
        Ok(())
    }

    fn run(&mut self, cmd: &Command) -> Result<(), E> {
        use Command::*;
        match cmd {
            CreateAgency { code, name, parent, contacts } => {
                rules::agency_code("code", code)?;
                rules::text("name", name, 300)?;
                if self.s.agencies.contains(code) {
                    return Err(E::exists("agency", code));
                }
                if let Some(p) = parent {
                    self.agency(p)?;
                }
                self.s.agencies.put(Agency {
                    code: code.clone(),
                    name: name.clone(),
                    parent: parent.clone(),
                    status: AgencyStatus::Active,
                    suspended: false,
                    contacts: contacts.clone(),
                    predecessors: vec![],
                    successors: vec![],
                    created_at: self.at,
                    history: vec![agency_event(self.at, &self.actor.user, "created", name.clone())],
                    webhooks: vec![],
                });
            }
            UpdateAgency { code, contacts, parent } => {
                let mut a = self.active_agency("code", code)?;
                if let Some(p) = parent {
                    if p == code {
                        return Err(E::invalid("parent", "an agency cannot be its own parent"));
                    }
                    self.agency(p)?;
                    a.parent = Some(p.clone());
                }
                if let Some(c) = contacts {
                    a.contacts = c.clone();
                }
                a.history.push(agency_event(self.at, &self.actor.user, "updated", String::new()));
                self.s.agencies.put(a);
            }
            RenameAgency { code, new_name, new_code, reason } => {
                rules::text("new_name", new_name, 300)?;
                rules::text("reason", reason, 1000)?;
                let mut a = self.active_agency("code", code)?;
                match new_code {
                    None => {
                        let detail = format!("{} -> {new_name}: {reason}", a.name);
                        a.name = new_name.clone();
                        a.history.push(agency_event(self.at, &self.actor.user, "renamed", detail));
                        self.s.agencies.put(a);
                    }
                    Some(nc) => {
                        self.new_agency(
                            "new_code",
                            &NewAgency { code: nc.clone(), name: new_name.clone() },
                            vec![code.clone()],
                            "recoded",
                        )?;
                        let mut succ = self.agency(nc)?;
                        succ.parent = a.parent.clone();
                        succ.contacts = a.contacts.clone();
                        succ.suspended = a.suspended;
                        self.s.agencies.put(succ);
                        for sys in self.systems_of(code) {
                            self.move_system(&sys, nc)?;
                        }
                        self.move_users(code, nc);
                        self.retire_agency(code, AgencyStatus::Recoded, vec![nc.clone()], "recoded", reason)?;
                    }
                }
            }
            SplitAgency { code, into, systems, reason } => {
                rules::text("reason", reason, 1000)?;
                self.active_agency("code", code)?;
                if into.len() < 2 {
                    return Err(E::invalid("into", "a split needs at least two new agencies"));
                }
                let codes: Vec<String> = into.iter().map(|n| n.code.clone()).collect();
                for (i, na) in into.iter().enumerate() {
                    self.new_agency(&format!("into[{i}]"), na, vec![code.clone()], "split")?;
                }
                let owned = self.systems_of(code);
                for sys in &owned {
                    match systems.get(sys) {
                        Some(to) if codes.contains(to) => self.move_system(sys, to)?,
                        Some(to) => {
                            return Err(E::invalid(
                                &format!("systems.{sys}"),
                                format!("{to} is not one of the new agencies ({})", codes.join(", ")),
                            ))
                        }
                        None => {
                            return Err(E::invalid(
                                "systems",
                                format!("system {sys} of {code} is not assigned to a new agency; assign every system"),
                            ))
                        }
                    }
                }
                if let Some(extra) = systems.keys().find(|k| !owned.contains(k)) {
                    return Err(E::invalid(&format!("systems.{extra}"), format!("is not a system of {code}")));
                }
                self.retire_agency(code, AgencyStatus::Split, codes, "split", reason)?;
            }
            MergeAgencies { sources, into, reason } => {
                rules::text("reason", reason, 1000)?;
                if sources.is_empty() {
                    return Err(E::invalid("sources", "name the agencies to merge"));
                }
                for (i, s) in sources.iter().enumerate() {
                    self.active_agency(&format!("sources[{i}]"), s)?;
                    if s == &into.code {
                        return Err(E::invalid(&format!("sources[{i}]"), "the merge target cannot also be a source"));
                    }
                    if sources[..i].contains(s) {
                        return Err(E::invalid(&format!("sources[{i}]"), format!("{s} is listed twice")));
                    }
                }
                if self.s.agencies.contains(&into.code) {
                    let mut target = self.active_agency("into.code", &into.code)?;
                    target.predecessors.extend(sources.iter().cloned());
                    target.history.push(agency_event(self.at, &self.actor.user, "merged", format!("absorbed {}", sources.join(", "))));
                    self.s.agencies.put(target);
                } else {
                    self.new_agency("into", into, sources.clone(), "merged")?;
                }
                for s in sources {
                    for sys in self.systems_of(s) {
                        self.move_system(&sys, &into.code)?;
                    }
                    self.move_users(s, &into.code);
                    self.retire_agency(s, AgencyStatus::Merged, vec![into.code.clone()], "merged", reason)?;
                }
            }
            DissolveAgency { code, successor, reason } => {
                rules::text("reason", reason, 1000)?;
                self.active_agency("code", code)?;
                let owned = self.systems_of(code);
                match successor {
                    Some(succ) => {
                        if succ == code {
                            return Err(E::invalid("successor", "an agency cannot succeed itself"));
                        }
                        let mut t = self.active_agency("successor", succ)?;
                        t.predecessors.push(code.clone());
                        self.s.agencies.put(t);
                        for sys in owned {
                            self.move_system(&sys, succ)?;
                        }
                        self.move_users(code, succ);
                    }
                    None if !owned.is_empty() => {
                        return Err(E::conflict(
                            "AGENCY_HAS_SYSTEMS",
                            format!("agency {code} still owns systems ({}); name a successor to take them", owned.join(", ")),
                        ))
                    }
                    None => {}
                }
                let succ: Vec<String> = successor.iter().cloned().collect();
                self.retire_agency(code, AgencyStatus::Dissolved, succ, "dissolved", reason)?;
            }
            SetAgencySuspended { code, suspended, reason } => {
                rules::text("reason", reason, 1000)?;
                let mut a = self.active_agency("code", code)?;
                a.suspended = *suspended;
                let kind = if *suspended { "suspended" } else { "reinstated" };
                a.history.push(agency_event(self.at, &self.actor.user, kind, reason.clone()));
                self.s.agencies.put(a);
            }

            CreateSystem { id, agency, name, description, security, contacts } => {
                rules::slug("id", id)?;
                rules::text("name", name, 300)?;
                check_security(security)?;
                if self.s.systems.contains(id) {
                    return Err(E::exists("system", id));
                }
                self.active_agency("agency", agency)?;
                self.s.systems.put(System {
                    id: id.clone(),
                    agency: agency.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    security: security.clone(),
                    contacts: contacts.clone(),
                    disabled: false,
                    created_at: self.at,
                    probe: None,
                });
            }
            UpdateSystem { id, name, description, security, contacts, disabled } => {
                let mut sys = self.system(id)?;
                if let Some(n) = name {
                    rules::text("name", n, 300)?;
                    sys.name = n.clone();
                }
                if let Some(d) = description {
                    sys.description = d.clone();
                }
                if let Some(sec) = security {
                    check_security(sec)?;
                    sys.security = sec.clone();
                }
                if let Some(c) = contacts {
                    sys.contacts = c.clone();
                }
                if let Some(d) = disabled {
                    sys.disabled = *d;
                }
                self.s.systems.put(sys);
            }

            CreateService { service } => {
                check_spec(service)?;
                if self.s.services.contains(&service.context) {
                    return Err(E::exists("service", &service.context));
                }
                let sys = self.system(&service.provider_system)?;
                self.active_agency("provider_system", &sys.agency)?;
                self.s.services.put(Service {
                    context: service.context.clone(),
                    provider_system: service.provider_system.clone(),
                    name: service.name.clone(),
                    description: service.description.clone(),
                    purpose: service.purpose.clone(),
                    format: service.format,
                    methods: service.methods.clone(),
                    request_description: service.request_description.clone(),
                    response_description: service.response_description.clone(),
                    sample_request: service.sample_request.clone(),
                    sample_response: service.sample_response.clone(),
                    created_at: self.at,
                    versions: Default::default(),
                });
            }
            UpdateService { context, spec } => {
                check_spec(spec)?;
                let mut svc = self.service(context)?;
                if spec.context != *context {
                    return Err(E::invalid("context", "the context of a service cannot change; create a new service"));
                }
                if spec.provider_system != svc.provider_system {
                    return Err(E::invalid("provider_system", "the provider of a service cannot change"));
                }
                svc.name = spec.name.clone();
                svc.description = spec.description.clone();
                svc.purpose = spec.purpose.clone();
                svc.format = spec.format;
                svc.methods = spec.methods.clone();
                svc.request_description = spec.request_description.clone();
                svc.response_description = spec.response_description.clone();
                svc.sample_request = spec.sample_request.clone();
                svc.sample_response = spec.sample_response.clone();
                self.s.services.put(svc);
            }
            AddVersion { context, version, upstream, max_body_bytes } => {
                rules::version_label("version", version)?;
                check_upstreams(upstream)?;
                let mut svc = self.service(context)?;
                if svc.versions.contains_key(version) {
                    return Err(E::exists("version", &format!("{context}/{version}")));
                }
                svc.versions.insert(
                    version.clone(),
                    ServiceVersion {
                        version: version.clone(),
                        state: VersionState::Draft,
                        upstream: upstream.clone(),
                        max_body_bytes: *max_body_bytes,
                        upstream_auth: UpstreamAuth::None,
                        timeout_ms: None,
                        created_at: self.at,
                        published_at: None,
                        deprecated_at: None,
                        retire_at: None,
                        retired_at: None,
                        history: vec![],
                        probe: None,
                    },
                );
                self.s.services.put(svc);
            }
            UpdateVersion { context, version, upstream, max_body_bytes, upstream_auth, timeout_ms } => {
                let mut svc = self.service(context)?;
                let v = version_mut(&mut svc, context, version)?;
                if v.state == VersionState::Retired {
                    return Err(E::conflict("VERSION_RETIRED", format!("{context}/{version} is retired and cannot change")));
                }
                if let Some(u) = upstream {
                    check_upstreams(u)?;
                    if v.state != VersionState::Draft && u.production.is_none() && u.test.is_none() {
                        return Err(E::invalid("upstream", "a published version needs at least one upstream"));
                    }
                    v.upstream = u.clone();
                }
                if let Some(m) = max_body_bytes {
                    v.max_body_bytes = Some(*m);
                }
                if let Some(a) = upstream_auth {
                    if let UpstreamAuth::Basic { username, .. } = a {
                        rules::text("upstream_auth.username", username, 200)?;
                    }
                    v.upstream_auth = a.clone();
                }
                if let Some(t) = timeout_ms {
                    if !(100..=600_000).contains(t) {
                        return Err(E::invalid("timeout_ms", "must be between 100 and 600000 milliseconds"));
                    }
                    v.timeout_ms = Some(*t);
                }
                self.s.services.put(svc);
            }
            PublishVersion { context, version } => {
                let by = self.by();
                let at = self.at;
                let mut svc = self.service(context)?;
                let sys = self.system(&svc.provider_system)?;
                self.active_agency("provider", &sys.agency)?;
                let v = version_mut(&mut svc, context, version)?;
                if v.state != VersionState::Draft {
                    return Err(E::conflict(
                        "INVALID_TRANSITION",
                        format!("{context}/{version} is {}; only a draft can be published", v.state.as_str()),
                    ));
                }
                if v.upstream.production.is_none() && v.upstream.test.is_none() {
                    return Err(E::invalid(
                        "upstream",
                        format!("{context}/{version} has no upstream; set a test or production upstream before publishing"),
                    ));
                }
                v.history.push(LifecycleEvent {
                    at,
                    by,
                    from: v.state,
                    to: VersionState::Published,
                    reason: String::new(),
                    override_reason: None,
                });
                v.state = VersionState::Published;
                v.published_at = Some(at);
                self.s.services.put(svc);
            }
            DeprecateVersion { context, version, retire_at, reason, override_reason } => {
                rules::text("reason", reason, 1000)?;
                check_override(override_reason)?;
                let (by, at) = (self.by(), self.at);
                let mut svc = self.service(context)?;
                let newer = newest_later_publication(&svc, version);
                let v = version_mut(&mut svc, context, version)?;
                if v.state != VersionState::Published {
                    return Err(E::conflict(
                        "INVALID_TRANSITION",
                        format!("{context}/{version} is {}; only a published version can be deprecated", v.state.as_str()),
                    ));
                }
                if override_reason.is_none() {
                    check_retire_rules(context, version, *retire_at, at, newer)?;
                }
                v.history.push(LifecycleEvent {
                    at,
                    by,
                    from: v.state,
                    to: VersionState::Deprecated,
                    reason: format!("{reason} (retires {retire_at})"),
                    override_reason: override_reason.clone(),
                });
                v.state = VersionState::Deprecated;
                v.deprecated_at = Some(at);
                v.retire_at = Some(*retire_at);
                self.s.services.put(svc);
            }
            RetireVersion { context, version, reason, override_reason } => {
                rules::text("reason", reason, 1000)?;
                check_override(override_reason)?;
                let (by, at) = (self.by(), self.at);
                let mut svc = self.service(context)?;
                let newer = newest_later_publication(&svc, version);
                let v = version_mut(&mut svc, context, version)?;
                match (v.state, override_reason) {
                    (VersionState::Deprecated, None) => {
                        let due = v.retire_at.unwrap_or(at);
                        if at < due {
                            return Err(E::rule(
                                "NOTICE_PERIOD",
                                format!("{context}/{version} was announced to retire at {due}; it cannot retire earlier without an operator override and a reason"),
                            ));
                        }
                        if let Some(p) = newer {
                            if at < p + Duration::days(rules::OVERLAP_DAYS) {
                                return Err(overlap_error(context, version, p));
                            }
                        }
                    }
                    (VersionState::Deprecated | VersionState::Published, Some(_)) => {}
                    (state, _) => {
                        return Err(E::conflict(
                            "INVALID_TRANSITION",
                            format!("{context}/{version} is {}; only a deprecated version can be retired (a published one only with an operator override)", state.as_str()),
                        ))
                    }
                }
                v.history.push(LifecycleEvent {
                    at,
                    by: by.clone(),
                    from: v.state,
                    to: VersionState::Retired,
                    reason: reason.clone(),
                    override_reason: override_reason.clone(),
                });
                v.state = VersionState::Retired;
                v.retired_at = Some(at);
                self.s.services.put(svc);
                // Access is revoked when a version is cancelled (R7).
                let subs: Vec<Subscription> = self
                    .s
                    .subscriptions
                    .values()
                    .filter(|s| s.service == *context && s.version == *version && s.state.is_open())
                    .cloned()
                    .collect();
                for mut sub in subs {
                    sub.state = SubscriptionState::Revoked;
                    sub.history.push(SubscriptionEvent {
                        at,
                        by: by.clone(),
                        to: SubscriptionState::Revoked,
                        reason: format!("version retired: {reason}"),
                    });
                    self.s.put_subscription(sub);
                }
            }

            RequestSubscription { id, consumer_system, service, version, environment, purpose, scope, contact, rate_limit } => {
                if id.is_empty() || self.s.subscriptions.contains(id) {
                    return Err(E::exists("subscription", id));
                }
                rules::text("purpose", purpose, 2000)?;
                check_rate_limit(rate_limit)?;
                let sys = self.system(consumer_system)?;
                self.active_agency("consumer_system", &sys.agency)?;
                if sys.disabled {
                    return Err(E::conflict("SYSTEM_DISABLED", format!("system {consumer_system} is disabled")));
                }
                let svc = self.service(service)?;
                let v = svc.versions.get(version).ok_or_else(|| E::not_found("version", &format!("{service}/{version}")))?;
                if v.state != VersionState::Published {
                    return Err(E::conflict(
                        "VERSION_NOT_OPEN",
                        format!("{service}/{version} is {}; subscriptions are taken only for published versions", v.state.as_str()),
                    ));
                }
                if v.upstream.get(*environment).is_none() {
                    return Err(E::conflict(
                        "ENVIRONMENT_NOT_OFFERED",
                        format!("{service}/{version} has no {} upstream", environment.as_str()),
                    ));
                }
                if let Some(dup) = self.s.open_subscription(consumer_system, service, version, *environment) {
                    return Err(E::conflict(
                        "SUBSCRIPTION_EXISTS",
                        format!(
                            "{consumer_system} already has subscription {} ({}) to {service}/{version} in {}",
                            dup.id,
                            dup.state.as_str(),
                            environment.as_str()
                        ),
                    ));
                }
                let due = rules::add_working_days(self.at, rules::DECISION_WORKING_DAYS, &self.s.settings.holidays);
                self.s.put_subscription(Subscription {
                    id: id.clone(),
                    consumer_system: consumer_system.clone(),
                    service: service.clone(),
                    version: version.clone(),
                    environment: *environment,
                    state: SubscriptionState::Requested,
                    purpose: purpose.clone(),
                    scope: scope.clone(),
                    contact: contact.clone(),
                    rate_limit: *rate_limit,
                    requested_at: self.at,
                    requested_by: self.by(),
                    decision_due: due,
                    history: vec![SubscriptionEvent {
                        at: self.at,
                        by: self.by(),
                        to: SubscriptionState::Requested,
                        reason: purpose.clone(),
                    }],
                });
            }
            DecideSubscription { id, decision, reason } => {
                let mut sub = self.s.subscriptions.get(id).cloned().ok_or_else(|| E::not_found("subscription", id))?;
                use SubscriptionState as S;
                let to = match (decision, sub.state) {
                    (Decision::ProviderApprove, S::Requested) => S::ProviderApproved,
                    (Decision::Approve, S::ProviderApproved) => S::Active,
                    (Decision::Reject, S::Requested | S::ProviderApproved) => S::Rejected,
                    (Decision::Revoke, S::ProviderApproved | S::Active) => S::Revoked,
                    (d, from) => {
                        return Err(E::conflict(
                            "INVALID_TRANSITION",
                            format!("subscription {id} is {}; {d:?} is not possible from there", from.as_str()),
                        ))
                    }
                };
                if matches!(decision, Decision::Reject | Decision::Revoke) {
                    rules::text("reason", reason, 1000)?;
                }
                if to == S::Active {
                    let svc = self.service(&sub.service)?;
                    let state = svc.versions.get(&sub.version).map(|v| v.state);
                    if !matches!(state, Some(VersionState::Published | VersionState::Deprecated)) {
                        return Err(E::conflict("VERSION_NOT_OPEN", format!("{}/{} is no longer open", sub.service, sub.version)));
                    }
                }
                sub.state = to;
                sub.history.push(SubscriptionEvent { at: self.at, by: self.by(), to, reason: reason.clone() });
                self.s.put_subscription(sub);
            }
            SetSubscriptionLimits { id, rate_limit } => {
                check_rate_limit(rate_limit)?;
                let mut sub = self.s.subscriptions.get(id).cloned().ok_or_else(|| E::not_found("subscription", id))?;
                sub.rate_limit = *rate_limit;
                self.s.put_subscription(sub);
            }

            IssueCredential { credential } => self.put_credential(credential, true)?,
            SetPublicKeys { id, public_keys } => {
                let mut c = self.s.credentials.get(id).cloned().ok_or_else(|| E::not_found("credential", id))?;
                if c.revoked_at.is_some() {
                    return Err(E::conflict("ALREADY_REVOKED", format!("credential {id} is revoked")));
                }
                c.public_keys = public_keys.clone();
                self.put_credential(&c, false)?;
            }
            RevokeAccessToken { jti, expires_at } => {
                rules::text("jti", jti, 200)?;
                if !self.s.revoked_tokens.contains(jti) {
                    self.s.revoked_tokens.put(RevokedToken { jti: jti.clone(), expires_at: *expires_at, revoked_at: self.at });
                }
            }
            PruneRevokedTokens => {
                let expired: Vec<String> =
                    self.s.revoked_tokens.values().filter(|t| t.expires_at <= self.at).map(|t| t.jti.clone()).collect();
                for j in expired {
                    self.s.revoked_tokens.remove(&j);
                }
                let stale: Vec<String> =
                    self.s.tokens.values().filter(|t| t.expires_at.is_some_and(|e| e <= self.at)).map(|t| t.id.clone()).collect();
                for id in stale {
                    self.s.tokens.remove(&id);
                }
            }
            RevokeCredential { id, reason } => {
                rules::text("reason", reason, 1000)?;
                let mut c = self.s.credentials.get(id).cloned().ok_or_else(|| E::not_found("credential", id))?;
                if c.revoked_at.is_some() {
                    return Err(E::conflict("ALREADY_REVOKED", format!("credential {id} is already revoked")));
                }
                let old = self.s.credentials.get(id).cloned();
                c.revoked_at = Some(self.at);
                self.s.index_credential(old.as_ref(), &c);
                self.s.credentials.put(c);
            }

            CreateCatalog { code, name, owner_agency, description } => {
                rules::slug("code", code)?;
                rules::text("name", name, 300)?;
                if self.s.catalogs.contains(code) {
                    return Err(E::exists("catalog", code));
                }
                self.active_agency("owner_agency", owner_agency)?;
                self.s.catalogs.put(Catalog {
                    code: code.clone(),
                    name: name.clone(),
                    owner_agency: owner_agency.clone(),
                    description: description.clone(),
                    created_at: self.at,
                    versions: vec![],
                });
            }
            PublishCatalogVersion { code, fields, entries, append, note } => {
                let mut cat = self.s.catalogs.get(code).cloned().ok_or_else(|| E::not_found("catalog", code))?;
                let prev = cat.latest();
                let fields = match (fields, prev) {
                    (Some(f), _) => f.clone(),
                    (None, Some(p)) => p.fields.clone(),
                    (None, None) => return Err(E::invalid("fields", "the first version of a catalog must define its fields")),
                };
                let mut all = match (append, prev) {
                    (true, Some(p)) => p.entries.clone(),
                    _ => vec![],
                };
                all.extend(entries.iter().cloned());
                check_catalog(&fields, &all, if *append { prev.map_or(0, |p| p.entries.len()) } else { 0 })?;
                let version = prev.map_or(1, |p| p.version + 1);
                cat.versions.push(CatalogVersion {
                    version,
                    fields,
                    entries: all,
                    published_at: self.at,
                    published_by: self.by(),
                    note: note.clone(),
                });
                self.s.catalogs.put(cat);
            }

            CreateUser { username, display_name, role, agency, password_hash } => {
                rules::slug("username", username)?;
                if self.s.users.contains(username) {
                    return Err(E::exists("user", username));
                }
                match (role, agency) {
                    (Role::AgencyAdmin, Some(a)) => {
                        self.active_agency("agency", a)?;
                    }
                    (Role::AgencyAdmin, None) => return Err(E::invalid("agency", "an agency-admin must belong to an agency")),
                    (_, Some(_)) => return Err(E::invalid("agency", "only agency-admin users belong to an agency")),
                    (_, None) => {}
                }
                if !password_hash.starts_with("$argon2id$") {
                    return Err(E::invalid("password_hash", "must be an argon2id PHC string"));
                }
                self.s.users.put(User {
                    username: username.clone(),
                    display_name: display_name.clone(),
                    role: *role,
                    agency: agency.clone(),
                    password_hash: password_hash.clone(),
                    password_changed_at: self.at,
                    failed_logins: 0,
                    locked_until: None,
                    disabled: false,
                    created_at: self.at,
                });
            }
            UpdateUser { username, display_name, disabled } => {
                let mut u = self.user(username)?;
                if let Some(d) = display_name {
                    u.display_name = d.clone();
                }
                if let Some(d) = disabled {
                    u.disabled = *d;
                    if *d {
                        // A disabled account keeps no live tokens.
                        let ids: Vec<String> = self.s.tokens.values().filter(|t| t.username == *username).map(|t| t.id.clone()).collect();
                        for id in ids {
                            self.s.tokens.remove(&id);
                        }
                    }
                }
                self.s.users.put(u);
            }
            SetPassword { username, password_hash } => {
                let mut u = self.user(username)?;
                if !password_hash.starts_with("$argon2id$") {
                    return Err(E::invalid("password_hash", "must be an argon2id PHC string"));
                }
                u.password_hash = password_hash.clone();
                u.password_changed_at = self.at;
                u.failed_logins = 0;
                u.locked_until = None;
                self.s.users.put(u);
            }
            RecordLoginFailure { username, threshold, lock_seconds } => {
                let mut u = self.user(username)?;
                u.failed_logins = u.failed_logins.saturating_add(1);
                if *threshold > 0 && u.failed_logins >= *threshold {
                    u.locked_until = Some(self.at + Duration::seconds(i64::try_from(*lock_seconds).unwrap_or(i64::MAX / 2)));
                    u.failed_logins = 0;
                }
                self.s.users.put(u);
            }
            RecordLoginSuccess { username } => {
                let mut u = self.user(username)?;
                u.failed_logins = 0;
                u.locked_until = None;
                self.s.users.put(u);
            }
            UnlockUser { username } => {
                let mut u = self.user(username)?;
                u.failed_logins = 0;
                u.locked_until = None;
                self.s.users.put(u);
            }
            IssueToken { token } => {
                if self.s.tokens.contains(&token.id) {
                    return Err(E::exists("token", &token.id));
                }
                let u = self.user(&token.username)?;
                if u.disabled {
                    return Err(E::conflict("USER_DISABLED", format!("user {} is disabled", u.username)));
                }
                self.s.tokens.put(token.clone());
            }
            RevokeToken { id } => {
                if self.s.tokens.remove(id).is_none() {
                    return Err(E::not_found("token", id));
                }
            }
            SetHolidays { holidays } => {
                let mut s = self.s.settings.clone();
                let mut h = holidays.clone();
                h.sort();
                h.dedup();
                s.holidays = h;
                self.s.set_settings(s);
            }

            UpsertAgency { agency } => {
                rules::agency_code("code", &agency.code)?;
                rules::text("name", &agency.name, 300)?;
                if let Some(p) = &agency.parent {
                    self.agency(p)?;
                }
                self.s.agencies.put(agency.clone());
            }
            UpsertSystem { system } => {
                rules::slug("id", &system.id)?;
                rules::text("name", &system.name, 300)?;
                check_security(&system.security)?;
                self.active_agency("agency", &system.agency)?;
                check_probe("probe", system.probe.as_ref())?;
                if system.probe.is_none() {
                    self.s.probe_status.remove(&format!("system:{}", system.id));
                }
                self.s.systems.put(system.clone());
            }
            UpsertService { service } => {
                rules::slug("context", &service.context)?;
                rules::text("name", &service.name, 300)?;
                self.system(&service.provider_system)?;
                for (k, v) in &service.versions {
                    rules::version_label(&format!("version.{k}"), &v.version)?;
                    if k != &v.version {
                        return Err(E::invalid(&format!("version.{k}"), "key and version label differ"));
                    }
                    check_upstreams(&v.upstream)?;
                    check_probe(&format!("version.{k}.probe"), v.probe.as_ref())?;
                    if v.probe.is_none() {
                        self.s.probe_status.remove(&format!("service:{}:{k}", service.context));
                    }
                }
                self.s.services.put(service.clone());
            }
            UpsertSubscription { subscription: sub } => {
                self.system(&sub.consumer_system)?;
                let svc = self.service(&sub.service)?;
                if !svc.versions.contains_key(&sub.version) {
                    return Err(E::not_found("version", &format!("{}/{}", sub.service, sub.version)));
                }
                if sub.state.is_open() {
                    if let Some(dup) = self
                        .s
                        .open_subscription(&sub.consumer_system, &sub.service, &sub.version, sub.environment)
                        .filter(|d| d.id != sub.id)
                    {
                        return Err(E::conflict("SUBSCRIPTION_EXISTS", format!("duplicates subscription {}", dup.id)));
                    }
                }
                self.s.put_subscription(sub.clone());
            }
            UpsertCredential { credential } => self.put_credential(credential, false)?,

            SetAgencyWebhooks { code, webhooks } => {
                let mut a = self.agency(code)?;
                for (i, w) in webhooks.iter().enumerate() {
                    if !w.url.starts_with("https://") && !w.url.starts_with("http://") {
                        return Err(E::invalid(&format!("webhooks[{i}].url"), "must be an http:// or https:// URL"));
                    }
                    if webhooks[..i].iter().any(|o| o.url == w.url) {
                        return Err(E::invalid(&format!("webhooks[{i}].url"), "is listed twice"));
                    }
                }
                a.webhooks = webhooks.clone();
                a.history.push(agency_event(self.at, &self.actor.user, "updated", format!("{} webhook(s)", webhooks.len())));
                self.s.agencies.put(a);
            }
            AnnounceMaintenance { id, scope, start, end, reason, emergency, emergency_reason, min_notice_secs } => {
                let d = maintenance::Draft {
                    scope,
                    start: *start,
                    end: *end,
                    reason,
                    emergency: *emergency,
                    emergency_reason,
                    min_notice_secs: *min_notice_secs,
                };
                maintenance::announce(self.s, id, d, self.at, &self.actor.user)?;
            }
            ChangeMaintenance { id, scope, start, end, reason, emergency, emergency_reason, min_notice_secs } => {
                maintenance::change(
                    self.s,
                    id,
                    scope.as_ref(),
                    *start,
                    *end,
                    reason.as_ref(),
                    *emergency,
                    emergency_reason,
                    *min_notice_secs,
                    self.at,
                    &self.actor.user,
                )?;
            }
            CancelMaintenance { id, reason } => maintenance::cancel(self.s, id, reason, self.at, &self.actor.user)?,
            MaintenanceStage { id, stage } => maintenance::stage(self.s, id, stage, self.at, &self.actor.user)?,
            RecordDeliveries { results } => {
                for r in results {
                    // A notice pruned or a delivery already settled (by an earlier leader) is skipped.
                    let Some(mut n) = self.s.notices.get(&r.notice).cloned() else { continue };
                    let Some(d) = n.deliveries.get_mut(r.index as usize) else { continue };
                    if d.state != DeliveryState::Pending {
                        continue;
                    }
                    d.attempts += 1;
                    match &r.outcome {
                        DeliveryOutcome::Sent => {
                            d.state = DeliveryState::Sent;
                            d.sent_at = Some(self.at);
                            d.next_at = None;
                        }
                        DeliveryOutcome::Retry { error, next_at } => {
                            d.last_error = error.clone();
                            d.next_at = Some(*next_at);
                        }
                        DeliveryOutcome::Failed { error } => {
                            d.state = DeliveryState::Failed;
                            d.last_error = error.clone();
                            d.next_at = None;
                        }
                    }
                    self.s.notices.put(n);
                }
            }
            FlushProbeAlert { target } => notice::flush_probe_alert(self.s, target, self.at),
            PruneNotices { before } => {
                let old: Vec<String> =
                    self.s.notices.values().filter(|n| n.created_at < *before && !n.pending()).map(|n| n.id.clone()).collect();
                for id in old {
                    self.s.notices.remove(&id);
                }
            }
            SetProbe { owner, spec } => {
                check_probe("spec", Some(spec))?;
                self.set_probe(owner, Some(spec.clone()))?;
            }
            ClearProbe { owner } => {
                if self.s.probe_of(owner).is_none() {
                    return Err(E::not_found("probe", &owner.target_id()));
                }
                self.set_probe(owner, None)?;
                self.s.probe_status.remove(&owner.target_id());
            }
            ProbeStatusChanged { target, from, to, at, notify, flapping, reason, cert_days_left, node } => {
                let owner =
                    ProbeOwner::parse(target).ok_or_else(|| E::invalid("target", format!("{target:?} is not a probe target id")))?;
                let (system, agency) = match self.s.probe_of(&owner) {
                    Some((_, sys)) => (sys.id.clone(), sys.agency.clone()),
                    None => return Err(E::not_found("probe", target)),
                };
                let current = self.s.probe_status.get(target).cloned();
                let stored = current.as_ref().map(|c| c.status);
                if stored != *from {
                    return Err(E::conflict(
                        "PROBE_STATUS_STALE",
                        format!(
                            "probe {target} is {} in the registry, not {}; the change was already recorded",
                            stored.map_or("unconfirmed", ProbeHealth::as_str),
                            from.map_or("unconfirmed", ProbeHealth::as_str)
                        ),
                    ));
                }
                if *from == Some(*to) && current.as_ref().is_some_and(|c| c.flapping == *flapping) {
                    return Err(E::conflict("PROBE_STATUS_STALE", format!("probe {target} is already {}", to.as_str())));
                }
                let mut st =
                    current.unwrap_or(ProbeStatus { target: target.clone(), status: *to, since: *at, flapping: false, events: vec![] });
                if *from != Some(*to) {
                    st.since = *at;
                }
                st.status = *to;
                st.flapping = *flapping;
                let seq = st.events.last().map_or(1, |e| e.seq + 1);
                let reason: String = reason.chars().take(500).collect();
                st.events.push(ProbeEvent {
                    seq,
                    at: *at,
                    from: *from,
                    to: *to,
                    notify: *notify,
                    flapping: *flapping,
                    reason: reason.clone(),
                    cert_days_left: *cert_days_left,
                    node: node.clone(),
                    system: system.clone(),
                    agency,
                });
                let oldest = *at - Duration::days(ProbeStatus::KEEP_DAYS);
                st.events.retain(|e| e.at >= oldest);
                let excess = st.events.len().saturating_sub(ProbeStatus::MAX_EVENTS);
                st.events.drain(..excess);
                self.s.probe_status.put(st);
                // Notices (O2): a first status counts as a change from `up`, so a target that is
                // down when first probed is reported; flapping changes (notify = false) are only
                // recorded, and the leader flushes the settled status after the hold-down.
                notice::on_probe_change(
                    self.s,
                    &notice::ProbeChange {
                        target: target.clone(),
                        system,
                        from: from.unwrap_or(ProbeHealth::Up),
                        to: *to,
                        at: *at,
                        reason,
                        cert_days_left: *cert_days_left,
                        notify: *notify,
                    },
                );
            }
            ProbeCertChecked { target, days_left, at, node: _ } => {
                let owner =
                    ProbeOwner::parse(target).ok_or_else(|| E::invalid("target", format!("{target:?} is not a probe target id")))?;
                let system = match self.s.probe_of(&owner) {
                    Some((_, sys)) => sys.id.clone(),
                    None => return Err(E::not_found("probe", target)),
                };
                if !notice::on_cert_checked(self.s, target, &system, *days_left, *at) {
                    return Err(E::conflict(
                        "PROBE_CERT_NOTIFIED",
                        format!("the certificate of {target} ({days_left} days left) was already notified at this threshold"),
                    ));
                }
            }

            PublishTrafficRollup { rollup, keep_days } => self.publish_traffic_rollup(rollup, *keep_days)?,
            OpenIncident { id, title, description, severity, services, agencies, detected_at, expected_fix_at, backup } => {
                let n = incident::NewIncident {
                    id,
                    title,
                    description,
                    severity: *severity,
                    services,
                    agencies,
                    detected_at: *detected_at,
                    expected_fix_at: *expected_fix_at,
                    backup,
                };
                incident::open(self.s, n, self.at, &self.actor.user)?;
            }
            UpdateIncident { id, changes } => incident::update(self.s, id, changes, self.at, &self.actor.user)?,
            ResolveIncident { id, resolution, cause } => {
                incident::resolve(self.s, id, resolution, cause.as_deref(), self.at, &self.actor.user)?
            }
            Batch { label: _, commands } => {
                for (i, c) in commands.iter().enumerate() {
                    self.run(c).map_err(|e| prefix_error(e, i))?;
                }
            }
        }
        Ok(())
    }

    /// Stores a node's rollup of a day (the more recent copy wins) and forgets old days.
    fn publish_traffic_rollup(&mut self, r: &traffic::TrafficRollup, keep_days: u32) -> Result<(), E> {
        rules::text("rollup.node", &r.node, 63)?;
        if r.id != traffic::TrafficRollup::key_of(r.day, &r.node) {
            return Err(E::invalid("rollup.id", format!("must be {:?}", traffic::TrafficRollup::key_of(r.day, &r.node))));
        }
        let today = traffic::local_date(self.at);
        if r.day > today + Duration::days(1) {
            return Err(E::invalid("rollup.day", format!("{} is in the future", r.day)));
        }
        let keep = i64::from(keep_days.max(31));
        let cutoff = today - Duration::days(keep);
        if r.day >= cutoff && self.s.traffic_rollups.get(&r.id).is_none_or(|old| old.as_of <= r.as_of) {
            self.s.traffic_rollups.put(r.clone());
        }
        let old: Vec<String> = self.s.traffic_rollups.range("", &cutoff.to_string()).map(|x| x.id.clone()).collect();
        for id in old {
            self.s.traffic_rollups.remove(&id);
        }
        Ok(())
    }

    /// Sets or clears the probe of a system or a service version.
    fn set_probe(&mut self, owner: &ProbeOwner, spec: Option<ProbeSpec>) -> Result<(), E> {
        match owner {
            ProbeOwner::System { id } => {
                let mut sys = self.system(id)?;
                sys.probe = spec;
                self.s.systems.put(sys);
            }
            ProbeOwner::Version { service, version } => {
                let mut svc = self.service(service)?;
                version_mut(&mut svc, service, version)?.probe = spec;
                self.s.services.put(svc);
            }
        }
        Ok(())
    }

    fn user(&self, username: &str) -> Result<User, E> {
        self.s.users.get(username).cloned().ok_or_else(|| E::not_found("user", username))
    }

    fn put_credential(&mut self, c: &Credential, fresh: bool) -> Result<(), E> {
        if fresh && self.s.credentials.contains(&c.id) {
            return Err(E::exists("credential", &c.id));
        }
        let sys = self.system(&c.system)?;
        if fresh {
            self.active_agency("system", &sys.agency)?;
        }
        if c.consumer_key.len() < 8 {
            return Err(E::invalid("consumer_key", "must be at least 8 characters"));
        }
        if let Some(other) = self.s.credential_by_consumer_key(&c.consumer_key) {
            if other.id != c.id {
                return Err(E::conflict("KEY_IN_USE", "consumer_key is already used by another credential; choose another"));
            }
        }
        for (i, k) in c.public_keys.iter().enumerate() {
            rules::text(&format!("public_keys[{i}].key_id"), &k.key_id, 200)?;
            if !k.pem.contains("-----BEGIN PUBLIC KEY-----") {
                return Err(E::invalid(
                    &format!("public_keys[{i}].pem"),
                    "must be a PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)",
                ));
            }
            if k.alg == SigAlg::HmacSha256 {
                return Err(E::invalid(
                    &format!("public_keys[{i}].alg"),
                    "hmac-sha256 uses a shared secret, not a public key; issue the credential with an HMAC key",
                ));
            }
            if c.hmac.as_ref().is_some_and(|h| h.key_id == k.key_id) || c.public_keys[..i].iter().any(|o| o.key_id == k.key_id) {
                return Err(E::invalid(&format!("public_keys[{i}].key_id"), "is used twice in this credential"));
            }
            if let Some(other) = self.s.credential_by_key_id(&k.key_id) {
                if other.id != c.id {
                    return Err(E::conflict("KEY_IN_USE", format!("key id {:?} is already used by another credential", k.key_id)));
                }
            }
        }
        if let Some(h) = &c.hmac {
            rules::text("hmac.key_id", &h.key_id, 200)?;
            if let Some(other) = self.s.credential_by_key_id(&h.key_id) {
                if other.id != c.id {
                    return Err(E::conflict("KEY_IN_USE", format!("hmac key id {:?} is already used by another credential", h.key_id)));
                }
            }
        }
        let old = self.s.credentials.get(&c.id).cloned();
        self.s.index_credential(old.as_ref(), c);
        self.s.credentials.put(c.clone());
        Ok(())
    }
}

fn prefix_error(e: E, i: usize) -> E {
    match e {
        E::Invalid { field, reason } => E::Invalid { field: format!("commands[{i}].{field}"), reason },
        E::Conflict { code, message } => E::Conflict { code, message: format!("commands[{i}]: {message}") },
        E::Rule { code, message } => E::Rule { code, message: format!("commands[{i}]: {message}") },
        other => other,
    }
}

fn version_mut<'s>(svc: &'s mut Service, context: &str, version: &str) -> Result<&'s mut ServiceVersion, E> {
    svc.versions.get_mut(version).ok_or_else(|| E::not_found("version", &format!("{context}/{version}")))
}

/// When the newest version later than `version` was published, if any.
fn newest_later_publication(svc: &Service, version: &str) -> Option<Timestamp> {
    svc.versions.values().filter(|v| model_later(&v.version, version)).filter_map(|v| v.published_at).max()
}

fn model_later(a: &str, b: &str) -> bool {
    version_order(a, b) == std::cmp::Ordering::Greater
}

fn overlap_error(context: &str, version: &str, newer_published: Timestamp) -> E {
    let earliest = newer_published + Duration::days(rules::OVERLAP_DAYS);
    E::rule(
        "OVERLAP_PERIOD",
        format!(
            "{context}/{version} must keep running {} days after its successor was published ({newer_published}); the earliest retirement is {earliest}, or an operator overrides with a reason",
            rules::OVERLAP_DAYS
        ),
    )
}

fn check_retire_rules(context: &str, version: &str, retire_at: Timestamp, now: Timestamp, newer: Option<Timestamp>) -> Result<(), E> {
    let notice_end = now + Duration::days(rules::NOTICE_DAYS);
    if retire_at < notice_end {
        return Err(E::rule(
            "NOTICE_PERIOD",
            format!(
                "decommissioning {context}/{version} needs at least {} days notice: retire_at must be on or after {notice_end}, or an operator overrides with a reason",
                rules::NOTICE_DAYS
            ),
        ));
    }
    if let Some(p) = newer {
        if retire_at < p + Duration::days(rules::OVERLAP_DAYS) {
            return Err(overlap_error(context, version, p));
        }
    }
    Ok(())
}

fn check_rate_limit(r: &RateLimit) -> Result<(), E> {
    if r.per_second == Some(0) || r.per_day == Some(0) {
        return Err(E::invalid("rate_limit", "a limit of 0 would block all traffic; revoke the subscription instead, or omit the limit"));
    }
    Ok(())
}

fn check_override(o: &Option<String>) -> Result<(), E> {
    match o {
        Some(r) => rules::text("override_reason", r, 1000),
        None => Ok(()),
    }
}

fn check_probe(field: &str, spec: Option<&ProbeSpec>) -> Result<(), E> {
    match spec.map(ProbeSpec::validate) {
        Some(Err(reason)) => Err(E::invalid(field, reason)),
        _ => Ok(()),
    }
}

fn check_security(sec: &SecurityClearance) -> Result<(), E> {
    match sec {
        SecurityClearance::Level { level, .. } => rules::security_level("security.level", *level),
        SecurityClearance::Commitment { document, .. } => rules::text("security.document", document, 500),
    }
}

fn check_spec(s: &ServiceSpec) -> Result<(), E> {
    rules::slug("context", &s.context)?;
    if matches!(s.context.as_str(), "token" | "revoke" | "dmdc" | "status" | "metrics" | "api") {
        return Err(E::invalid("context", format!("{:?} is reserved by the gateway", s.context)));
    }
    rules::text("name", &s.name, 300)?;
    for (i, m) in s.methods.iter().enumerate() {
        if !matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") {
            return Err(E::invalid(
                &format!("methods[{i}]"),
                format!("{m:?} is not an HTTP method (GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS)"),
            ));
        }
    }
    Ok(())
}

fn check_upstreams(u: &Upstreams) -> Result<(), E> {
    if let Some(p) = &u.production {
        rules::upstream_url("upstream.production", p)?;
    }
    if let Some(t) = &u.test {
        rules::upstream_url("upstream.test", t)?;
    }
    Ok(())
}

fn check_catalog(fields: &[CatalogField], entries: &[serde_json::Map<String, serde_json::Value>], from: usize) -> Result<(), E> {
    if fields.is_empty() {
        return Err(E::invalid("fields", "a catalog needs at least one field"));
    }
    for (i, f) in fields.iter().enumerate() {
        rules::text(&format!("fields[{i}].name"), &f.name, 100)?;
        if !matches!(f.field_type.as_str(), "string" | "integer" | "number" | "boolean" | "date") {
            return Err(E::invalid(
                &format!("fields[{i}].type"),
                format!("{:?} is not one of string, integer, number, boolean, date", f.field_type),
            ));
        }
    }
    let has_code = fields.iter().any(|f| f.name == "code");
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        for k in e.keys() {
            if !fields.iter().any(|f| &f.name == k) {
                return Err(E::invalid(&format!("entries[{}].{k}", i.saturating_sub(from)), "is not a field of this catalog"));
            }
        }
        if has_code {
            let code = e.get("code").map(|v| v.to_string()).unwrap_or_default();
            if code.is_empty() || code == "null" {
                return Err(E::invalid(&format!("entries[{}].code", i.saturating_sub(from)), "every entry needs a code"));
            }
            if !seen.insert(code.clone()) {
                return Err(E::invalid(&format!("entries[{}].code", i.saturating_sub(from)), format!("code {code} appears twice")));
            }
        }
    }
    Ok(())
}
