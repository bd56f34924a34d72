//! Unit tests of the pure state machine: rules, transitions, restructuring, atomicity, and the
//! golden log format.

use chrono::{Duration, TimeZone, Utc};

use super::*;

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 5, 2, 0, 0).single().expect("valid instant")
}

struct Reg {
    s: State,
    now: Timestamp,
}

impl Reg {
    fn new() -> Self {
        Reg { s: State::default(), now: t0() }
    }
    fn run(&mut self, c: Command) -> Result<Outcome, RegistryError> {
        let r = apply(&mut self.s, &Envelope::new(self.now, Actor::system(), c));
        let _ = self.s.drain_changes();
        r
    }
    fn ok(&mut self, c: Command) {
        let desc = format!("{c:?}");
        if let Err(e) = self.run(c) {
            panic!("{desc} failed: {e}");
        }
    }
    fn agency(&mut self, code: &str) {
        self.ok(Command::CreateAgency { code: code.into(), name: format!("Agency {code}"), parent: None, contacts: vec![] });
    }
    fn system(&mut self, id: &str, agency: &str) {
        self.ok(Command::CreateSystem {
            id: id.into(),
            agency: agency.into(),
            name: id.into(),
            description: String::new(),
            security: SecurityClearance::Level { level: 3, decision: String::new() },
            contacts: vec![],
        });
    }
    fn published(&mut self, ctx: &str, provider: &str, version: &str) {
        if !self.s.services.contains(ctx) {
            self.ok(Command::CreateService {
                service: ServiceSpec { context: ctx.into(), provider_system: provider.into(), name: ctx.into(), ..Default::default() },
            });
        }
        self.ok(Command::AddVersion {
            context: ctx.into(),
            version: version.into(),
            upstream: Upstreams { production: Some("http://10.0.0.5/api".into()), test: None },
            max_body_bytes: None,
        });
        self.ok(Command::PublishVersion { context: ctx.into(), version: version.into() });
    }
    fn basic() -> Self {
        let mut r = Reg::new();
        r.agency("000.00.00.H31");
        r.agency("000.00.01.H31");
        r.system("prov", "000.00.00.H31");
        r.system("cons", "000.00.01.H31");
        r.published("dancu", "prov", "v1");
        r
    }
    fn request(&mut self, id: &str) -> Result<Outcome, RegistryError> {
        self.run(Command::RequestSubscription {
            id: id.into(),
            consumer_system: "cons".into(),
            service: "dancu".into(),
            version: "v1".into(),
            environment: Environment::Production,
            purpose: "p".into(),
            scope: String::new(),
            contact: None,
            rate_limit: RateLimit::default(),
        })
    }
    fn decide(&mut self, id: &str, d: Decision, reason: &str) -> Result<Outcome, RegistryError> {
        self.run(Command::DecideSubscription { id: id.into(), decision: d, reason: reason.into() })
    }
}

#[test]
fn subscription_walks_request_provider_operator() {
    let mut r = Reg::basic();
    r.request("s1").expect("request");
    assert_eq!(r.s.subscriptions.get("s1").map(|s| s.state), Some(SubscriptionState::Requested));
    // The operator cannot grant before the provider approved.
    assert_eq!(r.decide("s1", Decision::Approve, "").unwrap_err().code(), "INVALID_TRANSITION");
    r.decide("s1", Decision::ProviderApprove, "").expect("provider");
    r.decide("s1", Decision::Approve, "").expect("operator");
    let s = r.s.subscriptions.get("s1").expect("sub");
    assert_eq!(s.state, SubscriptionState::Active);
    assert_eq!(s.history.len(), 3);
    // Duplicates of an open subscription are refused.
    assert_eq!(r.request("s2").unwrap_err().code(), "SUBSCRIPTION_EXISTS");
    // Revoking needs a reason; then a new request is possible.
    assert_eq!(r.decide("s1", Decision::Revoke, "").unwrap_err().code(), "INVALID_INPUT");
    r.decide("s1", Decision::Revoke, "no longer needed").expect("revoke");
    r.request("s2").expect("new request after revoke");
}

#[test]
fn decision_due_is_five_working_days() {
    let mut r = Reg::basic();
    r.request("s1").expect("request");
    // 2026-01-05 is a Monday (09:00 local): due the following Monday.
    assert_eq!(r.s.subscriptions.get("s1").map(|s| s.decision_due), chrono::NaiveDate::from_ymd_opt(2026, 1, 12));
}

#[test]
fn retirement_rules_notice_and_overlap() {
    let mut r = Reg::basic();
    // v1 alone: 60 days notice.
    let dep = |r: &mut Reg, days: i64, o: Option<&str>| {
        let at = r.now + Duration::days(days);
        r.run(Command::DeprecateVersion {
            context: "dancu".into(),
            version: "v1".into(),
            retire_at: at,
            reason: "replaced".into(),
            override_reason: o.map(Into::into),
        })
    };
    assert_eq!(dep(&mut r, 59, None).unwrap_err().code(), "NOTICE_PERIOD");
    // v2 published now: v1 must keep running 180 days.
    r.published("dancu", "prov", "v2");
    assert_eq!(dep(&mut r, 90, None).unwrap_err().code(), "OVERLAP_PERIOD");
    dep(&mut r, 181, None).expect("181 days is enough");
    let v1 = &r.s.services.get("dancu").expect("svc").versions["v1"];
    assert_eq!(v1.state, VersionState::Deprecated);
    // Retiring before the announced date is refused without override.
    r.now += Duration::days(100);
    let retire = |r: &mut Reg, o: Option<&str>| {
        r.run(Command::RetireVersion {
            context: "dancu".into(),
            version: "v1".into(),
            reason: "end".into(),
            override_reason: o.map(Into::into),
        })
    };
    assert_eq!(retire(&mut r, None).unwrap_err().code(), "NOTICE_PERIOD");
    r.now += Duration::days(82);
    retire(&mut r, None).expect("after the announced date");
    assert_eq!(r.s.services.get("dancu").expect("svc").versions["v1"].state, VersionState::Retired);
}

#[test]
fn override_is_recorded_and_retire_revokes_access() {
    let mut r = Reg::basic();
    r.request("s1").expect("request");
    r.decide("s1", Decision::ProviderApprove, "").expect("p");
    r.decide("s1", Decision::Approve, "").expect("o");
    r.ok(Command::RetireVersion {
        context: "dancu".into(),
        version: "v1".into(),
        reason: "security flaw".into(),
        override_reason: Some("CVE emergency".into()),
    });
    let v1 = &r.s.services.get("dancu").expect("svc").versions["v1"];
    assert_eq!(v1.history.last().and_then(|h| h.override_reason.clone()).as_deref(), Some("CVE emergency"));
    assert_eq!(r.s.subscriptions.get("s1").map(|s| s.state), Some(SubscriptionState::Revoked));
}

#[test]
fn failed_command_changes_nothing() {
    let mut r = Reg::basic();
    let before = format!("{:?}", r.s.agencies.values().collect::<Vec<_>>());
    // The batch's second command fails: the first must be rolled back too.
    let e = r
        .run(Command::Batch {
            label: "t".into(),
            commands: vec![
                Command::CreateAgency { code: "000.00.02.H31".into(), name: "x".into(), parent: None, contacts: vec![] },
                Command::CreateAgency { code: "bad".into(), name: "y".into(), parent: None, contacts: vec![] },
            ],
        })
        .unwrap_err();
    assert_eq!(e.code(), "INVALID_INPUT");
    assert!(e.to_string().contains("commands[1]"), "{e}");
    assert_eq!(before, format!("{:?}", r.s.agencies.values().collect::<Vec<_>>()));
    assert!(r.s.drain_changes().rows.is_empty());
}

#[test]
fn restructuring_keeps_history_and_moves_systems() {
    let mut r = Reg::basic();
    // Recode: the successor takes the systems.
    r.ok(Command::RenameAgency {
        code: "000.00.01.H31".into(),
        new_name: "Sở Tư pháp (mới)".into(),
        new_code: Some("000.00.11.H31".into()),
        reason: "QĐ 123".into(),
    });
    assert_eq!(r.s.systems.get("cons").map(|s| s.agency.as_str()), Some("000.00.11.H31"));
    let old = r.s.agencies.get("000.00.01.H31").expect("old");
    assert_eq!(old.status, AgencyStatus::Recoded);
    assert_eq!(old.successors, vec!["000.00.11.H31".to_string()]);
    // Split requires every system assigned.
    r.system("cons2", "000.00.11.H31");
    let into =
        vec![NewAgency { code: "000.00.21.H31".into(), name: "A".into() }, NewAgency { code: "000.00.22.H31".into(), name: "B".into() }];
    let e = r
        .run(Command::SplitAgency {
            code: "000.00.11.H31".into(),
            into: into.clone(),
            systems: [("cons".to_string(), "000.00.21.H31".to_string())].into(),
            reason: "r".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("cons2"), "{e}");
    assert!(!r.s.agencies.contains("000.00.21.H31"), "refused split left no trace");
    r.ok(Command::SplitAgency {
        code: "000.00.11.H31".into(),
        into,
        systems: [("cons".to_string(), "000.00.21.H31".to_string()), ("cons2".to_string(), "000.00.22.H31".to_string())].into(),
        reason: "r".into(),
    });
    assert_eq!(r.s.systems.get("cons2").map(|s| s.agency.as_str()), Some("000.00.22.H31"));
    // Merge into a new agency.
    r.ok(Command::MergeAgencies {
        sources: vec!["000.00.21.H31".into(), "000.00.22.H31".into()],
        into: NewAgency { code: "000.00.30.H31".into(), name: "Merged".into() },
        reason: "NQ 2025".into(),
    });
    let m = r.s.agencies.get("000.00.30.H31").expect("merged");
    assert_eq!(m.predecessors.len(), 2);
    assert_eq!(r.s.systems.get("cons").map(|s| s.agency.as_str()), Some("000.00.30.H31"));
    // Dissolve with systems needs a successor.
    assert_eq!(
        r.run(Command::DissolveAgency { code: "000.00.30.H31".into(), successor: None, reason: "r".into() }).unwrap_err().code(),
        "AGENCY_HAS_SYSTEMS"
    );
    r.ok(Command::DissolveAgency { code: "000.00.30.H31".into(), successor: Some("000.00.00.H31".into()), reason: "r".into() });
    assert_eq!(r.s.systems.get("cons").map(|s| s.agency.as_str()), Some("000.00.00.H31"));
    // Inactive agencies refuse new systems and point at their successor.
    let e = r
        .run(Command::CreateSystem {
            id: "x".into(),
            agency: "000.00.30.H31".into(),
            name: "x".into(),
            description: String::new(),
            security: SecurityClearance::Level { level: 1, decision: String::new() },
            contacts: vec![],
        })
        .unwrap_err();
    assert_eq!(e.code(), "AGENCY_INACTIVE");
    assert!(e.to_string().contains("000.00.00.H31"), "{e}");
}

#[test]
fn lockout_after_threshold() {
    let mut r = Reg::new();
    r.ok(Command::CreateUser {
        username: "u".into(),
        display_name: String::new(),
        role: Role::Operator,
        agency: None,
        password_hash: "$argon2id$v=19$x".into(),
    });
    for _ in 0..4 {
        r.ok(Command::RecordLoginFailure { username: "u".into(), threshold: 5, lock_seconds: 900 });
    }
    assert!(r.s.users.get("u").and_then(|u| u.locked_until).is_none());
    r.ok(Command::RecordLoginFailure { username: "u".into(), threshold: 5, lock_seconds: 900 });
    assert_eq!(r.s.users.get("u").and_then(|u| u.locked_until), Some(r.now + Duration::seconds(900)));
}

#[test]
fn apply_is_deterministic() {
    let a = Reg::basic();
    let b = Reg::basic();
    assert_eq!(format!("{:?}", a.s.services.values().collect::<Vec<_>>()), format!("{:?}", b.s.services.values().collect::<Vec<_>>()));
}

#[test]
fn newer_format_is_refused() {
    let mut s = State::default();
    let mut env = Envelope::new(t0(), Actor::system(), Command::SetHolidays { holidays: vec![] });
    env.format = FORMAT + 1;
    assert_eq!(apply(&mut s, &env).unwrap_err().code(), "UNSUPPORTED_FORMAT");
}

fn assert_subset(old: &serde_json::Value, new: &serde_json::Value, path: &str) {
    match (old, new) {
        (serde_json::Value::Object(o), serde_json::Value::Object(n)) => {
            for (k, v) in o {
                let nv = n.get(k).unwrap_or_else(|| panic!("{path}.{k} was written by an older node and is no longer serialised"));
                assert_subset(v, nv, &format!("{path}.{k}"));
            }
        }
        (serde_json::Value::Array(o), serde_json::Value::Array(n)) => {
            assert_eq!(o.len(), n.len(), "{path}: array length changed");
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path} changed meaning"),
    }
}

/// The log format: these envelopes, once written by a node, must read back identically forever.
#[test]
fn golden_log_format() {
    let golden = include_str!("../../tests/golden/commands-v1.jsonl");
    let mut count = 0;
    for line in golden.lines().filter(|l| !l.trim().is_empty()) {
        let env: Envelope = serde_json::from_str(line).unwrap_or_else(|e| panic!("golden entry no longer parses ({e}): {line}"));
        let again = serde_json::to_value(&env).expect("serialise");
        let orig: serde_json::Value = serde_json::from_str(line).expect("json");
        // New fields may appear (with defaults); nothing written before may change or vanish.
        assert_subset(&orig, &again, "$");
        let reread: Envelope = serde_json::from_value(again).expect("re-read");
        assert_eq!(reread, env, "round trip changed {line}");
        count += 1;
    }
    assert!(count >= 10, "golden file too small");
}

fn probe(kind: ProbeKind, target: &str) -> ProbeSpec {
    ProbeSpec { kind, target: target.into(), interval_s: 30, timeout_ms: 2000, expect_status: 200, tls_warn_days: 21 }
}

fn changed(target: &str, from: Option<ProbeHealth>, to: ProbeHealth, at: Timestamp, notify: bool) -> Command {
    Command::ProbeStatusChanged {
        target: target.into(),
        from,
        to,
        at,
        notify,
        flapping: false,
        reason: format!("now {}", to.as_str()),
        cert_days_left: None,
        node: "node-a".into(),
    }
}

#[test]
fn probes_are_set_validated_listed_and_cleared() {
    let mut r = Reg::basic();
    let sys = ProbeOwner::System { id: "prov".into() };
    let ver = ProbeOwner::Version { service: "dancu".into(), version: "v1".into() };
    let bad = ProbeSpec { interval_s: 5, ..probe(ProbeKind::Http, "http://10.0.0.5/status") };
    let e = r.run(Command::SetProbe { owner: sys.clone(), spec: bad }).unwrap_err();
    assert_eq!(e.code(), "INVALID_INPUT");
    assert!(e.to_string().contains("interval_s"), "{e}");
    let e = r.run(Command::SetProbe { owner: ProbeOwner::System { id: "nope".into() }, spec: probe(ProbeKind::Tcp, "h:1") }).unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND");
    r.ok(Command::SetProbe { owner: sys.clone(), spec: probe(ProbeKind::Http, "http://10.0.0.5/status") });
    r.ok(Command::SetProbe { owner: ver.clone(), spec: probe(ProbeKind::Tls, "10.0.0.5:443") });
    let targets: Vec<(String, String, String)> =
        r.s.probe_targets().into_iter().map(|t| (t.target, t.system.to_owned(), t.agency.to_owned())).collect();
    assert_eq!(
        targets,
        vec![
            ("system:prov".into(), "prov".into(), "000.00.00.H31".into()),
            ("service:dancu:v1".into(), "prov".into(), "000.00.00.H31".into())
        ]
    );
    assert_eq!(ProbeOwner::parse("service:dancu:v1"), Some(ver.clone()));
    assert_eq!(ProbeOwner::parse(&sys.target_id()), Some(sys.clone()));
    assert_eq!(ProbeOwner::parse("sys:x"), None);

    // A disabled system is not probed.
    r.ok(Command::UpdateSystem { id: "prov".into(), name: None, description: None, security: None, contacts: None, disabled: Some(true) });
    assert_eq!(r.s.probe_targets().len(), 1);

    r.ok(changed("service:dancu:v1", None, ProbeHealth::Up, r.now, true));
    r.ok(Command::ClearProbe { owner: ver.clone() });
    assert!(r.s.probe_status.get("service:dancu:v1").is_none(), "clearing a probe forgets its status");
    assert_eq!(r.run(Command::ClearProbe { owner: ver }).unwrap_err().code(), "NOT_FOUND");
}

#[test]
fn a_status_change_is_recorded_once_with_what_a_notice_needs() {
    let mut r = Reg::basic();
    let t = "system:prov";
    assert_eq!(r.run(changed(t, None, ProbeHealth::Up, r.now, true)).unwrap_err().code(), "NOT_FOUND", "no probe, no status");
    r.ok(Command::SetProbe { owner: ProbeOwner::System { id: "prov".into() }, spec: probe(ProbeKind::Http, "http://10.0.0.5/") });
    let at = r.now;
    r.ok(changed(t, None, ProbeHealth::Up, at, true));
    // A second node that saw the same first result proposes the same change: refused.
    assert_eq!(r.run(changed(t, None, ProbeHealth::Up, at, true)).unwrap_err().code(), "PROBE_STATUS_STALE");
    let later = at + Duration::minutes(5);
    r.ok(Command::ProbeStatusChanged {
        target: t.into(),
        from: Some(ProbeHealth::Up),
        to: ProbeHealth::Down,
        at: later,
        notify: true,
        flapping: false,
        reason: "http://10.0.0.5/ answered 503, expected 200".into(),
        cert_days_left: None,
        node: "node-b".into(),
    });
    assert_eq!(r.run(changed(t, Some(ProbeHealth::Up), ProbeHealth::Down, later, true)).unwrap_err().code(), "PROBE_STATUS_STALE");
    assert_eq!(r.run(changed(t, Some(ProbeHealth::Down), ProbeHealth::Down, later, true)).unwrap_err().code(), "PROBE_STATUS_STALE");
    let st = r.s.probe_status.get(t).expect("status").clone();
    assert_eq!((st.status, st.since, st.flapping), (ProbeHealth::Down, later, false));
    let last = st.events.last().expect("event");
    assert_eq!(
        (last.seq, last.from, last.to, last.system.as_str(), last.agency.as_str(), last.node.as_str()),
        (2, Some(ProbeHealth::Up), ProbeHealth::Down, "prov", "000.00.00.H31", "node-b")
    );
    assert!(last.reason.contains("503"));

    // Flapping starts without a status change; the status's `since` stays.
    let mut flap = changed(t, Some(ProbeHealth::Down), ProbeHealth::Down, later + Duration::minutes(1), true);
    if let Command::ProbeStatusChanged { flapping, .. } = &mut flap {
        *flapping = true;
    }
    r.ok(flap);
    let st = r.s.probe_status.get(t).expect("status");
    assert!(st.flapping);
    assert_eq!((st.since, st.events.len()), (later, 3));

    // Events are bounded.
    let mut from = ProbeHealth::Down;
    for i in 0..(ProbeStatus::MAX_EVENTS + 20) {
        let to = if from == ProbeHealth::Down { ProbeHealth::Up } else { ProbeHealth::Down };
        let mut c = changed(t, Some(from), to, later + Duration::minutes(2 + i as i64), false);
        if let Command::ProbeStatusChanged { flapping, .. } = &mut c {
            *flapping = true;
        }
        r.ok(c);
        from = to;
    }
    let st = r.s.probe_status.get(t).expect("status");
    assert_eq!(st.events.len(), ProbeStatus::MAX_EVENTS);
    assert_eq!(st.events.last().map(|e| e.seq), Some(3 + ProbeStatus::MAX_EVENTS as u64 + 20));
}

/// Traffic rollups (report): a republished rollup replaces the older copy, a delayed older copy
/// never wins, and days beyond `keep_days` are forgotten.
#[test]
fn traffic_rollups_replace_by_recency_and_expire() {
    use super::traffic::{TrafficRollup, TrafficRow};
    let mut r = Reg::new();
    let day = traffic::local_date(r.now);
    let rollup = |day: chrono::NaiveDate, count: u64, as_of: Timestamp| TrafficRollup {
        id: TrafficRollup::key_of(day, "node-1"),
        node: "node-1".into(),
        day,
        as_of,
        complete: false,
        unlogged: 0,
        rows: vec![TrafficRow { service: "dancu".into(), outcome: "OK".into(), count, ..TrafficRow::default() }],
    };
    let publish = |x: TrafficRollup| Command::PublishTrafficRollup { rollup: x, keep_days: 400 };
    let key = TrafficRollup::key_of(day, "node-1");
    r.ok(publish(rollup(day, 5, r.now)));
    r.ok(publish(rollup(day, 9, r.now + Duration::minutes(15))));
    assert_eq!(r.s.traffic_rollups.get(&key).map(|x| x.rows[0].count), Some(9));
    r.ok(publish(rollup(day, 5, r.now)));
    assert_eq!(r.s.traffic_rollups.get(&key).map(|x| x.rows[0].count), Some(9), "an older copy never wins");
    // A wrong key and a future day are refused.
    let mut bad = rollup(day, 1, r.now);
    bad.id = "x".into();
    assert!(r.run(publish(bad)).is_err());
    assert!(r.run(publish(rollup(day + Duration::days(3), 1, r.now))).is_err());
    // 401 days later, publishing a new day forgets the old one.
    r.now += Duration::days(401);
    let later = traffic::local_date(r.now);
    r.ok(publish(rollup(later, 1, r.now)));
    assert!(r.s.traffic_rollups.get(&key).is_none());
    assert_eq!(r.s.traffic_rollups.len(), 1);
    assert!(Command::PublishTrafficRollup { rollup: rollup(later, 1, r.now), keep_days: 400 }.is_bookkeeping());
}
