//! The public maintenance feed on the gateway listener (O3): `GET /maintenance.json` and
//! `GET /maintenance.atom` (Atom 1.0, RFC 4287), unauthenticated.
//!
//! Invariants: built from the gateway view only (no storage, works without quorum); lists
//! upcoming and current windows and those ended or cancelled in the last [`KEEP_DAYS`] days;
//! says nothing the notices do not (no contacts, no recipients).

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::body::{full, GwBody};
use super::view::View;
use crate::registry::{rules, MaintenanceWindow};

/// Ended or cancelled windows stay in the feed this long.
pub const KEEP_DAYS: i64 = 30;

fn updated(w: &MaintenanceWindow) -> DateTime<Utc> {
    [Some(w.announced_at), w.updated_at, w.cancelled_at].into_iter().flatten().max().unwrap_or(w.announced_at)
}

fn listed(view: &View, now: DateTime<Utc>) -> impl Iterator<Item = &MaintenanceWindow> {
    let horizon = now - Duration::days(KEEP_DAYS);
    view.maintenance_windows().iter().map(|w| w.as_ref()).filter(move |w| w.end > horizon && w.cancelled_at.is_none_or(|c| c > horizon))
}

/// The feed as JSON or Atom.
pub fn response(view: &View, atom: bool, now: DateTime<Utc>) -> Response<GwBody> {
    let (body, ctype) = if atom {
        (atom_feed(view, now), "application/atom+xml; charset=utf-8")
    } else {
        (json_feed(view, now), "application/json; charset=utf-8")
    };
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    r
}

fn json_feed(view: &View, now: DateTime<Utc>) -> Vec<u8> {
    let items: Vec<_> = listed(view, now)
        .map(|w| {
            json!({
                "id": w.id,
                "status": w.status_at(now),
                "scope": w.scope,
                "start": w.start,
                "end": w.end,
                "reason": w.reason,
                "emergency": w.emergency,
                "office_hours": w.office_hours,
                "announced_at": w.announced_at,
                "updated_at": updated(w),
                "cancelled_at": w.cancelled_at,
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "generated_at": now, "windows": items })).unwrap_or_default()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn atom_feed(view: &View, now: DateTime<Utc>) -> Vec<u8> {
    let windows: Vec<&MaintenanceWindow> = listed(view, now).collect();
    let feed_updated = windows.iter().map(|w| updated(w)).max().unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n");
    x.push_str("  <id>urn:lgsp:maintenance</id>\n  <title>LGSP: lịch bảo trì / maintenance windows</title>\n");
    x.push_str(&format!("  <updated>{}</updated>\n  <author><name>LGSP</name></author>\n", rfc3339(feed_updated)));
    x.push_str("  <link rel=\"self\" href=\"/maintenance.atom\"/>\n");
    for w in windows {
        let st = w.status_at(now);
        let title = format!("[{st}] {} – {}: {} / {}", rules::local_time(w.start), rules::local_time(w.end), w.reason.vi, w.reason.en);
        let scope = serde_json::to_string(&w.scope).unwrap_or_default();
        let mut summary =
            format!("{} → {} ({st}). Phạm vi / scope: {scope}. {} / {}", rfc3339(w.start), rfc3339(w.end), w.reason.vi, w.reason.en);
        if w.emergency {
            summary.push_str(&format!(" Khẩn cấp / emergency: {}.", w.emergency_reason));
        }
        if w.office_hours {
            summary.push_str(" Trùng giờ hành chính / within office hours.");
        }
        x.push_str(&format!(
            "  <entry>\n    <id>urn:lgsp:maintenance:{}</id>\n    <title>{}</title>\n    <updated>{}</updated>\n    <published>{}</published>\n    <summary>{}</summary>\n  </entry>\n",
            esc(&w.id),
            esc(&title),
            rfc3339(updated(w)),
            rfc3339(w.announced_at),
            esc(&summary)
        ));
    }
    x.push_str("</feed>\n");
    x.into_bytes()
}
