//! Architecture invariants (ARCHITECTURE.md), checked by scanning `use crate::` lines:
//! `registry` imports nothing internal and does no I/O; `gateway` never imports `cluster`;
//! only `app.rs` wires the servers together; every source file starts with a `//!` doc comment.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("src dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn internal_imports(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
        .filter_map(|l| l.split("crate::").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn registry_is_pure() {
    for f in files(&src().join("registry")) {
        let text = std::fs::read_to_string(&f).expect("read");
        let imports = internal_imports(&text);
        assert!(imports.is_empty(), "{} imports {:?}; the registry must import nothing internal", f.display(), imports);
        for banned in ["std::fs", "std::net", "tokio", "Utc::now", "SystemTime", "Instant::now", "rand::", "redb"] {
            assert!(!text.contains(banned), "{} uses {banned}; the registry does no I/O and reads no clock", f.display());
        }
    }
}

#[test]
fn gateway_never_imports_cluster() {
    for f in files(&src().join("gateway")) {
        let text = std::fs::read_to_string(&f).expect("read");
        assert!(!internal_imports(&text).iter().any(|m| m == "cluster" || m == "admin"), "{} imports cluster/admin", f.display());
    }
}

#[test]
fn probes_never_import_cluster_admin_or_gateway() {
    for f in files(&src().join("probes")) {
        let text = std::fs::read_to_string(&f).expect("read");
        let bad = internal_imports(&text).into_iter().find(|m| m == "cluster" || m == "admin" || m == "gateway");
        assert!(bad.is_none(), "{} imports {bad:?}; probes are wired by app.rs", f.display());
    }
}

#[test]
fn report_never_imports_cluster_admin_or_gateway_and_builds_purely() {
    for f in files(&src().join("report")) {
        let text = std::fs::read_to_string(&f).expect("read");
        let bad = internal_imports(&text).into_iter().find(|m| m == "cluster" || m == "admin" || m == "gateway");
        assert!(bad.is_none(), "{} imports {bad:?}; the report's publisher is wired by app.rs", f.display());
        // Only the publisher reads the clock and the disk; the model and renderers are pure.
        if !f.ends_with("publish.rs") {
            for banned in ["std::fs", "tokio", "Utc::now", "SystemTime", "Instant::now"] {
                assert!(!text.contains(banned), "{} uses {banned}; report building and rendering are pure", f.display());
            }
        }
    }
}

#[test]
fn only_cluster_knows_redb() {
    for f in files(&src()) {
        let text = std::fs::read_to_string(&f).expect("read");
        if text.contains("redb::") {
            // The probe history is its own file (DATA_DIR/probes.redb), never the registry store.
            let allowed = f.starts_with(src().join("cluster")) || f.ends_with("probes/history.rs");
            assert!(allowed, "{} uses redb; only src/cluster (and the probe history) may", f.display());
        }
    }
}

#[test]
fn only_app_wires_servers() {
    for f in files(&src()) {
        let text = std::fs::read_to_string(&f).expect("read");
        let wires = text.contains("Store::open(") || text.contains("admin::router(");
        if wires {
            assert!(f.ends_with("app.rs"), "{} wires modules; only app.rs may", f.display());
        }
    }
}

#[test]
fn every_file_says_what_it_owns() {
    for f in files(&src()) {
        let text = std::fs::read_to_string(&f).expect("read");
        assert!(text.trim_start().starts_with("//!"), "{} has no //! header saying what it owns", f.display());
    }
}

#[test]
fn no_unwrap_outside_tests() {
    for f in files(&src()) {
        let text = std::fs::read_to_string(&f).expect("read");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        if f.ends_with("registry/tests.rs") {
            continue;
        }
        assert!(!code.contains(".unwrap()"), "{} calls .unwrap() outside tests", f.display());
    }
}
