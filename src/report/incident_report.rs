//! One incident's report (HP Art. 10.5g: a report to the managing agency for a serious
//! incident affecting several agencies): what happened, who was affected, the pre-incident
//! backup, the timeline, cause, resolution, duration and whether the fix took at most 24 hours
//! from detection (HN Art. 16.10). A JSON model and a self-contained bilingual HTML page in the
//! periodic reports' style.
//!
//! Invariants: pure (the instant comes from the caller); every registry string is escaped; no
//! script or external asset.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::html::{esc, table, yn, STYLE};
use crate::registry::incident::{Incident, PreIncidentBackup, FIX_WITHIN_HOURS};
use crate::registry::{rules, State};

/// An affected agency with its name (as the registry holds it now).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AffectedAgency {
    pub code: String,
    pub name: String,
}

/// The incident report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IncidentReport {
    pub generated_at: DateTime<Utc>,
    pub incident: Incident,
    pub agencies: Vec<AffectedAgency>,
    /// An incident report is due (HP Art. 10.5g).
    pub report_required: bool,
    /// Detection to resolution, in hours (one decimal); `None` while open.
    pub duration_hours: Option<f64>,
    /// Fixed within 24 hours of detection (HN Art. 16.10); `None` while open.
    pub fixed_within_24h: Option<bool>,
}

pub fn build(inc: &Incident, state: &State, now: DateTime<Utc>) -> IncidentReport {
    let agencies = inc
        .affected_agencies
        .iter()
        .map(|c| AffectedAgency { code: c.clone(), name: state.agencies.get(c).map(|a| a.name.clone()).unwrap_or_default() })
        .collect();
    IncidentReport {
        generated_at: now,
        incident: inc.clone(),
        agencies,
        report_required: inc.serious(),
        duration_hours: inc.duration().map(|d| (d.num_minutes() as f64 / 6.0).round() / 10.0),
        fixed_within_24h: inc.fixed_in_time(),
    }
}

fn or_dash(s: &str) -> String {
    if s.trim().is_empty() {
        "—".to_owned()
    } else {
        esc(s)
    }
}

/// The report as one HTML page.
pub fn html(r: &IncidentReport) -> String {
    let i = &r.incident;
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"vi\"><head><meta charset=\"utf-8\"><title>Báo cáo sự cố {id} / Incident report {id} — LGSP</title><style>{STYLE}</style></head><body>",
        id = esc(&i.id)
    );
    let _ = writeln!(h, "<h1>Báo cáo sự cố: {}<br><small>Incident report: {}</small></h1>", esc(&i.title.vi), esc(&i.title.en));
    let _ = writeln!(
        h,
        "<p>Mã sự cố / Incident id: {}. Lập lúc / Generated at {} (giờ Việt Nam / Vietnam time, UTC+7).</p>",
        esc(&i.id),
        esc(&rules::local_time(r.generated_at))
    );
    if r.report_required {
        h.push_str("<p class=bad>Sự cố nghiêm trọng, ảnh hưởng tới nhiều cơ quan, đơn vị: phải lập báo cáo gửi cơ quan quản lý. / Serious incident affecting several agencies: this report goes to the managing agency.</p>\n");
    }

    h.push_str("<h2>Tóm tắt / Summary</h2>\n");
    let sev = i.severity.words();
    let fixed = match r.fixed_within_24h {
        Some(true) => "<span class=ok>Đạt / Yes</span>".to_owned(),
        Some(false) => "<span class=bad>Không / No</span>".to_owned(),
        None => "— (chưa khắc phục / not fixed yet)".to_owned(),
    };
    let rows = vec![
        vec!["Mức độ / Severity".into(), esc(&format!("{} / {}", sev.vi, sev.en))],
        vec!["Trạng thái / Status".into(), esc(i.status.as_str())],
        vec!["Phát hiện lúc / Detected at".into(), esc(&rules::local_time(i.detected_at))],
        vec!["Ghi nhận lúc / Opened at".into(), format!("{} ({})", esc(&rules::local_time(i.opened_at)), esc(&i.opened_by))],
        vec!["Dự kiến khắc phục / Expected fix".into(), i.expected_fix_at.map_or("—".into(), |t| esc(&rules::local_time(t)))],
        vec!["Khắc phục xong / Resolved at".into(), i.resolved_at.map_or("—".into(), |t| esc(&rules::local_time(t)))],
        vec!["Thời gian xử lý / Duration".into(), r.duration_hours.map_or("—".into(), |d| format!("{d:.1} h"))],
        vec![format!("Khắc phục trong {FIX_WITHIN_HOURS} giờ / Fixed within {FIX_WITHIN_HOURS} h"), fixed],
        vec!["Vượt khả năng, đã báo Sở KH&amp;CN / Escalated".into(), yn(i.escalated)],
        vec!["Mô tả / Description".into(), or_dash(&i.description)],
        vec!["Nguyên nhân / Cause".into(), or_dash(&i.cause)],
        vec!["Biện pháp khắc phục / Resolution".into(), or_dash(&i.resolution)],
    ];
    table(&mut h, &["Mục / Item", "Nội dung / Detail"], rows.into_iter(), 2);

    h.push_str("<h2>Phạm vi ảnh hưởng / Affected</h2>\n");
    let _ = writeln!(h, "<p>Dịch vụ / Services: {}</p>", if i.services.is_empty() { "—".to_owned() } else { esc(&i.services.join(", ")) });
    table(&mut h, &["Mã cơ quan / Agency code", "Tên / Name"], r.agencies.iter().map(|a| vec![esc(&a.code), esc(&a.name)]), 2);

    h.push_str("<h2>Sao lưu trước khi xử lý / Pre-incident backup</h2>\n");
    match &i.backup {
        PreIncidentBackup::Ok { id, log_index, node, file } => {
            let _ = writeln!(
                h,
                "<p class=ok>Bản sao lưu / Backup {} tại chỉ số nhật ký / at log index {} (nút / node {}: {}).</p>",
                esc(id),
                log_index,
                node,
                esc(file)
            );
        }
        PreIncidentBackup::Failed { error, .. } => {
            let _ = writeln!(h, "<p class=bad>Không có bản sao lưu trước khi xử lý / No pre-incident backup: {}</p>", esc(error));
        }
    }

    h.push_str("<h2>Diễn biến / Timeline</h2>\n");
    table(
        &mut h,
        &["Thời điểm / Time", "Người thực hiện / By", "Loại / Kind", "Trạng thái / Status", "Nội dung / Text"],
        i.timeline.iter().map(|e| {
            vec![esc(&rules::local_time(e.at)), esc(&e.by), esc(&e.kind), e.status.map_or("—".into(), |s| esc(s.as_str())), esc(&e.text)]
        }),
        5,
    );
    h.push_str("</body></html>\n");
    h
}
