//! The Debian package (SPEC §1), black-box: `scripts/build-deb` builds it; `lintian --fail-on
//! error` accepts it; its control data, conffiles and contents are what packaging/README.md
//! says; it installs into a throwaway root with the real dpkg (maintainer scripts run
//! chrootless under `DPKG_ROOT`), creating the `lgsp` user, /var/lib/lgsp and /etc/lgsp/tls and
//! enabling the unit; a reinstall keeps the operator's config; `remove` keeps data, `purge`
//! deletes it; the release build it made is fresh for a later plain `cargo build --release`.
//! Plus, always: `serve` before `cluster init` exits 64 and the unit does not restart on 64, so
//! an enabled but unconfigured node fails once instead of looping; `scripts/build-deb` refuses
//! an unknown option with its usage (exit 64).
//!
//! The package tests build a release binary (minutes), so they are `#[ignore]`d in a plain
//! `cargo test`; scripts/test runs them (`cargo test --test packaging -- --ignored`, as root).
#![allow(clippy::disallowed_methods)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp");

fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{}", o.status, text(&o));
    o
}

/// Builds the package once per test process; returns its path.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let o = run(Command::new(root_dir().join("scripts/build-deb")).current_dir(root_dir()));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let path = PathBuf::from(stdout.lines().last().expect("build-deb prints the path").trim());
        assert!(path.is_file(), "build-deb printed {}, which is not a file", path.display());
        path
    })
}

#[test]
fn serve_before_cluster_init_exits_64_and_the_unit_does_not_restart_on_64() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    // TLS files only need to exist: the missing cluster identity is found before they are read.
    std::fs::write(d.join("server.crt"), "unused").expect("write");
    std::fs::write(d.join("server.key"), "unused").expect("write");
    let cfg = d.join("lgsp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = '{0}/data'\n[listen]\nadmin = '127.0.0.1:0'\ngateway = '127.0.0.1:0'\nmetrics = '127.0.0.1:0'\ncluster = '127.0.0.1:0'\n[tls]\ncert = '{0}/server.crt'\nkey = '{0}/server.key'\n",
            d.display()
        ),
    )
    .expect("write");
    let o = Command::new(BIN).args(["serve", "--config"]).arg(&cfg).output().expect("serve");
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("lgsp cluster init") && text(&o).contains("lgsp cluster join"), "{}", text(&o));

    let unit = std::fs::read_to_string(root_dir().join("systemd/lgsp.service")).expect("systemd/lgsp.service");
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
            .collect()
    };
    assert!(
        values("RestartPreventExitStatus").iter().any(|v| v.split_whitespace().any(|c| c == "64")),
        "lgsp.service must not restart a node that exits 64 (not initialised / bad config)"
    );
    assert_eq!(values("Type"), ["notify"]);
    assert_eq!(values("User"), ["lgsp"]);
    assert!(values("ExecStart").iter().any(|v| v.starts_with("/usr/bin/lgsp serve --config /etc/lgsp/lgsp.toml")), "{unit}");
}

#[test]
fn build_deb_refuses_an_unknown_option_with_its_usage() {
    let o = Command::new(root_dir().join("scripts/build-deb")).arg("--bogus").output().expect("scripts/build-deb");
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage: scripts/build-deb [--prepare]"), "{}", text(&o));
}

/// Variables cargo sets for a test process and a plain shell does not have.
fn set_by_cargo_for_a_test(name: &str) -> bool {
    name == "CARGO"
        || ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

#[test]
#[ignore = "builds a release .deb (minutes); scripts/test runs it with --ignored"]
fn the_release_build_made_for_the_package_is_fresh_for_a_plain_cargo_build() {
    // build-deb runs here inside `cargo test`, with cargo's per-crate variables set; a later
    // `cargo build --release` from a shell (chaos/run) must find it all fresh, not rebuild the
    // crates whose build scripts track one of those variables.
    deb();
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "--locked", "-v"]).current_dir(root_dir());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_a_test) {
            cmd.env_remove(name);
        }
    }
    let o = run(&mut cmd);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.lines().any(|l| l.trim_start().starts_with("Fresh lgsp ")), "no `Fresh lgsp` line:\n{log}");
    let rebuilt: Vec<&str> = log.lines().filter(|l| l.trim_start().starts_with("Compiling ")).collect();
    assert!(rebuilt.is_empty(), "a plain release build after build-deb rebuilt {rebuilt:?}");
}

#[test]
#[ignore = "builds a release .deb (minutes); scripts/test runs it with --ignored"]
fn lintian_accepts_the_package() {
    let o = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info", "--tag-display-limit", "0"])
        .arg(deb())
        .output()
        .expect("lintian not found: apt-get install lintian (scripts/test does)");
    // Warnings and notes are printed for the record; only errors fail.
    println!("lintian:\n{}", text(&o));
    assert!(o.status.success(), "lintian --fail-on error:\n{}", text(&o));
    assert!(!text(&o).lines().any(|l| l.starts_with("E: ")), "{}", text(&o));
}

#[test]
#[ignore = "builds a release .deb (minutes); scripts/test runs it with --ignored"]
fn control_data_conffiles_and_contents() {
    let deb = deb();
    let info = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-I").arg(deb)).stdout).into_owned();
    for needle in ["Package: lgsp", "Section: net", "Priority: optional", "Maintainer: "] {
        assert!(info.contains(needle), "control lacks {needle}:\n{info}");
    }
    let depends = info.lines().find_map(|l| l.trim().strip_prefix("Depends: ")).expect("Depends");
    assert!(depends.contains("libc6") && depends.contains("systemd"), "Depends: {depends}");
    let conffiles = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles")).stdout).into_owned();
    assert_eq!(conffiles.trim(), "/etc/lgsp/lgsp.toml");
    for script in ["postinst", "postrm", "prerm"] {
        let s = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-I").arg(deb).arg(script)).stdout).into_owned();
        assert!(s.starts_with("#!/bin/sh"), "{script}:\n{s}");
        assert!(!s.contains("#DEBHELPER#"), "{script} still has the placeholder:\n{s}");
    }
    let postinst = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-I").arg(deb).arg("postinst")).stdout).into_owned();
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("deb-systemd-helper enable"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "the package must not start an unconfigured node:\n{postinst}");

    let listing = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-c").arg(deb)).stdout).into_owned();
    let files: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for f in [
        "./usr/bin/lgsp",
        "./etc/lgsp/lgsp.toml",
        "./usr/lib/systemd/system/lgsp.service",
        "./usr/lib/sysusers.d/lgsp.conf",
        "./usr/lib/tmpfiles.d/lgsp.conf",
        "./usr/share/man/man1/lgsp.1.gz",
        "./usr/share/bash-completion/completions/lgsp",
        "./usr/share/zsh/vendor-completions/_lgsp",
        "./usr/share/fish/vendor_completions.d/lgsp.fish",
        "./usr/share/lgsp/prometheus/lgsp-alerts.yml",
        "./usr/share/lgsp/grafana/lgsp-dashboard.json",
        "./usr/share/doc/lgsp/README.md",
        "./usr/share/doc/lgsp/copyright",
        "./usr/share/doc/lgsp/changelog.Debian.gz",
    ] {
        assert!(files.contains(&f), "{f} missing from the package:\n{listing}");
    }
    let bin = listing.lines().find(|l| l.ends_with(" ./usr/bin/lgsp")).expect("binary line");
    assert!(bin.starts_with("-rwxr-xr-x 0/0 "), "{bin}");

    // The files are the ones in the source tree, and the binary runs.
    let x = tempfile::tempdir().expect("tmp");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    for (packaged, source) in [
        ("etc/lgsp/lgsp.toml", "packaging/lgsp.toml"),
        ("usr/share/lgsp/prometheus/lgsp-alerts.yml", "packaging/prometheus/lgsp-alerts.yml"),
        ("usr/share/lgsp/grafana/lgsp-dashboard.json", "packaging/grafana/lgsp-dashboard.json"),
        ("usr/lib/systemd/system/lgsp.service", "systemd/lgsp.service"),
    ] {
        assert_eq!(
            std::fs::read(x.path().join(packaged)).expect("packaged file"),
            std::fs::read(root_dir().join(source)).expect("source file"),
            "{packaged} differs from {source}"
        );
    }
    let v = run(Command::new(x.path().join("usr/bin/lgsp")).arg("--version"));
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("lgsp {}", env!("CARGO_PKG_VERSION")));
    let man = run(Command::new("gzip").arg("-dc").arg(x.path().join("usr/share/man/man1/lgsp.1.gz")));
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH lgsp 1"), "not a man page");
    let bash = std::fs::read_to_string(x.path().join("usr/share/bash-completion/completions/lgsp")).expect("bash completion");
    assert!(bash.contains("complete") && bash.contains("cluster"), "not a bash completion of lgsp");
}

/// dpkg with `--root` and chrootless maintainer scripts: what the scripts do is observable in
/// the throwaway root, nothing touches the host's users or units.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--force-not-root", "--log=/dev/null"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn passwd_entry(root: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    std::fs::read_to_string(root.join(file))
        .ok()?
        .lines()
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(name))
}

#[test]
#[ignore = "builds a release .deb (minutes); scripts/test runs it with --ignored"]
fn installs_reinstalls_removes_and_purges_in_a_throwaway_root() {
    let deb = deb().to_str().expect("utf-8 path").to_owned();
    let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    assert!(is_root, "this test needs root (dpkg sets owners in the throwaway root); scripts/test runs as root");
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("dpkg admin dir");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("status");

    let first = dpkg(root, &["--install", &deb]);
    assert!(text(&first).contains("lgsp cluster init"), "first install explains the next step:\n{}", text(&first));

    let user = passwd_entry(root, "etc/passwd", "lgsp").expect("postinst created the lgsp user");
    assert_eq!(user[5], "/var/lib/lgsp", "home");
    assert!(user[6].ends_with("nologin"), "shell {}", user[6]);
    let uid: u32 = user[2].parse().expect("uid");
    assert!(uid < 1000, "a system user, uid {uid}");
    let group = passwd_entry(root, "etc/group", "lgsp").expect("postinst created the lgsp group");
    let gid: u32 = group[2].parse().expect("gid");

    let data = std::fs::metadata(root.join("var/lib/lgsp")).expect("/var/lib/lgsp created");
    assert_eq!((data.uid(), data.gid(), data.permissions().mode() & 0o7777), (uid, gid, 0o750), "/var/lib/lgsp owner and mode");
    let tls = std::fs::metadata(root.join("etc/lgsp/tls")).expect("/etc/lgsp/tls created");
    assert_eq!((tls.uid(), tls.gid(), tls.permissions().mode() & 0o7777), (0, gid, 0o750), "/etc/lgsp/tls owner and mode");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/lgsp.service");
    assert!(std::fs::symlink_metadata(&wants).is_ok(), "lgsp.service is enabled");
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).expect("dpkg status");
    assert!(status.contains("Status: install ok installed") && status.contains(" /etc/lgsp/lgsp.toml "), "{status}");

    // The operator's edits to the conffile survive a reinstall; the node's data too.
    let conf = root.join("etc/lgsp/lgsp.toml");
    let edited = std::fs::read_to_string(&conf).expect("conffile").replace("name = \"node-1\"", "name = \"hp-node-2\"");
    std::fs::write(&conf, &edited).expect("edit conffile");
    std::fs::write(root.join("var/lib/lgsp/registry.redb"), "node data").expect("data");
    let again = dpkg(root, &["--install", &deb]);
    assert!(!text(&again).contains("lgsp cluster init"), "an upgrade does not repeat the first-install notice:\n{}", text(&again));
    assert_eq!(std::fs::read_to_string(&conf).expect("conffile"), edited, "reinstall kept the edited config");

    // remove: program gone; configuration and data stay.
    dpkg(root, &["--remove", "lgsp"]);
    assert!(!root.join("usr/bin/lgsp").exists(), "binary removed");
    assert!(conf.exists() && root.join("var/lib/lgsp/registry.redb").exists(), "remove keeps config and data");

    // purge: data directory and TLS directory gone, and said so; the user stays.
    let purge = dpkg(root, &["--purge", "lgsp"]);
    assert!(!root.join("var/lib/lgsp").exists(), "purge removes /var/lib/lgsp");
    assert!(!root.join("etc/lgsp").exists(), "purge removes /etc/lgsp");
    assert!(text(&purge).contains("purge removed") && text(&purge).contains("/var/lib/lgsp"), "{}", text(&purge));
    assert!(std::fs::symlink_metadata(&wants).is_err(), "purge removes the enablement symlink");
    assert!(passwd_entry(root, "etc/passwd", "lgsp").is_some(), "the system user is kept (Debian practice)");
}
