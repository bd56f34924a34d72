//! Declarative registry import/export (SPEC §8) through the real binary: the CLI
//! (`lgsp registry import|export`) and the admin API (`POST /api/v1/registry/import`,
//! `GET /api/v1/registry/export`), plus loading the real DVHC catalog (SPEC §4).
//!
//! The large registry is built from `shared/data/dvhc-2025.json`: one agency per province and
//! one per ward/commune (3,355 agencies), with systems, services, subscriptions and credentials.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use common::{Api, Node};
use serde_json::{json, Value};

const DVHC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/dvhc-2025.json");

// ---------------------------------------------------------------------------------------------
// The real administrative units.

struct Ward {
    code: u32,
    name: String,
}

struct Province {
    code: u32,
    name: String,
    wards: Vec<Ward>,
}

fn dvhc() -> Vec<Province> {
    let text = std::fs::read_to_string(DVHC).expect("read dvhc-2025.json");
    let v: Value = serde_json::from_str(&text).expect("dvhc-2025.json is JSON");
    v["provinces"]
        .as_array()
        .expect("provinces")
        .iter()
        .map(|p| Province {
            code: p["code"].as_u64().expect("province code") as u32,
            name: p["name"].as_str().expect("province name").to_owned(),
            wards: p["wards"]
                .as_array()
                .expect("wards")
                .iter()
                .map(|w| Ward {
                    code: w["code"].as_u64().expect("ward code") as u32,
                    name: w["name"].as_str().expect("ward name").to_owned(),
                })
                .collect(),
        })
        .collect()
}

/// QĐ 20/2020 shape `NNN.NN.NN.ANN`, checked without a regex crate: `^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$`.
fn is_agency_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && b.iter().enumerate().all(|(i, c)| match i {
            3 | 6 | 9 => *c == b'.',
            10 => c.is_ascii_uppercase(),
            _ => c.is_ascii_digit(),
        })
}

/// A province's agency: `000.00.00.H{GSO province code}` (H31 = Hải Phòng, as in QĐ 20/2020).
fn province_agency(pc: u32) -> String {
    format!("000.00.00.H{pc:02}")
}

/// A ward's agency: the 5-digit GSO ward code spread over the numeric parts, under its province.
fn ward_agency(pc: u32, ward: u32) -> String {
    format!("{:03}.{:02}.01.H{pc:02}", ward / 100, ward % 100)
}

// ---------------------------------------------------------------------------------------------
// The generated registry document.

struct ImportedSecret {
    consumer_key: String,
    consumer_secret: String,
    hmac: Option<(String, Vec<u8>)>,
}

struct Generated {
    doc: Value,
    toml: String,
    agencies: usize,
    systems: usize,
    services: usize,
    subscriptions: usize,
    active: usize,
    credentials: usize,
    secrets: Vec<ImportedSecret>,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

fn generate() -> Generated {
    let provinces = dvhc();
    let mut agencies = Vec::new();
    let mut systems = Vec::new();
    let mut services = Vec::new();
    let mut subscriptions = Vec::new();
    let mut credentials = Vec::new();
    let mut secrets = Vec::new();
    let mut active = 0;
    for (pi, p) in provinces.iter().enumerate() {
        let pa = province_agency(p.code);
        agencies.push(json!({"code": pa, "name": format!("UBND {}", p.name)}));
        for w in &p.wards {
            agencies.push(json!({"code": ward_agency(p.code, w.code), "name": format!("UBND {}", w.name), "parent": pa}));
        }
        // The province's population database provides one service.
        let provider = format!("p{:02}-dancu", p.code);
        systems.push(json!({"id": provider, "agency": pa, "name": format!("CSDL dân cư {}", p.name), "security_level": 3}));
        let context = format!("dancu-{:02}", p.code);
        let mut versions = vec![json!({
            "version": "v1",
            "state": "published",
            "upstream": {"production": format!("http://10.{pi}.0.5/api"), "test": format!("http://10.{pi}.0.6/api")},
        })];
        if pi % 2 == 0 {
            versions.push(json!({"version": "v2", "state": "draft", "upstream": {"test": format!("http://10.{pi}.0.7/api/v2")}}));
        }
        services.push(json!({
            "context": context,
            "provider_system": provider,
            "name": format!("Tra cứu dân cư {}", p.name),
            "purpose": "xác minh thông tin công dân",
            "version": versions,
        }));
        // Three wards of each province run a civil-status system that consumes it.
        for (wi, w) in p.wards.iter().take(3).enumerate() {
            let consumer = format!("x{:05}-hotich", w.code);
            systems.push(
                json!({"id": consumer, "agency": ward_agency(p.code, w.code), "name": format!("Hộ tịch {}", w.name), "security_level": 2}),
            );
            let state = ["active", "requested", "provider_approved"][wi % 3];
            if state == "active" {
                active += 1;
            }
            subscriptions.push(json!({"consumer_system": consumer, "service": context, "version": "v1", "environment": "production", "state": state, "purpose": "đăng ký hộ tịch"}));
            subscriptions.push(json!({"consumer_system": consumer, "service": context, "version": "v1", "environment": "test", "state": "active", "purpose": "kiểm thử"}));
            active += 1;
            // Imported credentials are slow to hash (argon2id) in a debug build: keep a few.
            if pi == 0 {
                let secret = ImportedSecret {
                    consumer_key: format!("{consumer}-prod-key"),
                    consumer_secret: format!("cs-{}", random_hex(24)),
                    hmac: (wi != 1).then(|| (format!("{consumer}-1"), (0..32).map(|_| rand::random::<u8>()).collect())),
                };
                let mut c = json!({"system": consumer, "environment": "production", "consumer_key": secret.consumer_key, "consumer_secret": secret.consumer_secret});
                if let Some((key_id, raw)) = &secret.hmac {
                    c["hmac"] = json!({"key_id": key_id, "secret_base64": base64::engine::general_purpose::STANDARD.encode(raw)});
                }
                credentials.push(c);
                secrets.push(secret);
            }
        }
    }
    let g = Generated {
        agencies: agencies.len(),
        systems: systems.len(),
        services: services.len(),
        subscriptions: subscriptions.len(),
        active,
        credentials: credentials.len(),
        doc: json!({
            "agency": agencies,
            "system": systems,
            "service": services,
            "subscription": subscriptions,
            "credential": credentials,
        }),
        toml: String::new(),
        secrets,
    };
    Generated { toml: to_toml(&g.doc), ..g }
}

/// Renders a registry document in the hand-written TOML shape of SPEC §8: `[[section]]` tables,
/// nested arrays of tables as `[[section.key]]`, objects as inline tables.
fn to_toml(doc: &Value) -> String {
    fn val(v: &Value) -> String {
        match v {
            // A JSON string literal is a valid TOML basic string.
            Value::String(s) => serde_json::to_string(s).expect("string"),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(a) => format!("[{}]", a.iter().map(val).collect::<Vec<_>>().join(", ")),
            Value::Object(m) => format!("{{ {} }}", m.iter().map(|(k, v)| format!("{k} = {}", val(v))).collect::<Vec<_>>().join(", ")),
            Value::Null => panic!("TOML has no null"),
        }
    }
    let is_tables = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object));
    let mut out = String::from("# Generated by tests/import.rs from shared/data/dvhc-2025.json\n");
    for section in ["agency", "system", "service", "subscription", "credential"] {
        for item in doc[section].as_array().into_iter().flatten() {
            let _ = writeln!(out, "\n[[{section}]]");
            let m = item.as_object().expect("item is a table");
            for (k, v) in m.iter().filter(|(_, v)| !is_tables(v)) {
                let _ = writeln!(out, "{k} = {}", val(v));
            }
            for (k, v) in m.iter().filter(|(_, v)| is_tables(v)) {
                for sub in v.as_array().expect("array") {
                    let _ = writeln!(out, "[[{section}.{k}]]");
                    for (k2, v2) in sub.as_object().expect("table") {
                        let _ = writeln!(out, "{k2} = {}", val(v2));
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn total(op: &Api, path: &str) -> usize {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (s, v) = op.get(&format!("{path}{sep}limit=1"));
    assert_eq!(s, 200, "GET {path}: {v}");
    v["total"].as_u64().unwrap_or_else(|| panic!("{path} has no total: {v}")) as usize
}

/// The whole admin audit trail, newest first.
fn audit(op: &Api) -> Vec<Value> {
    let (s, v) = op.get("/api/v1/audit/admin?limit=10000");
    assert_eq!(s, 200, "audit: {v}");
    v["items"].as_array().expect("audit items").clone()
}

struct Counts {
    agencies: usize,
    systems: usize,
    services: usize,
    subscriptions: usize,
    credentials: usize,
}

fn counts(op: &Api) -> Counts {
    Counts {
        agencies: total(op, "/api/v1/agencies"),
        systems: total(op, "/api/v1/systems"),
        services: total(op, "/api/v1/services"),
        subscriptions: total(op, "/api/v1/subscriptions"),
        credentials: total(op, "/api/v1/credentials"),
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cli_ok(node: &Node, args: &[&str]) -> String {
    let o = node.cli(args, None);
    assert!(o.status.success(), "lgsp {args:?} failed ({}):\nstdout: {}\nstderr: {}", o.status, stdout(&o), stderr(&o));
    stdout(&o)
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Object keys that must never leave the appliance.
fn find_secret_keys(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if (k == "consumer_secret" || k == "secret_base64" || k == "secret") && !x.is_null() {
                    found.push(p.clone());
                }
                find_secret_keys(x, &p, found);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                find_secret_keys(x, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Every plaintext form of the imported secrets that must not appear in `text`.
fn secret_needles<'a>(secrets: impl IntoIterator<Item = &'a ImportedSecret>) -> Vec<(String, Vec<u8>)> {
    let mut needles = Vec::new();
    for s in secrets {
        needles.push((format!("consumer_secret of {}", s.consumer_key), s.consumer_secret.as_bytes().to_vec()));
        if let Some((key_id, raw)) = &s.hmac {
            needles.push((format!("HMAC key {key_id} (raw bytes)"), raw.clone()));
            needles.push((format!("HMAC key {key_id} (base64)"), base64::engine::general_purpose::STANDARD.encode(raw).into_bytes()));
            needles.push((format!("HMAC key {key_id} (hex)"), raw.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()));
        }
    }
    needles
}

/// The export with credentials in a canonical order (by consumer key).
fn canonical(mut export: Value) -> Value {
    if let Some(a) = export["credential"].as_array_mut() {
        a.sort_by(|x, y| x["consumer_key"].as_str().cmp(&y["consumer_key"].as_str()));
    }
    export
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn generated_registry_has_the_expected_shape() {
    let g = generate();
    let codes: Vec<&str> = g.doc["agency"].as_array().unwrap().iter().map(|a| a["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), 34 + 3321, "one agency per province and per ward");
    assert!(codes.len() >= 3000);
    let unique: BTreeSet<&str> = codes.iter().copied().collect();
    assert_eq!(unique.len(), codes.len(), "agency codes are unique");
    for c in &codes {
        assert!(is_agency_code(c), "{c} does not match NNN.NN.NN.ANN");
    }
    assert!(g.toml.contains("[[service.version]]"));
    let parsed: toml::Value = toml::from_str(&g.toml).expect("generated TOML parses");
    let parsed = serde_json::to_value(parsed).unwrap();
    assert_eq!(parsed, g.doc, "the TOML says the same as the JSON document");
}

#[test]
fn large_registry_import_is_complete_idempotent_and_round_trips() {
    let g = generate();
    let node = Node::start();
    let op = node.operator();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("registry.toml");
    std::fs::write(&file, &g.toml).unwrap();
    let file_s = file.to_str().unwrap();

    // Dry run through the CLI: valid, changes nothing.
    let audit0 = audit(&op);
    let out = cli_ok(&node, &["registry", "import", "--dry-run", file_s]);
    assert!(out.contains("is valid"), "{out}");
    assert_eq!(counts(&op).agencies, 0, "a dry run changes nothing");
    assert_eq!(audit(&op), audit0, "a dry run leaves no audit entry");

    // Import through the CLI.
    let out = cli_ok(&node, &["registry", "import", file_s]);
    assert!(out.contains("imported"), "{out}");
    let c = counts(&op);
    assert_eq!(c.agencies, g.agencies, "agencies");
    assert_eq!(c.systems, g.systems, "systems");
    assert_eq!(c.services, g.services, "services");
    assert_eq!(c.subscriptions, g.subscriptions, "subscriptions");
    assert_eq!(c.credentials, g.credentials, "credentials");
    assert_eq!(total(&op, "/api/v1/subscriptions?state=active"), g.active);
    assert_eq!(total(&op, "/api/v1/subscriptions?state=provider_approved"), 34);

    // Spot checks: a ward under its province; a service with its versions.
    let (s, ward) = op.get(&format!("/api/v1/agencies/{}", ward_agency(1, 70)));
    assert_eq!(s, 200, "{ward}");
    assert_eq!(ward["name"], "UBND Phường Hoàn Kiếm");
    assert_eq!(ward["parent"], province_agency(1));
    let (s, hp) = op.get(&format!("/api/v1/agencies/{}", province_agency(31)));
    assert_eq!(s, 200, "{hp}");
    assert_eq!(hp["code"], "000.00.00.H31");
    let (s, svc) = op.get("/api/v1/services/dancu-31");
    assert_eq!(s, 200, "{svc}");
    assert_eq!(svc["provider_system"], "p31-dancu");
    let (s, creds) = op.get("/api/v1/credentials?limit=1000");
    assert_eq!(s, 200);
    let keys: BTreeSet<&str> = creds["items"].as_array().unwrap().iter().map(|c| c["consumer_key"].as_str().unwrap()).collect();
    for sec in &g.secrets {
        assert!(keys.contains(sec.consumer_key.as_str()), "{keys:?}");
    }
    let mut found = Vec::new();
    find_secret_keys(&creds, "$", &mut found);
    assert!(found.is_empty(), "credential list shows secrets: {found:?}");

    let audit1 = audit(&op);
    assert!(audit1.len() > audit0.len(), "the import is audited");

    // Idempotent: importing the same file again changes nothing, not even the audit trail.
    let out = cli_ok(&node, &["registry", "import", file_s]);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(audit(&op), audit1, "a no-op import leaves no audit entry");
    let (s, v) = op.post("/api/v1/registry/import", g.doc.clone());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"], 0, "{v}");
    assert_eq!(v["applied"], false, "{v}");
    assert_eq!(audit(&op), audit1);

    // One changed name: the API's dry run reports it and changes nothing; the import applies it.
    let mut changed = g.doc.clone();
    changed["agency"][1]["name"] = json!("UBND Phường Hoàn Kiếm (đổi tên)");
    let (s, v) = op.post("/api/v1/registry/import?dry_run=true", changed.clone());
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["changes"].as_u64(), v["applied"].as_bool()), (Some(1), Some(false)), "{v}");
    assert_eq!(audit(&op), audit1, "dry run");
    let (_, ward) = op.get(&format!("/api/v1/agencies/{}", ward_agency(1, 70)));
    assert_eq!(ward["name"], "UBND Phường Hoàn Kiếm", "dry run");
    let (s, v) = op.post("/api/v1/registry/import", changed.clone());
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["changes"].as_u64(), v["applied"].as_bool()), (Some(1), Some(true)), "{v}");
    let (_, ward) = op.get(&format!("/api/v1/agencies/{}", ward_agency(1, 70)));
    assert_eq!(ward["name"], "UBND Phường Hoàn Kiếm (đổi tên)");
    let audit2 = audit(&op);
    assert!(audit2.len() > audit1.len(), "the change is audited");
    assert_eq!(counts(&op).agencies, g.agencies);

    // Imported secrets are stored hashed/sealed: no plaintext form anywhere in the data dir,
    // nor in the node's log.
    // Three more credentials, issued by the API (their secrets are shown once). The round trip
    // below then carries six, so an export order that depends on random internal ids cannot
    // match by chance (1 in 6! = 720) while the argon2id cost of imports stays low.
    let mut issued = Vec::new();
    for (i, system) in ["x00070-hotich", "x00073-hotich", "x00004-hotich"].into_iter().enumerate() {
        let (s, v) = op.post("/api/v1/credentials", json!({"system": system, "environment": "test", "hmac": i != 1}));
        assert_eq!(s, 201, "issue a credential for {system}: {v}");
        issued.push(ImportedSecret {
            consumer_key: v["consumer_key"].as_str().expect("consumer_key").to_owned(),
            consumer_secret: v["consumer_secret"].as_str().expect("consumer_secret").to_owned(),
            hmac: v["hmac"]["secret_base64"].as_str().map(|b| {
                (
                    v["hmac"]["key_id"].as_str().expect("key_id").to_owned(),
                    base64::engine::general_purpose::STANDARD.decode(b).expect("base64"),
                )
            }),
        });
    }
    let n_creds = g.credentials + issued.len();
    let needles = secret_needles(g.secrets.iter().chain(&issued));
    let mut scanned = files_under(&node.dir);
    scanned.push(node.log.clone());
    for f in &scanned {
        let bytes = std::fs::read(f).unwrap_or_default();
        for (what, n) in &needles {
            assert!(!contains_bytes(&bytes, n), "{what} is stored in plaintext in {}", f.display());
        }
    }

    // Exports never contain secrets: API, CLI TOML and CLI JSON.
    let (s, export1) = op.get("/api/v1/registry/export");
    assert_eq!(s, 200, "{export1}");
    let mut found = Vec::new();
    find_secret_keys(&export1, "$", &mut found);
    assert!(found.is_empty(), "the export has secrets at {found:?}");
    assert_eq!(export1["agency"].as_array().unwrap().len(), g.agencies);
    assert_eq!(export1["system"].as_array().unwrap().len(), g.systems);
    assert_eq!(export1["service"].as_array().unwrap().len(), g.services);
    assert_eq!(export1["subscription"].as_array().unwrap().len(), g.subscriptions);
    assert_eq!(export1["credential"].as_array().unwrap().len(), n_creds);
    let toml_out = tmp.path().join("export.toml");
    let json_out = tmp.path().join("export.json");
    cli_ok(&node, &["registry", "export", "-o", toml_out.to_str().unwrap()]);
    cli_ok(&node, &["registry", "export", "-o", json_out.to_str().unwrap()]);
    let toml_text = std::fs::read_to_string(&toml_out).unwrap();
    let json_text = std::fs::read_to_string(&json_out).unwrap();
    for (name, text) in [("TOML", &toml_text), ("JSON", &json_text)] {
        assert!(!text.contains("consumer_secret"), "{name} export: consumer_secret");
        assert!(!text.contains("secret_base64"), "{name} export: secret_base64");
        for (what, n) in &needles {
            assert!(!contains_bytes(text.as_bytes(), n), "{name} export contains {what}");
        }
    }
    let from_toml: Value = serde_json::to_value(toml::from_str::<toml::Value>(&toml_text).expect("export TOML parses")).unwrap();
    let from_json: Value = serde_json::from_str(&json_text).expect("export JSON parses");
    assert_eq!(from_toml, from_json, "the TOML and JSON exports say the same");

    // Round trip onto a fresh node. The export has no secrets, so on its own it cannot create
    // the credentials: every missing secret is reported with its path and nothing changes.
    let node2 = Node::start();
    let op2 = node2.operator();
    let audit_fresh = audit(&op2);
    let o = node2.cli(&["registry", "import", toml_out.to_str().unwrap()], None);
    assert!(!o.status.success(), "import without secrets must fail");
    let err = stderr(&o);
    for i in 0..n_creds {
        assert!(err.contains(&format!("credential[{i}].consumer_secret")), "missing path credential[{i}].consumer_secret in:\n{err}");
    }
    assert_eq!(counts(&op2).agencies, 0, "nothing changed");
    assert_eq!(audit(&op2), audit_fresh, "nothing changed");

    // With the secrets supplied again (as an operator migrating would), the export imports.
    let by_key: BTreeMap<&str, &ImportedSecret> = g.secrets.iter().chain(&issued).map(|s| (s.consumer_key.as_str(), s)).collect();
    let mut with_secrets = from_toml.clone();
    for c in with_secrets["credential"].as_array_mut().unwrap() {
        let sec = by_key[c["consumer_key"].as_str().unwrap()];
        c["consumer_secret"] = json!(sec.consumer_secret);
        if let Some((_, raw)) = &sec.hmac {
            c["hmac"]["secret_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(raw));
        }
    }
    let rt_file = tmp.path().join("round-trip.json");
    std::fs::write(&rt_file, serde_json::to_vec_pretty(&with_secrets).unwrap()).unwrap();
    let out = cli_ok(&node2, &["registry", "import", rt_file.to_str().unwrap()]);
    assert!(out.contains("imported"), "{out}");
    let out = cli_ok(&node2, &["registry", "import", rt_file.to_str().unwrap()]);
    assert!(out.contains("nothing to change"), "round trip is idempotent: {out}");
    let (s, export2) = op2.get("/api/v1/registry/export");
    assert_eq!(s, 200);
    let toml_out2 = tmp.path().join("export2.toml");
    cli_ok(&node2, &["registry", "export", "-o", toml_out2.to_str().unwrap()]);
    // Same content (credentials compared in a canonical order) ...
    assert!(canonical(export1.clone()) == canonical(export2.clone()), "the round trip changed the registry's content");
    // ... and the same document, byte for byte, so exports can be diffed and kept in git.
    let order1: Vec<&Value> = export1["credential"].as_array().unwrap().iter().map(|c| &c["consumer_key"]).collect();
    let order2: Vec<&Value> = export2["credential"].as_array().unwrap().iter().map(|c| &c["consumer_key"]).collect();
    assert_eq!(
        order1, order2,
        "export order of credentials differs between two nodes with the same registry \
         (ordered by the random internal credential id, not by a document key)"
    );
    assert!(export1 == export2, "the round-trip export differs");
    assert_eq!(toml_text, std::fs::read_to_string(&toml_out2).unwrap(), "the round-trip TOML export differs");
}

/// Builds the document with one error of each kind, on top of `common::seed`'s registry.
fn bad_document(with_unknown_field: bool) -> String {
    let mut t = String::from(
        r#"
[[agency]]
code = "000.00.02.H31"
name = "Sở Y tế Hải Phòng"

[[agency]]
code = "31-SYT"
name = "Mã sai"

[[system]]
id = "hp-yte"
agency = "000.00.02.H31"
name = "Hồ sơ sức khỏe"
security_level = 2

[[system]]
id = "hp-yte"
agency = "000.00.02.H31"
name = "Hồ sơ sức khỏe (trùng)"
security_level = 2

[[system]]
id = "hp-ma"
agency = "000.00.99.H31"
name = "Hệ thống của cơ quan không tồn tại"
security_level = 2
"#,
    );
    if with_unknown_field {
        t.push_str(
            r#"
[[system]]
id = "hp-mau"
agency = "000.00.00.H31"
name = "Trường lạ"
security_level = 2
colour = "red"
"#,
        );
    }
    t.push_str(
        r#"
[[service]]
context = "yte"
provider_system = "hp-yte"
name = "Tra cứu hồ sơ sức khỏe"
[[service.version]]
version = "v1"
state = "published"
upstream = { production = "ftp://10.0.0.9/api" }

[[credential]]
system = "stp-hotich"
environment = "production"
consumer_key = "stp-hotich-imported"
"#,
    );
    t
}

#[test]
fn invalid_document_reports_every_error_with_its_path_and_changes_nothing() {
    let node = Node::start();
    let op = node.operator();
    common::seed(&op);
    let before_audit = audit(&op);
    let before = counts(&op);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, bad_document(true)).unwrap();

    let o = node.cli(&["registry", "import", file.to_str().unwrap()], None);
    let err = stderr(&o);
    assert!(!o.status.success(), "a bad document must fail:\n{}", stdout(&o));
    assert_eq!(o.status.code(), Some(1), "refused operation: exit 1\n{err}");
    assert!(err.starts_with("error: IMPORT_INVALID: "), "{err}");

    // Nothing changed: not even the valid parts of the document.
    assert_eq!(audit(&op), before_audit, "audit trail changed");
    let after = counts(&op);
    assert_eq!(
        (after.agencies, after.systems, after.services, after.subscriptions, after.credentials),
        (before.agencies, before.systems, before.services, before.subscriptions, before.credentials)
    );
    let (s, _) = op.get("/api/v1/agencies/000.00.02.H31");
    assert_eq!(s, 404, "the valid agency of a refused document must not be created");

    // Every error, each with its path (validation of the whole file before changing anything).
    let expected = [
        ("agency[1].code", "bad code"),
        ("system[1].id", "duplicate id"),
        ("system[2].agency", "unknown agency reference"),
        ("system[3]", "unknown field `colour`"),
        ("service[0].version[0].upstream.production", "bad upstream URL"),
        ("credential[0].consumer_secret", "missing secret for a new credential"),
    ];
    let missing: Vec<String> = expected
        .iter()
        .filter(|(path, _)| {
            !err.lines().any(|l| l.trim_start().starts_with(&format!("{path}:")) || l.trim_start().starts_with(&format!("{path}.")))
        })
        .map(|(path, what)| format!("{path} ({what})"))
        .collect();
    assert!(err.contains("colour"), "the unknown field is not named:\n{err}");
    assert!(missing.is_empty(), "errors not reported: {missing:?}\nstderr was:\n{err}");

    // The API says the same, with the paths in details.errors; a dry run too.
    for q in ["", "?dry_run=true"] {
        let doc: Value = serde_json::to_value(toml::from_str::<toml::Value>(&bad_document(true)).unwrap()).unwrap();
        let (s, v) = op.post(&format!("/api/v1/registry/import{q}"), doc);
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["code"], "IMPORT_INVALID");
        let paths: Vec<&str> =
            v["details"]["errors"].as_array().expect("details.errors").iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(paths.len(), expected.len(), "{paths:?}");
    }
    assert_eq!(audit(&op), before_audit);
}

#[test]
fn every_semantic_error_is_reported_by_the_api() {
    let node = Node::start();
    let op = node.operator();
    common::seed(&op);
    let before_audit = audit(&op);
    let doc: Value = serde_json::to_value(toml::from_str::<toml::Value>(&bad_document(false)).unwrap()).unwrap();
    let (s, v) = op.post("/api/v1/registry/import", doc);
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["code"], "IMPORT_INVALID");
    assert!(v["message"].as_str().unwrap().contains("nothing was changed"), "{v}");
    let paths: BTreeSet<&str> = v["details"]["errors"]
        .as_array()
        .expect("details.errors")
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            e["path"].as_str().unwrap()
        })
        .collect();
    let expected: BTreeSet<&str> = [
        "agency[1].code",
        "system[1].id",
        "system[2].agency",
        "service[0].version[0].upstream.production",
        "credential[0].consumer_secret",
    ]
    .into();
    assert_eq!(paths, expected);
    assert_eq!(audit(&op), before_audit);
    let (s, _) = op.get("/api/v1/systems/hp-yte");
    assert_eq!(s, 404);
}

#[test]
fn dvhc_catalog_loads_34_provinces_and_3321_wards() {
    let node = Node::start();
    let op = node.operator();
    let (s, v) = op.post("/api/v1/agencies", json!({"code": "000.00.00.G06", "name": "Bộ Nội vụ"}));
    assert!(s < 300, "{v}");
    cli_ok(
        &node,
        &["catalog", "create", "--code", "donvihanhchinh", "--name", "Danh mục đơn vị hành chính", "--owner-agency", "000.00.00.G06"],
    );
    cli_ok(&node, &["catalog", "publish", "donvihanhchinh", DVHC, "--format", "dvhc"]);
    let (s, c) = op.get("/api/v1/catalogs/donvihanhchinh");
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["entries"], 34 + 3321, "{c}");
    assert_eq!(c["latest_version"], 1, "{c}");
    assert_eq!(c["owner_agency"], "000.00.00.G06");

    let (s, e) = op.get("/api/v1/catalogs/donvihanhchinh/entries?limit=10000");
    assert_eq!(s, 200);
    assert_eq!(e["total"], 3355);
    let items = e["items"].as_array().unwrap();
    let provinces: BTreeSet<&str> = items.iter().filter(|x| x["level"] == 1).map(|x| x["code"].as_str().unwrap()).collect();
    let wards: Vec<&Value> = items.iter().filter(|x| x["level"] == 2).collect();
    assert_eq!(provinces.len(), 34);
    assert_eq!(wards.len(), 3321);
    let codes: BTreeSet<&str> = wards.iter().map(|w| w["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), 3321, "ward codes are unique");
    for w in &wards {
        assert!(provinces.contains(w["parent_code"].as_str().unwrap_or("")), "ward without its province: {w}");
    }
    let hoan_kiem = wards.iter().find(|w| w["code"] == "00070").expect("Phường Hoàn Kiếm");
    assert_eq!(hoan_kiem["name"], "Phường Hoàn Kiếm");
    assert_eq!(hoan_kiem["parent_code"], "01");

    // --json on the read command prints the API's JSON.
    let out = cli_ok(&node, &["--json", "catalog", "show", "donvihanhchinh"]);
    let v: Value = serde_json::from_str(&out).expect("catalog show --json is JSON");
    assert_eq!(v["entries"], 3355);
}
