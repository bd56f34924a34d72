//! The replicated outbox: notices built and queued inside `apply`, so every node holds the same
//! outbox and none is lost when a node crashes or the leader changes (ARCHITECTURE.md,
//! "Notifications").
//!
//! Invariants: pure (the instant comes from the envelope); a notice's `id` is its dedup key and
//! [`queue`] never replaces an existing one, so one event yields at most one notice; every
//! notice goes to the operator (email and webhook) besides the affected units' contacts and
//! webhooks; subjects and bodies are Vietnamese then English.
//!
//! Wiring for the probes (O2): the probes' applied status-change command calls
//! [`on_probe_change`] with a [`ProbeChange`]; the leader's scheduler proposes
//! `FlushProbeAlert` when [`probe_alert_due`] says a held-down alert is due.

use std::collections::BTreeSet;

use chrono::{Duration, NaiveDate};
use serde_json::json;

use super::model::*;
use super::rules;
use super::state::State;

/// After a probe notice for a target, later changes of that target wait this long; then only
/// the status it settled in is notified (flapping suppression).
pub const FLAP_HOLD_SECS: i64 = 300;
/// Days before a certificate's expiry at which a notice is sent (once each).
pub const CERT_THRESHOLDS: [i64; 4] = [30, 14, 7, 1];

/// Puts `notice` in the outbox unless a notice with the same dedup key exists. Returns whether
/// it was queued.
pub fn queue(state: &mut State, notice: Notice) -> bool {
    if state.notices.contains(&notice.id) {
        return false;
    }
    state.notices.put(notice);
    true
}

fn pending(channel: Channel) -> Delivery {
    Delivery { channel, state: DeliveryState::Pending, attempts: 0, next_at: None, last_error: String::new(), sent_at: None }
}

/// Deliveries for the contacts and webhooks of these agencies and systems, plus the operator.
/// Addresses are de-duplicated (case-insensitively) and sorted, so every node builds the same list.
pub fn recipients(state: &State, agencies: &BTreeSet<String>, systems: &BTreeSet<String>, extra: &[Contact]) -> Vec<Delivery> {
    let mut emails: BTreeSet<String> = BTreeSet::new();
    let mut hooks: BTreeSet<(String, String)> = BTreeSet::new();
    let mut add = |c: &Contact| {
        let e = c.email.trim();
        if e.contains('@') {
            emails.insert(e.to_ascii_lowercase());
        }
    };
    for code in agencies {
        if let Some(a) = state.agencies.get(code) {
            a.contacts.iter().for_each(&mut add);
            for w in &a.webhooks {
                hooks.insert((a.code.clone(), w.url.clone()));
            }
        }
    }
    for id in systems {
        if let Some(s) = state.systems.get(id) {
            s.contacts.iter().for_each(&mut add);
        }
    }
    extra.iter().for_each(&mut add);
    let mut out: Vec<Delivery> = emails.into_iter().map(|to| pending(Channel::Email { to })).collect();
    out.extend(hooks.into_iter().map(|(agency, url)| pending(Channel::Webhook { agency, url })));
    out.push(pending(Channel::OperatorEmail));
    out.push(pending(Channel::OperatorWebhook));
    out
}

// ---------------------------------------------------------------------------------------------
// Maintenance notices

/// Agencies and systems affected by a scope, with the subscriptions' own contacts: a service's
/// provider and the consumers with an open subscription to it; nodes or platform: every active
/// agency.
pub fn affected(state: &State, scope: &MaintenanceScope) -> (BTreeSet<String>, BTreeSet<String>, Vec<Contact>) {
    let mut agencies = BTreeSet::new();
    let mut systems = BTreeSet::new();
    let mut contacts = Vec::new();
    match scope {
        MaintenanceScope::Platform | MaintenanceScope::Nodes { .. } => {
            agencies.extend(state.agencies.values().filter(|a| a.status == AgencyStatus::Active).map(|a| a.code.clone()));
        }
        MaintenanceScope::Services { services } => {
            for ctx in services {
                if let Some(svc) = state.services.get(ctx) {
                    systems.insert(svc.provider_system.clone());
                    if let Some(a) = state.agency_of_system(&svc.provider_system) {
                        agencies.insert(a.to_owned());
                    }
                }
                for sub in state.subscriptions.values().filter(|s| &s.service == ctx && s.state.is_open()) {
                    systems.insert(sub.consumer_system.clone());
                    if let Some(a) = state.agency_of_system(&sub.consumer_system) {
                        agencies.insert(a.to_owned());
                    }
                    if let Some(c) = &sub.contact {
                        contacts.push(c.clone());
                    }
                }
            }
        }
    }
    (agencies, systems, contacts)
}

fn scope_text(scope: &MaintenanceScope) -> Bilingual {
    match scope {
        MaintenanceScope::Platform => Bilingual { vi: "toàn bộ nền tảng LGSP".into(), en: "the whole LGSP platform".into() },
        MaintenanceScope::Nodes { nodes } => Bilingual {
            vi: format!("các nút {} (dịch vụ vẫn chạy trên các nút khác)", nodes.join(", ")),
            en: format!("nodes {} (services keep running on the other nodes)", nodes.join(", ")),
        },
        MaintenanceScope::Services { services } => {
            Bilingual { vi: format!("dịch vụ {}", services.join(", ")), en: format!("services {}", services.join(", ")) }
        }
    }
}

/// Stages of a window's life that produce a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Announced,
    /// A change; the revision number makes each change its own notice.
    Changed(u32),
    Cancelled,
    Reminder,
    Started,
    Ended,
}

impl Stage {
    fn key(self) -> String {
        match self {
            Stage::Announced => "announced".into(),
            Stage::Changed(r) => format!("changed-{r}"),
            Stage::Cancelled => "cancelled".into(),
            Stage::Reminder => "reminder".into(),
            Stage::Started => "start".into(),
            Stage::Ended => "end".into(),
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Stage::Announced => "maintenance.announced",
            Stage::Changed(_) => "maintenance.changed",
            Stage::Cancelled => "maintenance.cancelled",
            Stage::Reminder => "maintenance.reminder",
            Stage::Started => "maintenance.started",
            Stage::Ended => "maintenance.ended",
        }
    }
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Stage::Announced => ("Thông báo bảo trì", "Maintenance announced"),
            Stage::Changed(_) => ("Thay đổi lịch bảo trì", "Maintenance changed"),
            Stage::Cancelled => ("Hủy bảo trì", "Maintenance cancelled"),
            Stage::Reminder => ("Nhắc lịch bảo trì", "Maintenance reminder"),
            Stage::Started => ("Bắt đầu bảo trì", "Maintenance started"),
            Stage::Ended => ("Kết thúc bảo trì", "Maintenance ended"),
        }
    }
}

/// The notice for one stage of a window, addressed to the units its scope affects.
pub fn maintenance_notice(state: &State, w: &MaintenanceWindow, stage: Stage, at: Timestamp) -> Notice {
    let (agencies, systems, contacts) = affected(state, &w.scope);
    let (vi_word, en_word) = stage.words();
    let scope = scope_text(&w.scope);
    let (start, end) = (rules::local_time(w.start), rules::local_time(w.end));
    let mut vi = format!("{vi_word}: {}\nPhạm vi: {}\nTừ {start} đến {end}\nLý do: {}\n", w.id, scope.vi, w.reason.vi);
    let mut en = format!("{en_word}: {}\nScope: {}\nFrom {start} to {end}\nReason: {}\n", w.id, scope.en, w.reason.en);
    if w.emergency {
        vi.push_str(&format!("Bảo trì khẩn cấp (thông báo ngắn hơn thời hạn tối thiểu): {}\n", w.emergency_reason));
        en.push_str(&format!("Emergency maintenance (shorter than the minimum notice): {}\n", w.emergency_reason));
    }
    if w.office_hours {
        vi.push_str("Lưu ý: thời gian bảo trì trùng giờ hành chính (thứ Hai–thứ Sáu 07:30–17:00).\n");
        en.push_str("Warning: the window falls within office hours (Mon–Fri 07:30–17:00 Vietnam time).\n");
    }
    if matches!(w.scope, MaintenanceScope::Platform | MaintenanceScope::Services { .. }) && stage != Stage::Cancelled {
        vi.push_str("Trong thời gian bảo trì, các yêu cầu tới dịch vụ bị ảnh hưởng nhận HTTP 503 (MAINTENANCE) kèm Retry-After.\n");
        en.push_str("During the window, calls to affected services answer HTTP 503 (MAINTENANCE) with Retry-After.\n");
    }
    Notice {
        id: format!("maintenance/{}/{}", w.id, stage.key()),
        kind: stage.kind().into(),
        subject: Bilingual {
            vi: format!("[LGSP] {vi_word}: {} ({start} – {end})", scope.vi),
            en: format!("[LGSP] {en_word}: {} ({start} – {end})", scope.en),
        },
        body: Bilingual { vi, en },
        data: json!({
            "window": w.id,
            "stage": stage.key(),
            "scope": w.scope,
            "start": w.start,
            "end": w.end,
            "reason": w.reason,
            "emergency": w.emergency,
            "office_hours": w.office_hours,
            "cancelled": w.cancelled_at.is_some(),
        }),
        created_at: at,
        deliveries: recipients(state, &agencies, &systems, &contacts),
    }
}

// ---------------------------------------------------------------------------------------------
// Probe notices (O2)

/// A probe's applied status change, as the probes hand it to [`on_probe_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeChange {
    /// The probed target's stable name (e.g. `system/hp-dancu` or a service context).
    pub target: String,
    /// The system whose contacts (and its agency's) are told.
    pub system: String,
    pub from: ProbeHealth,
    pub to: ProbeHealth,
    pub at: Timestamp,
    pub reason: String,
    /// Days until the target's TLS certificate expires, when the probe saw one.
    pub cert_days_left: Option<i64>,
    /// The target's registration asks for notices at all.
    pub notify: bool,
}

/// The notice for a target's status (`down`, `degraded`, or `up` = recovered).
pub fn probe_notice(
    state: &State,
    target: &str,
    system: &str,
    status: ProbeHealth,
    since: Timestamp,
    reason: &str,
    at: Timestamp,
) -> Notice {
    let (vi_word, en_word, kind) = match status {
        ProbeHealth::Down => ("Mất kết nối", "Connection lost", "probe.down"),
        ProbeHealth::Degraded => ("Kết nối có nguy cơ", "Connection at risk", "probe.degraded"),
        ProbeHealth::Up => ("Kết nối đã phục hồi", "Connection recovered", "probe.recovered"),
    };
    let when = rules::local_time(since);
    let (agencies, systems) = probe_owners(state, system);
    Notice {
        id: format!("probe/{target}/{}/{}", status.as_str(), since.timestamp()),
        kind: kind.into(),
        subject: Bilingual { vi: format!("[LGSP] {vi_word}: {target}"), en: format!("[LGSP] {en_word}: {target}") },
        body: Bilingual {
            vi: format!("{vi_word}: {target} (hệ thống {system})\nTừ: {when}\nChi tiết: {reason}\n"),
            en: format!("{en_word}: {target} (system {system})\nSince: {when}\nDetail: {reason}\n"),
        },
        data: json!({ "target": target, "system": system, "status": status.as_str(), "since": since, "reason": reason }),
        created_at: at,
        deliveries: recipients(state, &agencies, &systems, &[]),
    }
}

/// The threshold a certificate with `days_left` days to go has crossed (the smallest one it is
/// within), `None` while it has more days left than the largest.
pub fn cert_threshold(days_left: i64) -> Option<i64> {
    CERT_THRESHOLDS.iter().rev().find(|t| days_left <= **t).copied()
}

/// The (Vietnam) date a certificate seen at `at` with `days_left` days to go expires. Two checks
/// of the same certificate may name dates a day apart, as `days_left` is rounded down.
fn cert_expiry(days_left: i64, at: Timestamp) -> NaiveDate {
    rules::local_date(at + Duration::days(days_left.max(0)))
}

/// Whether a certificate seen with `days_left` days to go at `at` calls for a notice, given the
/// one already queued for its target: a threshold not notified yet for this certificate (its
/// expiry date within a day of the notified one), or any threshold of another certificate.
pub fn cert_notice_due(notified: Option<&CertNotified>, days_left: i64, at: Timestamp) -> bool {
    let Some(threshold) = cert_threshold(days_left) else { return false };
    match notified {
        None => true,
        Some(n) => (n.expires - cert_expiry(days_left, at)).num_days().abs() > 1 || threshold < n.threshold_days,
    }
}

/// Queues the certificate-expiry notice of a confirmed target when [`cert_notice_due`], and
/// records it on the target's alert. `false`: nothing was due (or the target has no alert yet,
/// i.e. no confirmed status).
pub fn on_cert_checked(state: &mut State, target: &str, system: &str, days_left: i64, at: Timestamp) -> bool {
    let Some(mut alert) = state.probe_alerts.get(target).cloned() else { return false };
    if !cert_notice_due(alert.cert_notified.as_ref(), days_left, at) {
        return false;
    }
    let Some(notice) = cert_notice(state, target, system, days_left, at) else { return false };
    let threshold_days = cert_threshold(days_left).unwrap_or(days_left);
    alert.cert_notified = Some(CertNotified { threshold_days, expires: cert_expiry(days_left, at) });
    state.probe_alerts.put(alert);
    queue(state, notice);
    true
}

/// The notice that a target's certificate expires in `days_left` days (one per threshold
/// crossed and expiry date).
pub fn cert_notice(state: &State, target: &str, system: &str, days_left: i64, at: Timestamp) -> Option<Notice> {
    let threshold = cert_threshold(days_left)?;
    let expires = cert_expiry(days_left, at);
    let (agencies, systems) = probe_owners(state, system);
    Some(Notice {
        id: format!("probe/{target}/cert/{expires}/{threshold}"),
        kind: "probe.cert_expiring".into(),
        subject: Bilingual {
            vi: format!("[LGSP] Chứng thư số sắp hết hạn: {target} (còn {days_left} ngày)"),
            en: format!("[LGSP] Certificate expiring: {target} ({days_left} days left)"),
        },
        body: Bilingual {
            vi: format!("Chứng thư số TLS của {target} (hệ thống {system}) hết hạn khoảng ngày {expires}; hãy gia hạn.\n"),
            en: format!("The TLS certificate of {target} (system {system}) expires around {expires}; renew it.\n"),
        },
        data: json!({ "target": target, "system": system, "days_left": days_left, "expires": expires, "threshold_days": threshold }),
        created_at: at,
        deliveries: recipients(state, &agencies, &systems, &[]),
    })
}

fn probe_owners(state: &State, system: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let agencies = state.agency_of_system(system).map(|a| BTreeSet::from([a.to_owned()])).unwrap_or_default();
    (agencies, BTreeSet::from([system.to_owned()]))
}

/// Records a probe's status change and queues what it should notify: a change the probes
/// confirmed as notifiable (`notify`) at once, `recovered` only after a `down` or `degraded`
/// was notified, the same status twice never (a probe moving to another node reports it
/// again). Changes recorded while the target flaps (`notify` false: the probes' tracker saw too
/// many changes within the hour) notify nothing now; the leader's scheduler notifies the status
/// the target settled in, at most once per [`FLAP_HOLD_SECS`].
pub fn on_probe_change(state: &mut State, c: &ProbeChange) {
    let mut alert = state.probe_alerts.get(&c.target).cloned().unwrap_or(ProbeAlert {
        target: c.target.clone(),
        system: c.system.clone(),
        notified: ProbeHealth::Up,
        notified_at: None,
        current: c.from,
        current_since: c.at,
        reason: String::new(),
        cert_notified: None,
    });
    if alert.current != c.to {
        alert.current = c.to;
        alert.current_since = c.at;
    }
    alert.system = c.system.clone();
    alert.reason = c.reason.clone();
    state.probe_alerts.put(alert);
    if c.notify {
        if let Some(days_left) = c.cert_days_left {
            on_cert_checked(state, &c.target, &c.system, days_left, c.at);
        }
        flush(state, &c.target, c.at, false);
    }
}

/// When a held-down alert for `target` should be flushed: `None` if nothing is waiting.
pub fn probe_alert_due(state: &State, target: &str, _now: Timestamp) -> Option<Timestamp> {
    let a = state.probe_alerts.get(target)?;
    if a.current == a.notified {
        return None;
    }
    Some(a.notified_at.map(|t| t + Duration::seconds(FLAP_HOLD_SECS)).unwrap_or(a.current_since))
}

/// Notifies the target's settled status if it differs from the last notified one and the
/// hold-down is over. Idempotent.
pub fn flush_probe_alert(state: &mut State, target: &str, at: Timestamp) {
    flush(state, target, at, true);
}

/// Notifies the settled status if it differs from the last notified one; with `hold`, not
/// within [`FLAP_HOLD_SECS`] of the last notice.
fn flush(state: &mut State, target: &str, at: Timestamp, hold: bool) {
    let Some(mut a) = state.probe_alerts.get(target).cloned() else { return };
    if a.current == a.notified || (hold && a.notified_at.is_some_and(|t| at < t + Duration::seconds(FLAP_HOLD_SECS))) {
        return;
    }
    let n = probe_notice(state, &a.target, &a.system, a.current, a.current_since, &a.reason, at);
    queue(state, n);
    a.notified = a.current;
    a.notified_at = Some(at);
    state.probe_alerts.put(a);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    fn registry() -> State {
        let mut s = State::default();
        s.agencies.put(Agency {
            code: "000.00.00.H31".into(),
            name: "Sở A".into(),
            parent: None,
            status: AgencyStatus::Active,
            suspended: false,
            contacts: vec![Contact { name: "IT".into(), email: "it@a.example".into(), phone: String::new() }],
            predecessors: vec![],
            successors: vec![],
            created_at: t(0, 0),
            history: vec![],
            webhooks: vec![Webhook { url: "https://a.example/hook".into(), secret: Sealed { nonce: "n".into(), ciphertext: "c".into() } }],
        });
        s.systems.put(System {
            id: "sys-a".into(),
            agency: "000.00.00.H31".into(),
            name: "A".into(),
            description: String::new(),
            security: SecurityClearance::Level { level: 2, decision: String::new() },
            contacts: vec![Contact { name: "Ops".into(), email: "OPS@a.example".into(), phone: String::new() }],
            disabled: false,
            created_at: t(0, 0),
            probe: None,
        });
        s
    }

    fn change(from: ProbeHealth, to: ProbeHealth, at: Timestamp) -> ProbeChange {
        ProbeChange {
            target: "system/sys-a".into(),
            system: "sys-a".into(),
            from,
            to,
            at,
            reason: "HTTP 500".into(),
            cert_days_left: None,
            notify: true,
        }
    }

    fn kinds(s: &State) -> Vec<String> {
        let mut v: Vec<(Timestamp, String)> = s.notices.values().map(|n| (n.created_at, n.kind.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    #[test]
    fn each_certificate_threshold_is_notified_once_per_certificate() {
        let mut s = registry();
        // Checks at 10:00, 17:00 and 00:00 Vietnam time: the expiry date they compute from whole
        // days left moves by one day between checks of the same certificate.
        let day = |d: i64| t(3, 0) + Duration::days(d) + Duration::hours((d % 3) * 7);
        let cert = |s: &State| s.notices.values().filter(|n| n.kind == "probe.cert_expiring").count();
        // No confirmed status yet: nothing to attach the notice to.
        assert!(!on_cert_checked(&mut s, "system/sys-a", "sys-a", 20, day(0)));
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Up, day(0)));
        assert_eq!(cert(&s), 0);
        // The certificate expires at day 40: 40 days left is above every threshold.
        let seen = |s: &mut State, d: i64| on_cert_checked(s, "system/sys-a", "sys-a", 40 - d, day(d));
        let notified: Vec<i64> = (0..=40).filter(|d| seen(&mut s, *d)).map(|d| 40 - d).collect();
        assert_eq!(notified, [30, 14, 7, 1], "one notice as each threshold is crossed, none repeated");
        assert_eq!(cert(&s), 4);
        // Checked again (another node, a restart): nothing more.
        assert!(!seen(&mut s, 39) && !seen(&mut s, 40));
        // Renewed: a certificate expiring a year later starts over at its own thresholds.
        assert!(!on_cert_checked(&mut s, "system/sys-a", "sys-a", 365, day(41)));
        assert!(on_cert_checked(&mut s, "system/sys-a", "sys-a", 30, day(41 + 335)));
        assert_eq!(cert(&s), 5);
        let due = |n: Option<&CertNotified>, days| cert_notice_due(n, days, t(3, 0));
        assert!(!due(None, 31) && due(None, 30));
        let n = CertNotified { threshold_days: 14, expires: cert_expiry(10, t(3, 0)) };
        assert!(!due(Some(&n), 10) && !due(Some(&n), 9) && due(Some(&n), 7), "same certificate: only a lower threshold");
        assert!(due(Some(&n), 20), "another certificate (expiring 10 days later) is notified at its own threshold");
    }

    #[test]
    fn probe_notices_for_down_degraded_recovered_and_certificates() {
        let s = registry();
        let down = probe_notice(&s, "system/sys-a", "sys-a", ProbeHealth::Down, t(3, 0), "timeout", t(3, 0));
        assert_eq!(down.kind, "probe.down");
        assert!(down.subject.vi.contains("Mất kết nối") && down.subject.en.contains("Connection lost"), "{:?}", down.subject);
        let channels: Vec<&Channel> = down.deliveries.iter().map(|d| &d.channel).collect();
        assert_eq!(
            channels,
            [
                &Channel::Email { to: "it@a.example".into() },
                &Channel::Email { to: "ops@a.example".into() },
                &Channel::Webhook { agency: "000.00.00.H31".into(), url: "https://a.example/hook".into() },
                &Channel::OperatorEmail,
                &Channel::OperatorWebhook,
            ]
        );
        assert!(down.deliveries.iter().all(|d| d.state == DeliveryState::Pending));
        assert_eq!(probe_notice(&s, "x", "sys-a", ProbeHealth::Degraded, t(3, 0), "", t(3, 0)).kind, "probe.degraded");
        let up = probe_notice(&s, "x", "sys-a", ProbeHealth::Up, t(3, 0), "", t(3, 0));
        assert_eq!(up.kind, "probe.recovered");
        assert!(up.body.en.contains("10:00 (UTC+7)"), "local time in the body: {}", up.body.en);
        let cert = cert_notice(&s, "x", "sys-a", 12, t(3, 0)).expect("12 days is within the 14-day threshold");
        assert_eq!(cert.kind, "probe.cert_expiring");
        assert!(cert.id.ends_with("/14"), "{}", cert.id);
        assert!(cert_notice(&s, "x", "sys-a", 45, t(3, 0)).is_none(), "nothing 45 days ahead");
    }

    #[test]
    fn one_notice_per_change_even_when_reported_twice() {
        let mut s = registry();
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Down, t(3, 0)));
        // Another node's probe reports the same down state again.
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Down, t(3, 1)));
        on_probe_change(&mut s, &change(ProbeHealth::Down, ProbeHealth::Down, t(3, 2)));
        assert_eq!(kinds(&s), ["probe.down"]);
        // Recovery after the hold-down: notified at once.
        on_probe_change(&mut s, &change(ProbeHealth::Down, ProbeHealth::Up, t(3, 10)));
        assert_eq!(kinds(&s), ["probe.down", "probe.recovered"]);
    }

    #[test]
    fn recovery_without_a_prior_alert_is_silent_and_notify_false_is_silent() {
        let mut s = registry();
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Up, t(3, 0)));
        assert!(s.notices.is_empty());
        let mut c = change(ProbeHealth::Up, ProbeHealth::Down, t(3, 1));
        c.notify = false;
        on_probe_change(&mut s, &c);
        assert!(s.notices.is_empty());
    }

    #[test]
    fn a_confirmed_recovery_is_notified_at_once() {
        let mut s = registry();
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Down, t(3, 0)));
        on_probe_change(&mut s, &change(ProbeHealth::Down, ProbeHealth::Up, t(3, 1)));
        assert_eq!(kinds(&s), ["probe.down", "probe.recovered"]);
    }

    #[test]
    fn flapping_is_held_down_and_the_settled_state_sent_later() {
        let mut s = registry();
        on_probe_change(&mut s, &change(ProbeHealth::Up, ProbeHealth::Down, t(3, 0)));
        // The probes' tracker reports the following changes as flapping (notify = false).
        for (from, to, m) in
            [(ProbeHealth::Down, ProbeHealth::Up, 1), (ProbeHealth::Up, ProbeHealth::Down, 2), (ProbeHealth::Down, ProbeHealth::Up, 3)]
        {
            let mut c = change(from, to, t(3, m));
            c.notify = false;
            on_probe_change(&mut s, &c);
        }
        assert_eq!(kinds(&s), ["probe.down"], "changes while flapping wait");
        assert_eq!(probe_alert_due(&s, "system/sys-a", t(3, 3)), Some(t(3, 5)));
        flush_probe_alert(&mut s, "system/sys-a", t(3, 4));
        assert_eq!(kinds(&s), ["probe.down"], "not before the hold-down ends");
        flush_probe_alert(&mut s, "system/sys-a", t(3, 5));
        flush_probe_alert(&mut s, "system/sys-a", t(3, 6));
        assert_eq!(kinds(&s), ["probe.down", "probe.recovered"], "the settled state, once");
        assert_eq!(probe_alert_due(&s, "system/sys-a", t(3, 6)), None);
    }

    #[test]
    fn queue_deduplicates_by_id() {
        let mut s = registry();
        let n = probe_notice(&s, "x", "sys-a", ProbeHealth::Down, t(3, 0), "", t(3, 0));
        assert!(queue(&mut s, n.clone()));
        assert!(!queue(&mut s, n));
        assert_eq!(s.notices.len(), 1);
    }
}
