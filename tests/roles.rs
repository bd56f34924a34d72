//! The role matrix of the admin API (SPEC §5), black box.
//!
//! Callers: the operator, the agency-admins of the provider agency (000.00.00.H31, system
//! hp-dancu), of the consumer agency (000.00.01.H31, stp-hotich) and of an unrelated third agency
//! (000.00.02.H31, third-sys), an auditor, and nobody (no token).
//!
//! Each resource group is a table of cases `(caller, method, path, body)` whose constructor names
//! the expectation, run in order against the group's own node:
//! - `ok`: any 2xx;
//! - `forbidden`: 403 `FORBIDDEN` (auditor writes, operator-only actions), and nothing changed;
//! - `hidden`: 404 `NOT_FOUND`, nothing changed, and the same call about an object that does not
//!   exist answers the same, so an agency-admin cannot learn that another agency's object exists.
//!
//! "Nothing changed" means: the admin audit trail did not grow, and the operator reads back the
//! same object (or list) before and after the call.
//!
//! Two sweeps over the OpenAPI document complete the tables: every endpoint but login answers
//! 401 without a valid token, auditors are refused every write, and endpoints documented as
//! operator-only refuse agency-admins.
//!
//! Creating a user costs two argon2 operations (~1.5 s in a debug build), so the registry with
//! its users and their tokens is built once per test process in a template data directory, and
//! every test starts its own node on a copy of it.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{Api, Node};
use serde_json::{json, Value};

/// Provider agency: owns hp-dancu, which provides the service `dancu`.
const P: &str = "000.00.00.H31";
/// Consumer agency: owns stp-hotich, which holds the seeded subscription to dancu/v1.
const C: &str = "000.00.01.H31";
/// An unrelated third agency: owns third-sys.
const T: &str = "000.00.02.H31";
/// A well-formed agency code that is not registered.
const GHOST_AGENCY: &str = "999.99.99.Z99";
/// No request body.
const NB: Value = Value::Null;
const PASSWORD: &str = "Str0ng!Passw0rd";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    /// The bootstrap operator.
    Op,
    /// agency-admin of P (the provider).
    Prov,
    /// agency-admin of C (the consumer).
    Cons,
    /// agency-admin of T (unrelated).
    Third,
    /// auditor.
    Aud,
    /// No token at all.
    Anon,
}
use Who::*;

const ADMINS: [Who; 3] = [Prov, Cons, Third];
const SIGNED_IN: [Who; 5] = [Op, Prov, Cons, Third, Aud];

/// The users of the template: (who, username, role, agency).
const USERS: [(Who, &str, &str, Option<&str>); 4] = [
    (Prov, "prov-admin", "agency-admin", Some(P)),
    (Cons, "cons-admin", "agency-admin", Some(C)),
    (Third, "third-admin", "agency-admin", Some(T)),
    (Aud, "auditor1", "auditor", None),
];

fn username(who: Who) -> &'static str {
    match who {
        Op => "admin",
        Anon => "",
        w => USERS.iter().find(|u| u.0 == w).map(|u| u.1).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

enum Want {
    Ok,
    Refused(u16, &'static str),
    Hidden { real: String, ghost: String },
}

struct Case {
    who: Who,
    method: &'static str,
    path: String,
    body: Value,
    want: Want,
}

fn ok(who: Who, method: &'static str, path: impl Into<String>, body: Value) -> Case {
    Case { who, method, path: path.into(), body, want: Want::Ok }
}

fn forbidden(who: Who, method: &'static str, path: impl Into<String>, body: Value) -> Case {
    Case { who, method, path: path.into(), body, want: Want::Refused(403, "FORBIDDEN") }
}

/// 404 NOT_FOUND, and the same with `ghost` (a missing object) in place of `real`.
fn hidden(who: Who, method: &'static str, path: impl Into<String>, body: Value, real: &str, ghost: &str) -> Case {
    Case { who, method, path: path.into(), body, want: Want::Hidden { real: real.into(), ghost: ghost.into() } }
}

/// The same successful read for every signed-in role.
fn read_by_all(path: &str) -> Vec<Case> {
    SIGNED_IN.iter().map(|&w| ok(w, "GET", path, NB)).collect()
}

// ---------------------------------------------------------------------------------------------
// Template and fixture

struct Template {
    data: PathBuf,
    tokens: HashMap<Who, String>,
    sub: String,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

fn build_template() -> Template {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).expect("target tmp dir");
    // Templates left by earlier test processes that are gone.
    for e in std::fs::read_dir(root).expect("target tmp dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("roles-template-") {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("roles-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let mut node = Node::start_in(&data);
    let op = node.operator();
    let sub = common::seed(&op);
    must(op.post("/api/v1/agencies", json!({"code": T, "name": "UBND huyện Thủy Nguyên"})));
    must(op.post(
        "/api/v1/systems",
        json!({"id": "third-sys", "agency": T, "name": "Một cửa điện tử",
               "security": {"kind": "level", "level": 2}}),
    ));
    let tokens: HashMap<Who, String> = std::thread::scope(|s| {
        let node = &node;
        let handles: Vec<_> = USERS
            .iter()
            .map(|&(who, name, role, agency)| s.spawn(move || (who, node.user(name, role, agency).token.expect("token"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    node.stop();
    Template { data, tokens, sub }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read template").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy template file");
        }
    }
}

/// A node running on a copy of the template.
struct Fx {
    node: Node,
    tokens: HashMap<Who, String>,
    /// The seeded active subscription stp-hotich -> dancu/v1 (production).
    sub: String,
    _tmp: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let t = template();
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        copy_dir(&t.data, &data);
        let node = Node::start_in(&data);
        Fx { node, tokens: t.tokens.clone(), sub: t.sub.clone(), _tmp: tmp }
    }

    fn api(&self, who: Who) -> Api {
        match who {
            Op => self.node.operator(),
            Anon => self.node.anonymous(),
            w => self.node.api(&self.tokens[&w]),
        }
    }

    fn send(&self, who: Who, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.api(who).call(method, path, (!body.is_null()).then_some(body))
    }

    /// Sends and insists on 2xx; returns the body.
    fn must(&self, who: Who, method: &str, path: &str, body: Value) -> Value {
        let (s, b) = self.send(who, method, path, &body);
        assert!((200..300).contains(&s), "{who:?} {method} {path}: expected success, got {s} {b}");
        b
    }

    /// Index of the newest admin audit entry.
    fn audit_head(&self) -> u64 {
        let (s, b) = self.api(Op).get("/api/v1/audit/admin?limit=1");
        assert_eq!(s, 200, "audit: {b}");
        b["items"][0]["index"].as_u64().unwrap_or(0)
    }

    /// The nearest path at or above `path` that the operator can GET: the object a call is about
    /// or its list. The import endpoint is read back through the export.
    fn readback_path(&self, path: &str) -> String {
        let op = self.api(Op);
        let mut p = path.split('?').next().unwrap_or(path).to_owned();
        loop {
            if p == "/api/v1" || !p.starts_with("/api/v1/") {
                return "/api/v1/registry/export".into();
            }
            if op.get(&p).0 == 200 {
                return p;
            }
            p.truncate(p.rfind('/').unwrap_or(0));
        }
    }

    fn snapshot(&self, readback: &str) -> (u64, Value) {
        (self.audit_head(), self.api(Op).get(readback).1)
    }

    /// Sends a call that must be refused with `status`/`code` and a message, changing nothing.
    #[allow(clippy::too_many_arguments)]
    fn refused(&self, label: &str, who: Who, method: &str, path: &str, body: &Value, status: u16, code: &str) -> Value {
        let rb = self.readback_path(path);
        let before = self.snapshot(&rb);
        let (s, b) = self.send(who, method, path, body);
        assert_eq!((s, b["code"].as_str().unwrap_or("")), (status, code), "{label}: expected {status} {code}, got {s} {b}");
        assert!(b["message"].as_str().is_some_and(|m| !m.trim().is_empty()), "{label}: the error has no message: {b}");
        let after = self.snapshot(&rb);
        assert_eq!(before.0, after.0, "{label}: a refused call wrote to the audit trail");
        assert_eq!(before.1, after.1, "{label}: a refused call changed {rb}");
        b
    }

    fn run(&self, cases: &[Case]) {
        for c in cases {
            self.check(c);
        }
    }

    fn check(&self, c: &Case) -> Value {
        let label = format!("{:?} {} {} {}", c.who, c.method, c.path, c.body);
        match &c.want {
            Want::Ok => {
                let (s, b) = self.send(c.who, c.method, &c.path, &c.body);
                assert!((200..300).contains(&s), "{label}: expected success, got {s} {b}");
                b
            }
            Want::Refused(status, code) => self.refused(&label, c.who, c.method, &c.path, &c.body, *status, code),
            Want::Hidden { real, ghost } => {
                let b = self.refused(&label, c.who, c.method, &c.path, &c.body, 404, "NOT_FOUND");
                let gpath = c.path.replace(real.as_str(), ghost);
                let gbody: Value = if c.body.is_null() {
                    NB
                } else {
                    serde_json::from_str(&c.body.to_string().replace(real.as_str(), ghost)).expect("ghost body")
                };
                assert!(gpath != c.path || gbody != c.body, "{label}: {real} appears neither in the path nor in the body");
                let glabel = format!("{label} (with {real} replaced by the missing {ghost})");
                self.refused(&glabel, c.who, c.method, &gpath, &gbody, 404, "NOT_FOUND");
                b
            }
        }
    }

    /// The `items` of a list, as `who` sees it.
    fn list(&self, who: Who, path: &str) -> Vec<Value> {
        let (s, b) = self.api(who).get(path);
        assert_eq!(s, 200, "{who:?} GET {path}: {b}");
        b["items"].as_array().unwrap_or_else(|| panic!("GET {path}: no items: {b}")).clone()
    }

    /// One string field of every item of a list, sorted.
    fn keys(&self, who: Who, path: &str, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self.list(who, path).iter().map(|i| i[key].as_str().unwrap_or("").to_owned()).collect();
        v.sort();
        v
    }
}

fn must(r: (u16, Value)) -> Value {
    assert!(r.0 < 300, "setup step failed: {} {}", r.0, r.1);
    r.1
}

fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339()
}

fn sorted<S: AsRef<str>>(v: &[S]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Agencies

const X: &str = "000.00.03.H31";
const X1: &str = "000.00.05.H31";
const X2: &str = "000.00.06.H31";

#[rustfmt::skip]
fn agency_cases() -> Vec<Case> {
    let contacts = json!({"contacts": [{"name": "Nguyễn Văn An", "email": "an@haiphong.gov.vn"}]});
    let new = json!({"code": X, "name": "Sở Y tế"});
    let split = |a: &str, b: &str| json!({"into": [{"code": a, "name": "Sở A"}, {"code": b, "name": "Sở B"}], "reason": "QĐ tách"});
    let merge = json!({"sources": [C], "into": {"code": P, "name": "UBND"}, "reason": "QĐ hợp nhất"});
    let mut cases = read_by_all("/api/v1/agencies");
    cases.extend([
        ok(Op,     "GET", format!("/api/v1/agencies/{P}"), NB),
        ok(Aud,    "GET", format!("/api/v1/agencies/{P}"), NB),
        ok(Prov,   "GET", format!("/api/v1/agencies/{P}"), NB),
        ok(Cons,   "GET", format!("/api/v1/agencies/{C}"), NB),
        ok(Third,  "GET", format!("/api/v1/agencies/{T}"), NB),
        hidden(Cons,  "GET", format!("/api/v1/agencies/{P}"), NB, P, GHOST_AGENCY),
        hidden(Third, "GET", format!("/api/v1/agencies/{C}"), NB, C, GHOST_AGENCY),
        hidden(Prov,  "GET", format!("/api/v1/agencies/{T}"), NB, T, GHOST_AGENCY),
        // Registering agencies: operator only.
        forbidden(Prov, "POST", "/api/v1/agencies", new.clone()),
        forbidden(Cons, "POST", "/api/v1/agencies", new.clone()),
        forbidden(Aud,  "POST", "/api/v1/agencies", new.clone()),
        ok(Op,          "POST", "/api/v1/agencies", new.clone()),
        // Contacts: the agency's own admin and the operator.
        ok(Prov,         "PATCH", format!("/api/v1/agencies/{P}"), contacts.clone()),
        ok(Op,           "PATCH", format!("/api/v1/agencies/{C}"), contacts.clone()),
        hidden(Cons,     "PATCH", format!("/api/v1/agencies/{P}"), contacts.clone(), P, GHOST_AGENCY),
        hidden(Third,    "PATCH", format!("/api/v1/agencies/{P}"), contacts.clone(), P, GHOST_AGENCY),
        forbidden(Aud,   "PATCH", format!("/api/v1/agencies/{P}"), contacts.clone()),
        // The parent is the operator's to set, even on the admin's own agency.
        forbidden(Prov,  "PATCH", format!("/api/v1/agencies/{P}"), json!({"parent": C})),
        ok(Op,           "PATCH", format!("/api/v1/agencies/{X}"), json!({"parent": P})),
    ]);
    // Restructuring: operator only. An agency-admin gets the same 403 for its own agency, for
    // another agency and for one that does not exist.
    let restructure = [
        ("rename",    json!({"new_name": "Tên mới", "reason": "QĐ đổi tên"})),
        ("rename",    json!({"new_name": "Tên mới", "new_code": "000.00.04.H31", "reason": "QĐ đổi mã"})),
        ("split",     split(X1, X2)),
        ("dissolve",  json!({"successor": C, "reason": "QĐ giải thể"})),
        ("suspend",   json!({"reason": "sự cố an ninh"})),
        ("reinstate", json!({"reason": "đã khắc phục"})),
    ];
    for (action, body) in &restructure {
        for (who, code) in [(Prov, P), (Cons, P), (Third, P), (Prov, GHOST_AGENCY), (Aud, P)] {
            cases.push(forbidden(who, "POST", format!("/api/v1/agencies/{code}/{action}"), body.clone()));
        }
    }
    for who in [Prov, Cons, Third, Aud] {
        cases.push(forbidden(who, "POST", "/api/v1/agencies/merge", merge.clone()));
    }
    cases.extend([
        ok(Op, "POST", format!("/api/v1/agencies/{X}/rename"), json!({"new_name": "Sở Y tế Hải Phòng", "reason": "QĐ đổi tên"})),
        ok(Op, "POST", format!("/api/v1/agencies/{X}/suspend"), json!({"reason": "sự cố an ninh"})),
        ok(Op, "POST", format!("/api/v1/agencies/{X}/reinstate"), json!({"reason": "đã khắc phục"})),
        ok(Op, "POST", format!("/api/v1/agencies/{X}/split"), split(X1, X2)),
        ok(Op, "POST", "/api/v1/agencies/merge", json!({"sources": [X1], "into": {"code": X2, "name": "Sở B"}, "reason": "QĐ hợp nhất"})),
        ok(Op, "POST", format!("/api/v1/agencies/{X2}/dissolve"), json!({"reason": "QĐ giải thể"})),
    ]);
    cases
}

#[test]
fn agencies() {
    let fx = Fx::new();
    fx.run(&agency_cases());

    // Lists: an agency-admin sees exactly its own agency; operator and auditor see all.
    for (who, own) in [(Prov, P), (Cons, C), (Third, T)] {
        assert_eq!(fx.keys(who, "/api/v1/agencies", "code"), vec![own]);
    }
    let all = fx.keys(Op, "/api/v1/agencies", "code");
    assert_eq!(all, fx.keys(Aud, "/api/v1/agencies", "code"));
    assert_eq!(all, sorted(&[P, C, T, X, X1, X2]));
    // The allowed changes took effect.
    let (_, a) = fx.api(Prov).get(&format!("/api/v1/agencies/{P}"));
    assert_eq!(a["contacts"][0]["name"], "Nguyễn Văn An", "{a}");
    assert_eq!(a["parent"], NB, "{a}");
}

// ---------------------------------------------------------------------------------------------
// Systems

#[rustfmt::skip]
fn system_cases() -> Vec<Case> {
    let sys = |id: &str, agency: &str| json!({"id": id, "agency": agency, "name": "Hệ thống", "security": {"kind": "level", "level": 2}});
    let patch = json!({"description": "mô tả mới"});
    let ghost = "no-such-system";
    let mut cases = read_by_all("/api/v1/systems");
    cases.extend([
        ok(Op,    "GET", "/api/v1/systems/hp-dancu", NB),
        ok(Aud,   "GET", "/api/v1/systems/hp-dancu", NB),
        ok(Prov,  "GET", "/api/v1/systems/hp-dancu", NB),
        hidden(Cons,  "GET", "/api/v1/systems/hp-dancu", NB, "hp-dancu", ghost),
        hidden(Third, "GET", "/api/v1/systems/stp-hotich", NB, "stp-hotich", ghost),
        // Registering: in one's own agency only (another agency "does not exist").
        ok(Prov,        "POST", "/api/v1/systems", sys("hp-new", P)),
        ok(Op,          "POST", "/api/v1/systems", sys("op-new", C)),
        hidden(Cons,    "POST", "/api/v1/systems", sys("c-into-p", P), P, GHOST_AGENCY),
        hidden(Third,   "POST", "/api/v1/systems", sys("t-into-c", C), C, GHOST_AGENCY),
        forbidden(Aud,  "POST", "/api/v1/systems", sys("aud-sys", P)),
        // Changing.
        ok(Prov,        "PATCH", "/api/v1/systems/hp-dancu", patch.clone()),
        ok(Op,          "PATCH", "/api/v1/systems/stp-hotich", patch.clone()),
        hidden(Cons,    "PATCH", "/api/v1/systems/hp-dancu", json!({"disabled": true}), "hp-dancu", ghost),
        hidden(Third,   "PATCH", "/api/v1/systems/hp-dancu", json!({"name": "chiếm"}), "hp-dancu", ghost),
        forbidden(Aud,  "PATCH", "/api/v1/systems/hp-dancu", patch.clone()),
    ]);
    cases
}

#[test]
fn systems() {
    let fx = Fx::new();
    fx.run(&system_cases());

    for (who, own) in [(Prov, P), (Cons, C), (Third, T)] {
        let list = fx.list(who, "/api/v1/systems");
        assert!(!list.is_empty(), "{who:?} sees no systems");
        for s in &list {
            assert_eq!(s["agency"], own, "{who:?} sees a foreign system: {s}");
        }
    }
    assert_eq!(fx.keys(Prov, "/api/v1/systems", "id"), ["hp-dancu", "hp-new"]);
    let all = fx.keys(Op, "/api/v1/systems", "id");
    assert_eq!(all, fx.keys(Aud, "/api/v1/systems", "id"));
    assert_eq!(all, sorted(&["hp-dancu", "hp-new", "op-new", "stp-hotich", "third-sys"]));
}

// ---------------------------------------------------------------------------------------------
// Services and versions

fn svc(ctx: &str, provider: &str) -> Value {
    json!({"context": ctx, "provider_system": provider, "name": "Dịch vụ", "description": "mô tả"})
}

fn version(v: &str) -> Value {
    json!({"version": v, "upstream": {"production": "http://127.0.0.1:9/p", "test": "http://127.0.0.1:9/t"}})
}

/// Until publication: hp-draft is a service of P with only drafts (not in the public catalog).
#[rustfmt::skip]
fn service_cases_drafts() -> Vec<Case> {
    let ghost = "no-such-service";
    let mut cases = vec![
        ok(Prov, "POST", "/api/v1/services", svc("hp-draft", "hp-dancu")),
        ok(Prov, "POST", "/api/v1/services/hp-draft/versions", version("v1")),
    ];
    cases.extend(read_by_all("/api/v1/services"));
    cases.extend(read_by_all("/api/v1/services/dancu"));
    cases.extend([
        ok(Op,   "GET", "/api/v1/services/hp-draft", NB),
        ok(Aud,  "GET", "/api/v1/services/hp-draft", NB),
        ok(Prov, "GET", "/api/v1/services/hp-draft", NB),
        hidden(Cons,  "GET", "/api/v1/services/hp-draft", NB, "hp-draft", ghost),
        hidden(Third, "GET", "/api/v1/services/hp-draft", NB, "hp-draft", ghost),
        // Registering: only on one's own system.
        ok(Op,          "POST", "/api/v1/services", svc("op-svc", "stp-hotich")),
        hidden(Cons,    "POST", "/api/v1/services", svc("c-svc", "hp-dancu"), "hp-dancu", "no-such-system"),
        hidden(Third,   "POST", "/api/v1/services", svc("t-svc", "stp-hotich"), "stp-hotich", "no-such-system"),
        forbidden(Aud,  "POST", "/api/v1/services", svc("aud-svc", "hp-dancu")),
        // Describing: the provider. A published service is in the public catalog, so another
        // agency gets 403; a draft-only one does not exist for it.
        ok(Prov,        "PATCH", "/api/v1/services/dancu", svc("dancu", "hp-dancu")),
        ok(Op,          "PATCH", "/api/v1/services/dancu", svc("dancu", "hp-dancu")),
        forbidden(Cons, "PATCH", "/api/v1/services/dancu", svc("dancu", "hp-dancu")),
        hidden(Cons,    "PATCH", "/api/v1/services/hp-draft", svc("hp-draft", "hp-dancu"), "hp-draft", ghost),
        forbidden(Aud,  "PATCH", "/api/v1/services/dancu", svc("dancu", "hp-dancu")),
        // Adding and changing versions.
        ok(Prov,        "POST", "/api/v1/services/dancu/versions", version("v2")),
        ok(Op,          "POST", "/api/v1/services/hp-draft/versions", version("v2")),
        forbidden(Cons, "POST", "/api/v1/services/dancu/versions", version("v3")),
        hidden(Third,   "POST", "/api/v1/services/hp-draft/versions", version("v3"), "hp-draft", ghost),
        forbidden(Aud,  "POST", "/api/v1/services/dancu/versions", version("v3")),
        ok(Prov,        "PATCH", "/api/v1/services/dancu/versions/v2", json!({"max_body_bytes": 1048576})),
        ok(Op,          "PATCH", "/api/v1/services/hp-draft/versions/v1", json!({"max_body_bytes": 1048576})),
        forbidden(Cons, "PATCH", "/api/v1/services/dancu/versions/v2", json!({"upstream": {"production": "http://10.9.9.9/steal"}})),
        hidden(Cons,    "PATCH", "/api/v1/services/hp-draft/versions/v1", json!({"max_body_bytes": 1}), "hp-draft", ghost),
        forbidden(Aud,  "PATCH", "/api/v1/services/dancu/versions/v2", json!({"max_body_bytes": 1})),
    ]);
    cases
}

/// Publication, deprecation (overrides are the operator's) and retirement.
#[rustfmt::skip]
fn service_cases_lifecycle() -> Vec<Case> {
    let ghost = "no-such-service";
    let deprecate = json!({"retire_at": in_days(200), "reason": "v2 thay thế"});
    let deprecate_override = json!({"retire_at": in_days(10), "reason": "v2 thay thế", "override_reason": "chỉ đạo của UBND"});
    let retire = json!({"reason": "hết hạn"});
    let retire_override = json!({"reason": "hết hạn", "override_reason": "lỗ hổng bảo mật"});
    let v = |ctx: &str, v: &str, action: &str| format!("/api/v1/services/{ctx}/versions/{v}/{action}");
    vec![
        forbidden(Cons, "POST", v("dancu", "v2", "publish"), NB),
        hidden(Third,   "POST", v("hp-draft", "v1", "publish"), NB, "hp-draft", ghost),
        forbidden(Aud,  "POST", v("dancu", "v2", "publish"), NB),
        ok(Prov,        "POST", v("dancu", "v2", "publish"), NB),
        ok(Op,          "POST", v("hp-draft", "v2", "publish"), NB),
        forbidden(Cons, "POST", v("dancu", "v1", "deprecate"), deprecate.clone()),
        forbidden(Aud,  "POST", v("dancu", "v1", "deprecate"), deprecate.clone()),
        forbidden(Prov, "POST", v("dancu", "v1", "deprecate"), deprecate_override.clone()),
        ok(Prov,        "POST", v("dancu", "v1", "deprecate"), deprecate.clone()),
        ok(Op,          "POST", v("hp-draft", "v2", "deprecate"), deprecate_override.clone()),
        // hp-draft now has a deprecated version, so it is in the public catalog: 403, not 404.
        forbidden(Third, "POST", v("hp-draft", "v2", "retire"), retire.clone()),
        forbidden(Cons, "POST", v("dancu", "v1", "retire"), retire.clone()),
        forbidden(Aud,  "POST", v("dancu", "v1", "retire"), retire.clone()),
        forbidden(Prov, "POST", v("dancu", "v1", "retire"), retire_override.clone()),
        ok(Op,          "POST", v("dancu", "v1", "retire"), retire_override.clone()),
    ]
}

#[test]
fn services_and_versions() {
    let fx = Fx::new();
    fx.run(&service_cases_drafts());

    // The public catalog view hides drafts and upstream addresses from non-providers.
    let (_, public) = fx.api(Cons).get("/api/v1/services/dancu");
    assert!(public["versions"].get("v2").is_none(), "a draft is shown to a consumer: {public}");
    assert_eq!(public["versions"]["v1"]["upstream"], json!({}), "{public}");
    assert_eq!(public["provider_agency"], P, "{public}");
    for who in [Op, Aud, Prov] {
        let (_, full) = fx.api(who).get("/api/v1/services/dancu");
        assert!(full["versions"]["v2"].is_object(), "{who:?}: {full}");
        assert!(full["versions"]["v1"]["upstream"]["production"].is_string(), "{who:?}: {full}");
    }

    fx.run(&service_cases_lifecycle());

    // Lists: everyone sees the public catalog; drafts only their provider, operator, auditor.
    let contexts = |who| fx.keys(who, "/api/v1/services", "context");
    assert_eq!(contexts(Op), contexts(Aud));
    assert_eq!(contexts(Op), ["dancu", "hp-draft", "op-svc"]);
    // op-svc (of stp-hotich) has no published version: only its provider sees it.
    assert_eq!(contexts(Prov), ["dancu", "hp-draft"]);
    assert_eq!(contexts(Cons), ["dancu", "hp-draft", "op-svc"]);
    assert_eq!(contexts(Third), ["dancu", "hp-draft"]);
    for who in [Prov, Cons, Third] {
        for s in fx.list(who, "/api/v1/services") {
            let own = (who == Cons && s["provider_system"] == "stp-hotich") || (who == Prov && s["provider_system"] == "hp-dancu");
            if own {
                continue;
            }
            for (label, v) in s["versions"].as_object().unwrap() {
                let state = v["state"].as_str().unwrap();
                assert!(state == "published" || state == "deprecated", "{who:?} sees {label} of {} in state {state}", s["context"]);
                assert_eq!(v["upstream"], json!({}), "{who:?} sees an upstream: {s}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions and their decisions

fn request(consumer: &str, env: &str) -> Value {
    json!({"consumer_system": consumer, "service": "dancu", "version": "v1", "environment": env,
           "purpose": "tra cứu hồ sơ"})
}

fn sub_path(id: &str, action: &str) -> String {
    format!("/api/v1/subscriptions/{id}/{action}")
}

/// `sub`: stp-hotich (C) -> dancu (P), active. `sub2`: third-sys (T) -> dancu, requested.
#[rustfmt::skip]
fn subscription_cases(sub: &str, sub2: &str) -> Vec<Case> {
    let p = sub_path;
    let ghost = "sub-0000000000000000";
    let reason = json!({"reason": "hết nhu cầu"});
    let limits = json!({"per_second": 50});
    let mut with_limit = request("stp-hotich", "test");
    with_limit["rate_limit"] = json!({"per_second": 1000});
    let mut cases = read_by_all("/api/v1/subscriptions");
    cases.extend([
        ok(Op,    "GET", format!("/api/v1/subscriptions/{sub}"), NB),
        ok(Aud,   "GET", format!("/api/v1/subscriptions/{sub}"), NB),
        ok(Prov,  "GET", format!("/api/v1/subscriptions/{sub}"), NB),
        ok(Cons,  "GET", format!("/api/v1/subscriptions/{sub}"), NB),
        ok(Third, "GET", format!("/api/v1/subscriptions/{sub2}"), NB),
        hidden(Third, "GET", format!("/api/v1/subscriptions/{sub}"), NB, sub, ghost),
        hidden(Cons,  "GET", format!("/api/v1/subscriptions/{sub2}"), NB, sub2, ghost),
        // Requesting: for one's own system only; rate limits are the operator's.
        hidden(Cons,    "POST", "/api/v1/subscriptions", request("hp-dancu", "test"), "hp-dancu", "no-such-system"),
        hidden(Third,   "POST", "/api/v1/subscriptions", request("stp-hotich", "test"), "stp-hotich", "no-such-system"),
        forbidden(Aud,  "POST", "/api/v1/subscriptions", request("stp-hotich", "test")),
        forbidden(Cons, "POST", "/api/v1/subscriptions", with_limit),
        // Provider approval: the provider agency.
        hidden(Cons,     "POST", p(sub2, "provider-approve"), NB, sub2, ghost),
        forbidden(Third, "POST", p(sub2, "provider-approve"), NB),
        forbidden(Aud,   "POST", p(sub2, "provider-approve"), NB),
        ok(Prov,         "POST", p(sub2, "provider-approve"), NB),
        // Operator approval.
        forbidden(Prov,  "POST", p(sub2, "approve"), NB),
        forbidden(Third, "POST", p(sub2, "approve"), NB),
        hidden(Cons,     "POST", p(sub2, "approve"), NB, sub2, ghost),
        forbidden(Aud,   "POST", p(sub2, "approve"), NB),
        ok(Op,           "POST", p(sub2, "approve"), NB),
        // Rate limits and quotas: operator only.
        forbidden(Prov,  "PUT", p(sub2, "limits"), limits.clone()),
        forbidden(Third, "PUT", p(sub2, "limits"), limits.clone()),
        forbidden(Cons,  "PUT", p(sub, "limits"), limits.clone()),
        forbidden(Aud,   "PUT", p(sub2, "limits"), limits.clone()),
        ok(Op,           "PUT", p(sub2, "limits"), json!({"per_second": 50, "per_day": 100000})),
        // Revocation: the consumer, the provider or the operator.
        hidden(Cons,     "POST", p(sub2, "revoke"), reason.clone(), sub2, ghost),
        hidden(Third,    "POST", p(sub, "revoke"), reason.clone(), sub, ghost),
        forbidden(Aud,   "POST", p(sub, "revoke"), reason.clone()),
        ok(Prov,         "POST", p(sub2, "revoke"), reason.clone()),
        ok(Cons,         "POST", p(sub, "revoke"), reason.clone()),
    ]);
    cases
}

/// `sub3`: C's request for test (rejected by P). `sub4`: the operator's request for third-sys,
/// walked through by the operator. `sub5`: C's new production request (rejected by the operator).
#[rustfmt::skip]
fn rejection_cases(sub3: &str, sub4: &str, sub5: &str) -> Vec<Case> {
    let p = sub_path;
    let reason = json!({"reason": "không đủ căn cứ pháp lý"});
    vec![
        forbidden(Cons, "POST", p(sub3, "reject"), reason.clone()),
        forbidden(Aud,  "POST", p(sub3, "reject"), reason.clone()),
        hidden(Third,   "POST", p(sub3, "reject"), reason.clone(), sub3, "sub-0000000000000000"),
        ok(Prov,        "POST", p(sub3, "reject"), reason.clone()),
        ok(Op,          "POST", p(sub4, "provider-approve"), NB),
        ok(Op,          "POST", p(sub4, "approve"), json!({"reason": "đủ điều kiện"})),
        ok(Op,          "POST", p(sub4, "revoke"), reason.clone()),
        ok(Op,          "POST", p(sub5, "reject"), reason.clone()),
    ]
}

#[test]
fn subscriptions_and_decisions() {
    let fx = Fx::new();
    let sub = fx.sub.clone();
    let id = |b: Value| b["id"].as_str().expect("id").to_owned();
    let sub2 = id(fx.must(Third, "POST", "/api/v1/subscriptions", request("third-sys", "production")));
    fx.run(&subscription_cases(&sub, &sub2));
    let sub3 = id(fx.must(Cons, "POST", "/api/v1/subscriptions", request("stp-hotich", "test")));
    let sub4 = id(fx.must(Op, "POST", "/api/v1/subscriptions", request("third-sys", "test")));
    let sub5 = id(fx.must(Cons, "POST", "/api/v1/subscriptions", request("stp-hotich", "production")));
    fx.run(&rejection_cases(&sub3, &sub4, &sub5));

    // Lists: an agency-admin sees the subscriptions where its agency is consumer or provider.
    for (who, own) in [(Prov, P), (Cons, C), (Third, T)] {
        for s in fx.list(who, "/api/v1/subscriptions") {
            assert!(s["consumer_agency"] == own || s["provider_agency"] == own, "{who:?} sees a subscription of others: {s}");
        }
    }
    let ids = |who| fx.keys(who, "/api/v1/subscriptions", "id");
    let all = sorted(&[&sub, &sub2, &sub3, &sub4, &sub5]);
    assert_eq!(ids(Op), all);
    assert_eq!(ids(Aud), all);
    assert_eq!(ids(Prov), all, "the provider sees every request for its service");
    assert_eq!(ids(Cons), sorted(&[&sub, &sub3, &sub5]));
    assert_eq!(ids(Third), sorted(&[&sub2, &sub4]));
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// `cred1`: stp-hotich's (C), `cred2`: third-sys's (T).
#[rustfmt::skip]
fn credential_cases(cred1: &str, cred2: &str) -> Vec<Case> {
    let issue = |system: &str| json!({"system": system, "environment": "test"});
    let ghost = "cred-0000000000000000";
    let reason = json!({"reason": "lộ khóa"});
    let get = |id: &str| format!("/api/v1/credentials/{id}");
    let revoke = |id: &str| format!("/api/v1/credentials/{id}/revoke");
    let mut cases = read_by_all("/api/v1/credentials");
    cases.extend([
        // Issuing: for one's own system only.
        ok(Prov,        "POST", "/api/v1/credentials", issue("hp-dancu")),
        hidden(Prov,    "POST", "/api/v1/credentials", issue("stp-hotich"), "stp-hotich", "no-such-system"),
        hidden(Third,   "POST", "/api/v1/credentials", issue("stp-hotich"), "stp-hotich", "no-such-system"),
        forbidden(Aud,  "POST", "/api/v1/credentials", issue("stp-hotich")),
        // Reading (never a secret).
        ok(Op,          "GET", get(cred1), NB),
        ok(Aud,         "GET", get(cred1), NB),
        ok(Cons,        "GET", get(cred1), NB),
        ok(Third,       "GET", get(cred2), NB),
        hidden(Prov,    "GET", get(cred1), NB, cred1, ghost),
        hidden(Third,   "GET", get(cred1), NB, cred1, ghost),
        // Revoking.
        hidden(Prov,    "POST", revoke(cred1), reason.clone(), cred1, ghost),
        hidden(Third,   "POST", revoke(cred1), reason.clone(), cred1, ghost),
        forbidden(Aud,  "POST", revoke(cred1), reason.clone()),
        ok(Cons,        "POST", revoke(cred1), reason.clone()),
        ok(Op,          "POST", revoke(cred2), reason.clone()),
    ]);
    cases
}

#[test]
fn credentials() {
    let fx = Fx::new();
    let cred1 = fx.must(Cons, "POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production", "hmac": true}));
    assert!(cred1["consumer_secret"].is_string(), "{cred1}");
    let cred1 = cred1["id"].as_str().unwrap().to_owned();
    let cred2 = fx.must(Op, "POST", "/api/v1/credentials", json!({"system": "third-sys", "environment": "test"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fx.run(&credential_cases(&cred1, &cred2));

    let sys_agency: HashMap<String, String> = fx
        .list(Op, "/api/v1/systems")
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_owned();
            (id, s["agency"].as_str().unwrap().to_owned())
        })
        .collect();
    for (who, own) in [(Prov, P), (Cons, C), (Third, T)] {
        let list = fx.list(who, "/api/v1/credentials");
        assert_eq!(list.len(), 1, "{who:?}: {list:?}");
        for c in &list {
            assert_eq!(sys_agency[c["system"].as_str().unwrap()], own, "{who:?}: {c}");
        }
    }
    let all = fx.keys(Op, "/api/v1/credentials", "id");
    assert_eq!(all.len(), 3);
    assert_eq!(all, fx.keys(Aud, "/api/v1/credentials", "id"));
    for who in SIGNED_IN {
        for c in fx.list(who, "/api/v1/credentials") {
            assert!(
                c.get("consumer_secret").is_none() && c.get("secret").is_none() && c.get("hmac").is_none(),
                "a listed credential carries secret material: {c}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared catalogs

#[rustfmt::skip]
fn catalog_cases() -> Vec<Case> {
    let new = json!({"code": "dm-gioi-tinh", "name": "Giới tính", "owner_agency": P});
    let first = json!({"fields": [{"name": "code"}, {"name": "name"}], "entries": [{"code": "1", "name": "Nam"}]});
    let append = |c: &str, n: &str| json!({"entries": [{"code": c, "name": n}], "append": true});
    let versions = "/api/v1/catalogs/dm-gioi-tinh/versions";
    let mut cases = vec![
        forbidden(Prov, "POST", "/api/v1/catalogs", new.clone()),
        forbidden(Cons, "POST", "/api/v1/catalogs", new.clone()),
        forbidden(Aud,  "POST", "/api/v1/catalogs", new.clone()),
        ok(Op,          "POST", "/api/v1/catalogs", new.clone()),
        ok(Op,          "POST", versions, first),
        // New versions: the owner agency and the operator.
        ok(Prov,         "POST", versions, append("2", "Nữ")),
        forbidden(Cons,  "POST", versions, append("3", "Khác")),
        forbidden(Third, "POST", versions, append("3", "Khác")),
        forbidden(Aud,   "POST", versions, append("3", "Khác")),
        ok(Op,           "POST", versions, append("3", "Chưa xác định")),
    ];
    // Catalogs are shared: everyone signed in reads them.
    cases.extend(read_by_all("/api/v1/catalogs"));
    cases.extend(read_by_all("/api/v1/catalogs/dm-gioi-tinh"));
    cases.extend(read_by_all("/api/v1/catalogs/dm-gioi-tinh/entries"));
    cases
}

#[test]
fn catalogs() {
    let fx = Fx::new();
    fx.run(&catalog_cases());
    let (_, c) = fx.api(Third).get("/api/v1/catalogs/dm-gioi-tinh");
    assert_eq!(c["latest_version"], 3, "{c}");
    assert_eq!(c["entries"], 3, "{c}");
}

// ---------------------------------------------------------------------------------------------
// Users

#[rustfmt::skip]
fn user_cases() -> Vec<Case> {
    let user = |name: &str, role: &str, agency: Option<&str>| json!({"username": name, "role": role, "agency": agency, "password": PASSWORD});
    let reset = json!({"new_password": "An0ther!Passw0rd"});
    let ghost = "no-such-user";
    let mut cases = read_by_all("/api/v1/users");
    cases.extend(read_by_all("/api/v1/auth/me"));
    cases.extend([
        ok(Op,   "GET", "/api/v1/users/prov-admin", NB),
        ok(Aud,  "GET", "/api/v1/users/prov-admin", NB),
        ok(Prov, "GET", "/api/v1/users/prov-admin", NB),
        ok(Aud,  "GET", "/api/v1/users/auditor1", NB),
        hidden(Cons, "GET", "/api/v1/users/prov-admin", NB, "prov-admin", ghost),
        hidden(Prov, "GET", "/api/v1/users/admin", NB, "admin", ghost),
        hidden(Prov, "GET", "/api/v1/users/auditor1", NB, "auditor1", ghost),
        // Creating: an agency-admin creates only agency-admins of its own agency.
        ok(Prov,        "POST", "/api/v1/users", user("prov-admin2", "agency-admin", Some(P))),
        ok(Op,          "POST", "/api/v1/users", user("cons-admin2", "agency-admin", Some(C))),
        forbidden(Prov, "POST", "/api/v1/users", user("evil1", "agency-admin", Some(C))),
        forbidden(Prov, "POST", "/api/v1/users", user("evil2", "operator", None)),
        forbidden(Prov, "POST", "/api/v1/users", user("evil3", "auditor", None)),
        forbidden(Aud,  "POST", "/api/v1/users", user("evil4", "auditor", None)),
        // Changing and disabling.
        ok(Prov,        "PATCH", "/api/v1/users/prov-admin2", json!({"display_name": "Trần Thị B"})),
        ok(Op,          "PATCH", "/api/v1/users/cons-admin2", json!({"display_name": "Lê Văn C"})),
        hidden(Cons,    "PATCH", "/api/v1/users/prov-admin2", json!({"disabled": true}), "prov-admin2", ghost),
        hidden(Third,   "PATCH", "/api/v1/users/prov-admin2", json!({"disabled": true}), "prov-admin2", ghost),
        hidden(Prov,    "PATCH", "/api/v1/users/admin", json!({"disabled": true}), "admin", ghost),
        forbidden(Aud,  "PATCH", "/api/v1/users/prov-admin2", json!({"display_name": "x"})),
        // Password resets.
        ok(Prov,        "POST", "/api/v1/users/prov-admin2/password", reset.clone()),
        hidden(Cons,    "POST", "/api/v1/users/prov-admin2/password", reset.clone(), "prov-admin2", ghost),
        hidden(Prov,    "POST", "/api/v1/users/admin/password", reset.clone(), "admin", ghost),
        forbidden(Aud,  "POST", "/api/v1/users/prov-admin2/password", reset.clone()),
        // Unlocking.
        ok(Prov,        "POST", "/api/v1/users/prov-admin2/unlock", NB),
        ok(Op,          "POST", "/api/v1/users/cons-admin2/unlock", NB),
        hidden(Cons,    "POST", "/api/v1/users/prov-admin2/unlock", NB, "prov-admin2", ghost),
        hidden(Third,   "POST", "/api/v1/users/cons-admin2/unlock", NB, "cons-admin2", ghost),
        forbidden(Aud,  "POST", "/api/v1/users/prov-admin2/unlock", NB),
        // Changing one's own password is self-service, for auditors too.
        ok(Aud, "POST", "/api/v1/users/auditor1/password", json!({"current_password": PASSWORD, "new_password": "N3w!Passw0rd-au"})),
    ]);
    cases
}

#[test]
fn users() {
    let fx = Fx::new();
    fx.run(&user_cases());

    for (who, own) in [(Prov, P), (Cons, C), (Third, T)] {
        let list = fx.list(who, "/api/v1/users");
        for u in &list {
            assert_eq!(u["agency"], own, "{who:?} sees a foreign user: {u}");
        }
    }
    assert_eq!(fx.keys(Prov, "/api/v1/users", "username"), ["prov-admin", "prov-admin2"]);
    assert_eq!(fx.keys(Cons, "/api/v1/users", "username"), ["cons-admin", "cons-admin2"]);
    let all = fx.keys(Op, "/api/v1/users", "username");
    assert_eq!(all, fx.keys(Aud, "/api/v1/users", "username"));
    assert_eq!(all.len(), 7, "{all:?}");
    for who in SIGNED_IN {
        for u in fx.list(who, "/api/v1/users") {
            assert!(u.get("password_hash").is_none(), "a password hash is shown: {u}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API tokens

/// `ids`: one tool token per signed-in role, made by that role.
#[rustfmt::skip]
fn token_cases(ids: &HashMap<Who, String>) -> Vec<Case> {
    let del = |who: Who| format!("/api/v1/tokens/{}", ids[&who]);
    let ghost = "ffffffffffffffff";
    let mut cases = read_by_all("/api/v1/tokens");
    cases.extend([
        // Someone else's token does not exist for anyone but its owner and the operator. That
        // includes the auditor: a token it cannot list is a 404 for it, not a 403.
        hidden(Cons,  "DELETE", del(Prov), NB, &ids[&Prov], ghost),
        hidden(Third, "DELETE", del(Prov), NB, &ids[&Prov], ghost),
        hidden(Aud,   "DELETE", del(Prov), NB, &ids[&Prov], ghost),
        hidden(Prov,  "DELETE", del(Op), NB, &ids[&Op], ghost),
        ok(Prov,      "DELETE", del(Prov), NB),
        ok(Aud,       "DELETE", del(Aud), NB),
        ok(Op,        "DELETE", del(Cons), NB),
    ]);
    cases
}

#[test]
fn tokens() {
    let fx = Fx::new();
    // Tool tokens are self-service for every role (auditors too: their tools need to read).
    let mut ids: HashMap<Who, String> = HashMap::new();
    let mut secrets: HashMap<Who, String> = HashMap::new();
    for who in SIGNED_IN {
        let body = json!({"name": "ci", "expires_in_days": 30});
        let b = fx.must(who, "POST", "/api/v1/tokens", body);
        ids.insert(who, b["id"].as_str().unwrap().to_owned());
        secrets.insert(who, b["token"].as_str().unwrap().to_owned());
    }
    fx.run(&token_cases(&ids));

    for who in [Prov, Cons, Third, Aud] {
        for t in fx.list(who, "/api/v1/tokens") {
            assert_eq!(t["username"], username(who), "{who:?} sees a token of another: {t}");
            assert!(t.get("secret").is_none(), "{t}");
        }
    }
    let owners = fx.keys(Op, "/api/v1/tokens", "username");
    assert!(owners.iter().any(|o| o == "third-admin"), "{owners:?}");
    let listed = fx.keys(Op, "/api/v1/tokens", "id");
    assert!(listed.contains(&ids[&Third]) && listed.contains(&ids[&Op]));
    for who in [Prov, Cons, Aud] {
        assert!(!listed.contains(&ids[&who]), "a revoked token is still listed");
    }
    // Revoked tool tokens no longer authenticate; the others still do.
    for who in SIGNED_IN {
        let (s, b) = fx.node.api(&secrets[&who]).get("/api/v1/auth/me");
        let want = if matches!(who, Prov | Cons | Aud) { 401 } else { 200 };
        assert_eq!(s, want, "{who:?}'s tool token: {b}");
    }
    // Logging out revokes the calling token, for any role.
    fx.must(Third, "POST", "/api/v1/auth/logout", NB);
    let (s, b) = fx.api(Third).get("/api/v1/auth/me");
    assert_eq!((s, b["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{b}");
}

// ---------------------------------------------------------------------------------------------
// Admin audit trail, registry export/import, holidays

#[test]
fn admin_audit() {
    let fx = Fx::new();
    let mut cases = vec![ok(Op, "GET", "/api/v1/audit/admin", NB), ok(Aud, "GET", "/api/v1/audit/admin?limit=5", NB)];
    for who in ADMINS {
        cases.push(forbidden(who, "GET", "/api/v1/audit/admin", NB));
        let own = format!("/api/v1/audit/admin?target=agency/{P}");
        cases.push(forbidden(who, "GET", own, NB));
    }
    fx.run(&cases);
    // The auditor sees every agency's changes.
    let (_, b) = fx.api(Aud).get("/api/v1/audit/admin?limit=1000");
    let targets: Vec<&str> = b["items"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    for t in ["system/hp-dancu", "system/stp-hotich", "system/third-sys", "service/dancu/v1"] {
        assert!(targets.contains(&t), "{t} missing from the audit trail: {targets:?}");
    }
}

#[test]
fn registry_export_import() {
    let fx = Fx::new();
    let doc = json!({"agency": [{"code": "000.00.09.H31", "name": "Sở Nội vụ"}]});
    let mut cases = vec![ok(Op, "GET", "/api/v1/registry/export", NB), ok(Aud, "GET", "/api/v1/registry/export", NB)];
    for who in ADMINS {
        cases.push(forbidden(who, "GET", "/api/v1/registry/export", NB));
    }
    for who in [Prov, Cons, Third, Aud] {
        cases.push(forbidden(who, "POST", "/api/v1/registry/import", doc.clone()));
        let dry = "/api/v1/registry/import?dry_run=true";
        cases.push(forbidden(who, "POST", dry, doc.clone()));
    }
    cases.push(ok(Op, "POST", "/api/v1/registry/import?dry_run=true", doc.clone()));
    cases.push(ok(Op, "POST", "/api/v1/registry/import", doc.clone()));
    fx.run(&cases);
    let (s, _) = fx.api(Op).get("/api/v1/agencies/000.00.09.H31");
    assert_eq!(s, 200, "the operator's import was applied");
    // The export carries no secrets.
    let (_, export) = fx.api(Aud).get("/api/v1/registry/export");
    let text = export.to_string();
    assert!(!text.contains("consumer_secret") && !text.contains("password"), "{text}");
}

#[test]
fn holidays() {
    let fx = Fx::new();
    let body = json!({"holidays": ["2027-01-01", "2027-04-30", "2027-05-01"]});
    let mut cases = read_by_all("/api/v1/settings/holidays");
    for who in [Prov, Cons, Third, Aud] {
        cases.push(forbidden(who, "PUT", "/api/v1/settings/holidays", body.clone()));
    }
    cases.push(ok(Op, "PUT", "/api/v1/settings/holidays", body.clone()));
    fx.run(&cases);
    let (_, b) = fx.api(Third).get("/api/v1/settings/holidays");
    assert_eq!(b, body);
}

// ---------------------------------------------------------------------------------------------
// Sweeps over every endpoint of the OpenAPI document

/// Every documented endpoint as (method, path template, allowed roles as documented).
fn documented(fx: &Fx) -> Vec<(String, String, String)> {
    let (s, doc) = fx.api(Anon).get("/api/v1/openapi.json");
    assert_eq!(s, 200, "the OpenAPI document is public: {doc}");
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let roles = op["description"].as_str().unwrap_or("").trim_start_matches("Allowed roles: ").trim_end_matches('.').to_owned();
            out.push((method.to_uppercase(), path.clone(), roles));
        }
    }
    out
}

/// Fills a path template with objects that exist (see [`sweep_objects`]).
fn fill(template: &str, sub: &str, cred: &str, token: &str) -> String {
    let id = if template.starts_with("/api/v1/subscriptions/") {
        sub
    } else if template.starts_with("/api/v1/credentials/") {
        cred
    } else if template.starts_with("/api/v1/tokens/") {
        token
    } else {
        "hp-dancu"
    };
    let code = if template.starts_with("/api/v1/catalogs/") { "dm-sweep" } else { P };
    template
        .replace("{code}", code)
        .replace("{context}", "dancu")
        .replace("{version}", "v1")
        .replace("{username}", "prov-admin")
        .replace("{id}", id)
}

/// A valid request body for every documented write, so that a refusal is about the role, not
/// the input. A new write endpoint must be added here: the sweep fails until it is.
#[rustfmt::skip]
fn valid_body(method: &str, template: &str) -> Option<Value> {
    let b = match (method, template) {
        ("POST", "/api/v1/auth/logout") => NB,
        ("PUT", "/api/v1/credentials/{id}/public-keys") => json!({"public_keys": []}),
        ("POST", "/api/v1/users") => json!({"username": "sweep-user", "role": "auditor", "password": PASSWORD}),
        ("PATCH", "/api/v1/users/{username}") => json!({"display_name": "x"}),
        ("POST", "/api/v1/users/{username}/password") => json!({"new_password": "An0ther!Passw0rd"}),
        ("POST", "/api/v1/users/{username}/unlock") => NB,
        ("POST", "/api/v1/tokens") => json!({"name": "sweep"}),
        ("DELETE", "/api/v1/tokens/{id}") => NB,
        ("POST", "/api/v1/agencies") => json!({"code": "000.00.07.H31", "name": "Sở mới"}),
        ("PATCH", "/api/v1/agencies/{code}") => json!({"contacts": []}),
        ("POST", "/api/v1/agencies/{code}/rename") => json!({"new_name": "Tên mới", "reason": "r"}),
        ("POST", "/api/v1/agencies/{code}/split") => json!({"into": [{"code": X1, "name": "A"}, {"code": X2, "name": "B"}], "systems": {"hp-dancu": X1}, "reason": "r"}),
        ("POST", "/api/v1/agencies/merge") => json!({"sources": [C], "into": {"code": P, "name": "UBND"}, "reason": "r"}),
        ("POST", "/api/v1/agencies/{code}/dissolve") => json!({"successor": C, "reason": "r"}),
        ("POST", "/api/v1/agencies/{code}/suspend") => json!({"reason": "r"}),
        ("POST", "/api/v1/agencies/{code}/reinstate") => json!({"reason": "r"}),
        ("POST", "/api/v1/systems") => json!({"id": "sweep-sys", "agency": P, "name": "x", "security": {"kind": "level", "level": 1}}),
        ("PATCH", "/api/v1/systems/{id}") => json!({"description": "x"}),
        ("PUT", "/api/v1/systems/{id}/probe") => json!({"kind": "tcp", "target": "127.0.0.1:9", "interval_s": 30}),
        ("DELETE", "/api/v1/systems/{id}/probe") => NB,
        ("PUT", "/api/v1/services/{context}/versions/{version}/probe") => json!({"kind": "tcp", "target": "127.0.0.1:9", "interval_s": 30}),
        ("DELETE", "/api/v1/services/{context}/versions/{version}/probe") => NB,
        ("POST", "/api/v1/services") => json!({"context": "sweep-svc", "provider_system": "hp-dancu", "name": "x"}),
        ("PATCH", "/api/v1/services/{context}") => json!({"context": "dancu", "provider_system": "hp-dancu", "name": "x"}),
        ("POST", "/api/v1/services/{context}/versions") => json!({"version": "v7", "upstream": {"test": "http://127.0.0.1:9/t"}}),
        ("PATCH", "/api/v1/services/{context}/versions/{version}") => json!({"max_body_bytes": 1000}),
        ("POST", "/api/v1/services/{context}/versions/{version}/publish") => NB,
        ("POST", "/api/v1/services/{context}/versions/{version}/deprecate") => json!({"retire_at": in_days(200), "reason": "r"}),
        ("POST", "/api/v1/services/{context}/versions/{version}/retire") => json!({"reason": "r", "override_reason": "o"}),
        ("POST", "/api/v1/subscriptions") => json!({"consumer_system": "stp-hotich", "service": "dancu", "version": "v1", "environment": "test", "purpose": "p"}),
        ("POST", "/api/v1/subscriptions/{id}/provider-approve") => NB,
        ("POST", "/api/v1/subscriptions/{id}/approve") => NB,
        ("POST", "/api/v1/subscriptions/{id}/reject") => json!({"reason": "r"}),
        ("POST", "/api/v1/subscriptions/{id}/revoke") => json!({"reason": "r"}),
        ("PUT", "/api/v1/subscriptions/{id}/limits") => json!({"per_second": 5}),
        ("POST", "/api/v1/credentials") => json!({"system": "stp-hotich", "environment": "test"}),
        ("POST", "/api/v1/credentials/{id}/revoke") => json!({"reason": "r"}),
        ("POST", "/api/v1/catalogs") => json!({"code": "sweep-cat", "name": "x", "owner_agency": P}),
        ("POST", "/api/v1/catalogs/{code}/versions") => json!({"entries": [{"code": "9"}], "append": true}),
        ("POST", "/api/v1/registry/import") => json!({"agency": [{"code": "000.00.08.H31", "name": "x"}]}),
        ("PUT", "/api/v1/settings/holidays") => json!({"holidays": ["2027-01-01"]}),
        ("POST", "/api/v1/maintenance") => json!({"scope": {"kind": "platform"}, "start": in_days(30), "end": in_days(31), "reason": {"vi": "Bảo trì", "en": "Upkeep"}}),
        ("POST", "/api/v1/backups") => json!({"reason": "sweep"}),
        ("POST", "/api/v1/incidents") => json!({"title": {"vi": "Sự cố", "en": "Incident"}, "severity": "normal"}),
        ("POST", "/api/v1/incidents/{id}/updates") => json!({"note": "n"}),
        ("POST", "/api/v1/incidents/{id}/resolve") => json!({"resolution": "r"}),
        ("PATCH", "/api/v1/maintenance/{id}") => json!({"reason": {"vi": "Bảo trì", "en": "Upkeep"}}),
        ("POST", "/api/v1/maintenance/{id}/cancel") => json!({"reason": "r"}),
        ("PUT", "/api/v1/agencies/{code}/webhooks") => json!({"webhooks": [{"url": "https://hooks.example/x", "secret": "0123456789abcdef0123"}]}),
        ("POST", "/api/v1/cluster/join-tokens") => json!({}),
        ("POST", "/api/v1/cluster/nodes/{id}/promote") => NB,
        ("DELETE", "/api/v1/cluster/nodes/{id}") => NB,
        ("POST", "/api/v1/cluster/leader") => json!({"node_id": 1}),
        ("POST", "/api/v1/cluster/leave") => NB,
        ("POST", "/api/v1/cluster/certificate/rotate") => NB,
        ("POST", "/api/v1/node/drain") => NB,
        ("POST", "/api/v1/node/resume") => NB,
        ("PUT", "/api/v1/cluster/test-partition") => json!({"blocked": []}),
        _ => return None,
    };
    Some(b)
}

/// Objects the sweeps address besides the template's: a credential of stp-hotich, a catalog
/// owned by P, a tool token of the operator. Returns (credential id, token id).
fn sweep_objects(fx: &Fx) -> (String, String) {
    let cred = fx.must(Op, "POST", "/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production"}));
    fx.must(Op, "POST", "/api/v1/catalogs", json!({"code": "dm-sweep", "name": "Sweep", "owner_agency": P}));
    fx.must(Op, "POST", "/api/v1/catalogs/dm-sweep/versions", json!({"fields": [{"name": "code"}], "entries": [{"code": "1"}]}));
    let tok = fx.must(Op, "POST", "/api/v1/tokens", json!({"name": "sweep"}));
    (cred["id"].as_str().unwrap().to_owned(), tok["id"].as_str().unwrap().to_owned())
}

#[test]
fn every_endpoint_but_login_needs_a_valid_token() {
    let fx = Fx::new();
    let (cred, token) = sweep_objects(&fx);
    let eps = documented(&fx);
    assert!(eps.len() >= 57, "only {} endpoints documented", eps.len());
    let before = fx.snapshot("/api/v1/registry/export");
    let garbage = fx.node.api("lgsp.0123456789abcdef.not-the-secret");
    let mut public = Vec::new();
    for (method, template, roles) in &eps {
        if roles == "public" {
            public.push(template.clone());
            continue;
        }
        let path = fill(template, &fx.sub, &cred, &token);
        let body = valid_body(method, template).unwrap_or(NB);
        for (label, api) in [("no token", fx.api(Anon)), ("an unknown token", garbage.clone())] {
            let (s, b) = api.call(method, &path, (!body.is_null()).then_some(&body));
            assert_eq!((s, b["code"].as_str().unwrap_or("")), (401, "UNAUTHENTICATED"), "{method} {path} with {label}: {b}");
            assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
        }
    }
    assert_eq!(public, ["/api/v1/auth/login"], "only login is public");
    assert_eq!(before, fx.snapshot("/api/v1/registry/export"), "unauthenticated calls changed something");
}

#[test]
fn auditors_never_write_and_operator_only_actions_refuse_agency_admins() {
    let fx = Fx::new();
    let (cred, token) = sweep_objects(&fx);
    // Calls every signed-in user may make about its own session and tokens.
    let self_service = [("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/tokens"), ("DELETE", "/api/v1/tokens/{id}")];
    let (mut writes, mut operator_only) = (0, 0);
    for (method, template, roles) in documented(&fx) {
        let path = fill(&template, &fx.sub, &cred, &token);
        let method: &'static str = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            other => panic!("unexpected method {other}"),
        };
        if roles == "public" || self_service.contains(&(method, template.as_str())) {
            continue;
        }
        // POSTs that only read (verify the audit chain, compare a CSV with our counts): auditors
        // may call them; the operator-and-auditor one still refuses agency-admins.
        let read_only = [("POST", "/api/v1/audit/verify"), ("POST", "/api/v1/audit/reconciliation/compare")];
        if read_only.contains(&(method, template.as_str())) {
            if roles == "operator, auditor" {
                for who in [Prov, Cons] {
                    fx.check(&forbidden(who, method, path.clone(), NB));
                }
                operator_only += 1;
            }
            continue;
        }
        let body = if method == "GET" {
            NB
        } else {
            writes += 1;
            let body =
                valid_body(method, &template).unwrap_or_else(|| panic!("no valid body for {method} {template}; add one to valid_body()"));
            fx.check(&forbidden(Aud, method, path.clone(), body.clone()));
            body
        };
        if roles == "operator" || roles == "operator, auditor" {
            // Prov and Cons both see every object addressed here (their agencies, their
            // subscription), so the refusal is about the role, never about visibility.
            for who in [Prov, Cons] {
                fx.check(&forbidden(who, method, path.clone(), body.clone()));
            }
            operator_only += 1;
        }
    }
    assert!(writes >= 33, "only {writes} write endpoints swept");
    assert!(operator_only >= 14, "only {operator_only} operator-only endpoints swept");
}
