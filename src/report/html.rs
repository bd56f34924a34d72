//! The report as one self-contained HTML page: bilingual headings (Vietnamese first, then
//! English), tables, and inline SVG charts drawn here (transactions per day or month, success
//! rate, latency percentiles, uptime per probe target).
//!
//! Invariants: no script, no external asset (styles inline, charts inline SVG), so the file can
//! be mailed, archived and printed as is; every registry string is HTML-escaped; a chart with
//! nothing to draw says so instead of drawing an empty frame.

use std::fmt::Write;

use super::model::{Counts, Report};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("—".to_owned(), |x| format!("{x:.2}{unit}"))
}

pub(super) fn yn(b: bool) -> String {
    if b { "có / yes" } else { "không / no" }.to_owned()
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "<span class=ok>Đạt / Met</span>",
        Some(false) => "<span class=bad>Không đạt / Not met</span>",
        None => "—",
    }
}

pub(super) const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}\
th{background:#f0f0f0}td.t,th.t{text-align:left}.ok{color:#176117}.bad{color:#a01010;font-weight:bold}.note{color:#7a4b00}\
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}";

/// Renders the whole report.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let kind_vi = if r.kind == "yearly" { "Báo cáo năm" } else { "Báo cáo tháng" };
    let kind_en = if r.kind == "yearly" { "Yearly report" } else { "Monthly report" };
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"vi\"><head><meta charset=\"utf-8\"><title>{kind_vi} {p} / {kind_en} {p} — LGSP</title><style>{STYLE}</style></head><body>",
        p = esc(&r.period)
    );
    let _ = writeln!(
        h,
        "<h1>{kind_vi} tình hình hoạt động, kết nối và trao đổi dữ liệu qua LGSP — {p}<br><small>{kind_en} on the operation, connections and exchanges of the LGSP — {p}</small></h1>",
        p = esc(&r.period)
    );
    let _ = writeln!(
        h,
        "<p>Kỳ báo cáo / Period: {} – {} (giờ Việt Nam / Vietnam time, UTC+7). Lập lúc / Generated at {} bởi nút / by node {}.</p>",
        r.from,
        r.to,
        esc(&r.generated_at.to_rfc3339()),
        esc(&r.generated_by)
    );

    // Coverage notes first: a reader must know what the figures leave out.
    h.push_str("<h2>Phạm vi số liệu / Data coverage</h2>\n");
    if r.coverage.partial {
        h.push_str("<p class=note>Kỳ báo cáo chưa kết thúc: số liệu tính đến lần tổng hợp gần nhất của các nút. / The period has not ended: figures run up to the nodes' latest rollups.</p>\n");
    }
    if r.coverage.notes.is_empty() {
        h.push_str("<p>Đầy đủ / Complete: mọi nút đã công bố số liệu mọi ngày / every node published every day.</p>\n");
    } else {
        h.push_str("<ul>");
        for n in &r.coverage.notes {
            let _ = write!(h, "<li class=note>{}</li>", esc(n));
        }
        h.push_str("</ul>\n");
    }
    table(
        &mut h,
        &[
            "Nút / Node",
            "Ngày đã công bố / Days published",
            "Ngày trọn vẹn / Complete days",
            "Cập nhật đến / As of",
            "Ngày thiếu / Missing days",
            "Không ghi được / Unlogged",
        ],
        r.coverage.nodes.iter().map(|n| {
            vec![
                esc(&n.node),
                n.days_published.to_string(),
                n.days_complete.to_string(),
                n.last_as_of.map_or("—".into(), |t| esc(&t.to_rfc3339())),
                n.missing_days.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" "),
                n.unlogged.to_string(),
            ]
        }),
        1,
    );

    h.push_str("<h2>Tổng quan / Overview</h2>\n");
    let t = &r.totals;
    let _ = writeln!(
        h,
        "<table><tr><th class=t>Chỉ tiêu / Figure</th><th>Giá trị / Value</th></tr>\
<tr><td class=t>Giao dịch / Transactions</td><td>{}</td></tr>\
<tr><td class=t>Thành công / Succeeded</td><td>{}</td></tr>\
<tr><td class=t>Bị từ chối / Refused</td><td>{}</td></tr>\
<tr><td class=t>Lỗi / Failed</td><td>{}</td></tr>\
<tr><td class=t>Tỷ lệ thành công / Success rate</td><td>{}</td></tr>\
<tr><td class=t>Tỷ lệ chuyển thành công / Delivery rate</td><td>{}</td></tr>\
<tr><td class=t>Độ trễ p50 / p95 / p99 — Latency</td><td>{} / {} / {}</td></tr>\
<tr><td class=t>Dữ liệu nhận / gửi — Bytes in / out</td><td>{} / {}</td></tr>\
<tr><td class=t>Cơ quan / Agencies · Hệ thống / Systems · Dịch vụ / Services · Đăng ký hoạt động / Active subscriptions</td><td>{} · {} · {} · {}</td></tr></table>",
        t.transactions,
        t.success,
        t.refused,
        t.failed,
        opt(t.success_rate_pct, " %"),
        opt(t.delivery_rate_pct, " %"),
        opt(t.latency_p50_ms, " ms"),
        opt(t.latency_p95_ms, " ms"),
        opt(t.latency_p99_ms, " ms"),
        t.request_bytes,
        t.response_bytes,
        r.connections.agencies,
        r.connections.systems,
        r.connections.services,
        r.connections.subscriptions_active,
    );

    let (unit_vi, unit_en) = if r.granularity == "month" { ("tháng", "month") } else { ("ngày", "day") };
    let _ = writeln!(h, "<h2>Giao dịch theo {unit_vi} / Transactions per {unit_en}</h2>");
    h.push_str(&bar_chart(r));
    h.push_str(&line_chart(
        r,
        &format!("Tỷ lệ thành công theo {unit_vi} (%) / Success rate per {unit_en} (%)"),
        &[("success rate", "#176117", |c: &Counts| c.success_rate_pct)],
        Some(100.0),
    ));
    h.push_str(&line_chart(
        r,
        &format!("Độ trễ theo {unit_vi} (ms) / Latency per {unit_en} (ms): p50, p95, p99"),
        &[
            ("p50", "#1f5fa8", |c: &Counts| c.latency_p50_ms),
            ("p95", "#c77800", |c: &Counts| c.latency_p95_ms),
            ("p99", "#a01010", |c: &Counts| c.latency_p99_ms),
        ],
        None,
    ));
    counts_table(
        &mut h,
        &[&format!("{} / {}", capital(unit_vi), capital(unit_en))],
        r.series.iter().map(|s| (vec![esc(&s.label)], &s.counts)),
    );

    h.push_str("<h2>Theo dịch vụ / By service</h2>\n");
    counts_table(
        &mut h,
        &["Dịch vụ / Service", "Phiên bản / Version", "Tên / Name", "Cơ quan cung cấp / Provider"],
        r.services.iter().map(|s| {
            let svc = if s.service.is_empty() { "(không định tuyến / unrouted)".to_owned() } else { esc(&s.service) };
            (vec![svc, esc(&s.version), esc(&s.name), esc(&s.provider_agency)], &s.counts)
        }),
    );
    h.push_str("<h2>Theo cơ quan khai thác / By consumer agency</h2>\n");
    counts_table(
        &mut h,
        &["Mã cơ quan / Agency code", "Tên / Name"],
        r.agencies.iter().map(|a| {
            let code = if a.agency.is_empty() { "(chưa xác thực / unauthenticated)".to_owned() } else { esc(&a.agency) };
            (vec![code, esc(&a.name)], &a.counts)
        }),
    );
    h.push_str("<h2>Trao đổi giữa hệ thống và dịch vụ / Exchanges by system and service</h2>\n");
    counts_table(
        &mut h,
        &["Cơ quan / Agency", "Hệ thống / System", "Dịch vụ / Service", "Phiên bản / Version"],
        r.exchanges.iter().map(|e| (vec![esc(&e.consumer_agency), esc(&e.consumer_system), esc(&e.service), esc(&e.version)], &e.counts)),
    );
    h.push_str("<h2>Kết quả giao dịch / Outcomes</h2>\n");
    table(
        &mut h,
        &["Mã kết quả / Outcome", "Nhóm / Class", "Số lượng / Count"],
        r.outcomes.iter().map(|o| vec![esc(&o.outcome), o.class.as_str().to_owned(), o.count.to_string()]),
        2,
    );

    h.push_str("<h2>Thời gian hoạt động của hệ thống kết nối / Uptime of connected systems</h2>\n");
    h.push_str(&uptime_chart(r));
    table(
        &mut h,
        &[
            "Đối tượng / Target",
            "Hệ thống / System",
            "Cơ quan / Agency",
            "Lần kiểm tra / Checks",
            "Ngừng / Down",
            "Sẵn sàng / Uptime",
            "Độ phủ lịch sử / History coverage",
        ],
        r.uptime.iter().map(|u| {
            let cov = opt(u.history_coverage_pct, " %");
            vec![
                esc(&u.target),
                esc(&u.system),
                esc(&u.agency),
                u.checks.to_string(),
                u.down.to_string(),
                opt(u.uptime_pct, " %"),
                if u.history_incomplete { format!("<span class=note>{cov} (thiếu / incomplete)</span>") } else { cov },
            ]
        }),
        3,
    );

    h.push_str("<h2>Sự cố / Incidents</h2>\n");
    if r.incidents.is_empty() {
        h.push_str("<p>Không có sự cố trong kỳ. / No incidents in the period.</p>\n");
    }
    if !r.incidents.is_empty() {
        table(
            &mut h,
            &[
                "Mã / Id",
                "Mô tả / Title",
                "Mức độ / Severity",
                "Trạng thái / Status",
                "Ảnh hưởng / Affected",
                "Phát hiện / Detected",
                "Khắc phục / Resolved",
                "Báo cáo sự cố / Report due",
            ],
            r.incidents.iter().map(|i| {
                vec![
                    esc(&i.id),
                    esc(&i.title),
                    esc(&i.severity),
                    esc(&i.status),
                    esc(&i.affected),
                    esc(&i.started_at.to_rfc3339()),
                    i.resolved_at.map_or("—".into(), |t| esc(&t.to_rfc3339())),
                    yn(i.serious),
                ]
            }),
            5,
        );
    }

    h.push_str("<h2>Bảo trì / Maintenance</h2>\n");
    if r.maintenance.is_empty() {
        h.push_str("<p>Không có đợt bảo trì trong kỳ. / No maintenance in the period.</p>\n");
    } else {
        table(
            &mut h,
            &[
                "Mã / Id",
                "Phạm vi / Scope",
                "Bắt đầu / Start",
                "Kết thúc / End",
                "Phút / Minutes",
                "Trạng thái / Status",
                "Báo trước (giờ) / Notice (h)",
                "Khẩn cấp / Emergency",
                "Giờ hành chính / Office hours",
                "Lý do / Reason",
            ],
            r.maintenance.iter().map(|m| {
                vec![
                    esc(&m.id),
                    esc(&m.scope),
                    esc(&m.start.to_rfc3339()),
                    esc(&m.end.to_rfc3339()),
                    m.minutes.to_string(),
                    m.status.to_owned(),
                    m.notice_hours.to_string(),
                    yn(m.emergency),
                    yn(m.office_hours),
                    format!("{} / {}", esc(&m.reason_vi), esc(&m.reason_en)),
                ]
            }),
            2,
        );
    }

    h.push_str("<h2>Yêu cầu đăng ký khai thác / Subscription requests</h2>\n");
    let s = &r.subscriptions;
    let _ = writeln!(
        h,
        "<p>Yêu cầu mới / Requested: {} · Đã quyết định / Decided: {} · Đúng hạn / On time: {} · Quá hạn chưa xử lý / Open and overdue: {}</p>",
        s.requested, s.decided, s.decided_on_time, s.open_overdue
    );
    if !s.items.is_empty() {
        table(
            &mut h,
            &[
                "Mã / Id",
                "Hệ thống / System",
                "Dịch vụ / Service",
                "Môi trường / Environment",
                "Yêu cầu lúc / Requested",
                "Hạn / Due",
                "Trạng thái / State",
                "Quyết định lúc / Decided",
                "Đúng hạn / On time",
            ],
            s.items.iter().map(|x| {
                vec![
                    esc(&x.id),
                    esc(&x.consumer_system),
                    format!("{} {}", esc(&x.service), esc(&x.version)),
                    x.environment.to_owned(),
                    esc(&x.requested_at.to_rfc3339()),
                    x.decision_due.to_string(),
                    x.state.to_owned(),
                    x.decided_at.map_or("—".into(), |t| esc(&t.to_rfc3339())),
                    yes_no(x.on_time).to_owned(),
                ]
            }),
            4,
        );
    }

    h.push_str("<h2>Cam kết chất lượng dịch vụ / Service levels</h2>\n");
    let _ = writeln!(
        h,
        "<p>Mục tiêu / Targets: sẵn sàng / availability ≥ {:.2} %, chuyển thành công / delivery ≥ {:.2} %, độ trễ p95 / latency p95 ≤ {} ms, quyết định đăng ký trong {} ngày làm việc / subscription decisions within {} working days, khắc phục sự cố trong {} giờ / incidents fixed within {} hours.</p>",
        r.targets.availability_pct,
        r.targets.success_rate_pct,
        r.targets.latency_p95_ms,
        r.targets.subscription_decision_working_days,
        r.targets.subscription_decision_working_days,
        r.targets.incident_fix_hours,
        r.targets.incident_fix_hours,
    );
    table(
        &mut h,
        &["Đối tượng / Subject", "Chỉ tiêu / Metric", "Mục tiêu / Target", "Thực tế / Actual", "Kết quả / Result"],
        r.sla.iter().map(|l| vec![esc(&l.subject), l.metric.to_owned(), esc(&l.target), esc(&l.actual), yes_no(l.met).to_owned()]),
        2,
    );
    h.push_str("</body></html>\n");
    h
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or(String::new(), |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// A table whose first `text_cols` columns are left-aligned text. Cells are already escaped.
pub(super) fn table(h: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>, text_cols: usize) {
    h.push_str("<table><tr>");
    for (i, c) in head.iter().enumerate() {
        let _ = write!(h, "<th{}>{}</th>", if i < text_cols { " class=t" } else { "" }, c);
    }
    h.push_str("</tr>\n");
    let mut any = false;
    for r in rows {
        any = true;
        h.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let _ = write!(h, "<td{}>{}</td>", if i < text_cols { " class=t" } else { "" }, c);
        }
        h.push_str("</tr>\n");
    }
    if !any {
        let _ = writeln!(h, "<tr><td class=t colspan={}>Không có dữ liệu / No data</td></tr>", head.len());
    }
    h.push_str("</table>\n");
}

fn counts_table<'a>(h: &mut String, keys: &[&str], rows: impl Iterator<Item = (Vec<String>, &'a Counts)>) {
    let mut head: Vec<&str> = keys.to_vec();
    head.extend([
        "Giao dịch / Transactions",
        "Thành công / Succeeded",
        "Từ chối / Refused",
        "Lỗi / Failed",
        "Tỷ lệ thành công / Success rate",
        "Chuyển thành công / Delivery rate",
        "p50 (ms)",
        "p95 (ms)",
        "p99 (ms)",
    ]);
    let n = keys.len();
    table(
        h,
        &head,
        rows.map(|(mut k, c)| {
            k.extend([
                c.transactions.to_string(),
                c.success.to_string(),
                c.refused.to_string(),
                c.failed.to_string(),
                opt(c.success_rate_pct, " %"),
                opt(c.delivery_rate_pct, " %"),
                opt(c.latency_p50_ms, ""),
                opt(c.latency_p95_ms, ""),
                opt(c.latency_p99_ms, ""),
            ]);
            k
        }),
        n,
    );
}

const W: f64 = 900.0;
const H: f64 = 220.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 10.0;

fn nothing(caption: &str) -> String {
    format!("<figure><figcaption>{}</figcaption><p>Không có dữ liệu / No data</p></figure>\n", esc(caption))
}

/// A y axis with 4 gridlines from 0 to `max`.
fn axis(s: &mut String, max: f64, labels: &[String]) {
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{W}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            LEFT - 4.0,
            y + 3.0,
            if max >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") }
        );
    }
    let n = labels.len().max(1);
    let step = (n / 12).max(1);
    let slot = (W - LEFT) / n as f64;
    for (i, l) in labels.iter().enumerate().filter(|(i, _)| i % step == 0) {
        let x = LEFT + slot * (i as f64 + 0.5);
        let short = l.rsplit('-').next().unwrap_or(l);
        let _ = write!(s, "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>", H - 12.0, esc(short));
    }
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Stacked bars: succeeded, refused, failed per day or month.
fn bar_chart(r: &Report) -> String {
    let caption =
        "Giao dịch: thành công (xanh lá), từ chối (vàng), lỗi (đỏ) / Transactions: succeeded (green), refused (amber), failed (red)";
    let max = r.series.iter().map(|p| p.counts.transactions).max().unwrap_or(0);
    if max == 0 {
        return nothing(caption);
    }
    let max = nice_max(max as f64);
    let labels: Vec<String> = r.series.iter().map(|p| p.label.clone()).collect();
    let mut s =
        format!("<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">");
    axis(&mut s, max, &labels);
    let plot_h = H - TOP - BOTTOM;
    let slot = (W - LEFT) / labels.len().max(1) as f64;
    for (i, p) in r.series.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let mut y = TOP + plot_h;
        for (v, color) in [(p.counts.success, "#2e8b2e"), (p.counts.refused, "#e0a800"), (p.counts.failed, "#c62828")] {
            let hgt = plot_h * v as f64 / max;
            if v > 0 {
                y -= hgt;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{hgt:.1}\" fill=\"{color}\"><title>{}: {v}</title></rect>",
                    slot * 0.7,
                    esc(&p.label)
                );
            }
        }
    }
    let _ = writeln!(s, "</svg><figcaption>{}</figcaption></figure>", esc(caption));
    s
}

type Pick = fn(&Counts) -> Option<f64>;

/// One polyline per series; points without a value are skipped.
fn line_chart(r: &Report, caption: &str, lines: &[(&str, &str, Pick)], fixed_max: Option<f64>) -> String {
    let max = r.series.iter().flat_map(|p| lines.iter().filter_map(|(_, _, f)| f(&p.counts))).fold(0.0f64, f64::max);
    if max <= 0.0 {
        return nothing(caption);
    }
    let max = fixed_max.unwrap_or_else(|| nice_max(max));
    let labels: Vec<String> = r.series.iter().map(|p| p.label.clone()).collect();
    let mut s =
        format!("<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">");
    axis(&mut s, max, &labels);
    let plot_h = H - TOP - BOTTOM;
    let slot = (W - LEFT) / labels.len().max(1) as f64;
    for (k, (name, color, f)) in lines.iter().enumerate() {
        let pts: Vec<String> = r
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                f(&p.counts).map(|v| format!("{:.1},{:.1}", LEFT + slot * (i as f64 + 0.5), TOP + plot_h - plot_h * v.min(max) / max))
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", pts.join(" "));
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{color}\"/>");
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            W - 60.0,
            TOP + 12.0 + 13.0 * k as f64,
            esc(name)
        );
    }
    let _ = writeln!(s, "</svg><figcaption>{}</figcaption></figure>", esc(caption));
    s
}

/// Horizontal bars: uptime per probe target, with the availability target as a line.
fn uptime_chart(r: &Report) -> String {
    let caption = format!(
        "Tỷ lệ sẵn sàng theo đối tượng giám sát; vạch đỏ: mục tiêu {:.2} % / Uptime per probe target; red line: the {:.2} % target",
        r.targets.availability_pct, r.targets.availability_pct
    );
    let rows: Vec<_> = r.uptime.iter().filter_map(|u| u.uptime_pct.map(|p| (u.target.as_str(), p))).collect();
    if rows.is_empty() {
        return nothing(&caption);
    }
    let (label_w, bar_h) = (260.0, 18.0);
    let height = bar_h * rows.len() as f64 + 30.0;
    let plot_w = W - label_w - 60.0;
    let mut s = format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" role=\"img\">"
    );
    for (i, (target, pct)) in rows.iter().enumerate() {
        let y = 5.0 + bar_h * i as f64;
        let color = if *pct >= r.targets.availability_pct { "#2e8b2e" } else { "#c62828" };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text><rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {pct:.2} %</title></rect><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{pct:.2} %</text>",
            label_w - 6.0,
            y + 13.0,
            esc(target),
            plot_w * pct / 100.0,
            bar_h - 4.0,
            esc(target),
            label_w + plot_w * pct / 100.0 + 4.0,
            y + 13.0
        );
    }
    let x = label_w + plot_w * r.targets.availability_pct / 100.0;
    let _ =
        write!(s, "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#a01010\" stroke-dasharray=\"4 2\"/>", height - 20.0);
    let _ = writeln!(s, "</svg><figcaption>{}</figcaption></figure>", esc(&caption));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
    }

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(230.0), 250.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
