//! `lgsp serve` nodes for black-box tests: a throw-away CA issuing `localhost` certificates, and
//! a node's files (TLS pair, a config on free loopback ports, `cluster init`). Starting and
//! stopping the process is left to each test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Api, BIN};

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("udp port")
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A test CA and server certificates for `localhost` signed by it.
pub struct Pki {
    pub ca: rcgen::Certificate,
    pub ca_key: rcgen::KeyPair,
}

/// A server certificate and key as written to disk, and the certificate's fingerprint.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub sha256: String,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "lgsp test CA");
        let ca = p.self_signed(&ca_key).expect("ca");
        Pki { ca, ca_key }
    }

    pub fn leaf(&self, cn: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("cert");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), sha256: sha256_hex(cert.der()) }
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        let root = reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).expect("root");
        reqwest::blocking::Client::builder()
            .add_root_certificate(root)
            .tls_info(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("https client")
    }
}

/// A `lgsp serve` node's files: TLS pair, config, initialised cluster (not started).
pub struct Serve {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub admin: u16,
    pub gateway: u16,
    pub metrics: u16,
    pub cluster: u16,
}

impl Serve {
    /// Writes `leaf` and a config named `name` ending with `extra` (more TOML sections); no
    /// `cluster init` yet.
    pub fn write(dir: &Path, name: &str, leaf: &Leaf, extra: &str) -> Serve {
        let s = Serve {
            name: name.to_owned(),
            dir: dir.to_owned(),
            config: dir.join("lgsp.toml"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            admin: free_tcp_port(),
            gateway: free_tcp_port(),
            metrics: free_tcp_port(),
            cluster: free_udp_port(),
        };
        s.install(leaf);
        s.write_config(s.admin, extra);
        s
    }

    /// [`Serve::write`], then `lgsp cluster init` (asserted to succeed).
    pub fn prepare(dir: &Path, name: &str, leaf: &Leaf, extra: &str) -> Serve {
        let s = Serve::write(dir, name, leaf, extra);
        s.init();
        s
    }

    /// Runs `lgsp cluster init` on this config and asserts it succeeded.
    pub fn init(&self) {
        let out = Command::new(BIN).args(["cluster", "init", "--config"]).arg(&self.config).output().expect("cluster init");
        assert!(out.status.success(), "cluster init: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn install(&self, leaf: &Leaf) {
        std::fs::write(&self.cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&self.key, &leaf.key_pem).expect("write key");
    }

    /// (Re)writes the config with the admin listener on `admin` and `extra` at the end.
    pub fn write_config(&self, admin: u16, extra: &str) {
        let text = format!(
            "[node]\ndata_dir = '{d}/data'\nname = '{n}'\n[listen]\nadmin = '127.0.0.1:{admin}'\ngateway = '127.0.0.1:{g}'\nmetrics = '127.0.0.1:{m}'\ncluster = '127.0.0.1:{c}'\n[tls]\ncert = '{cert}'\nkey = '{key}'\n{extra}\n",
            n = self.name,
            d = self.dir.display(),
            g = self.gateway,
            m = self.metrics,
            c = self.cluster,
            cert = self.cert.display(),
            key = self.key.display(),
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn admin_url(&self) -> String {
        format!("https://localhost:{}", self.admin)
    }

    pub fn gateway_url(&self) -> String {
        format!("https://localhost:{}", self.gateway)
    }

    /// The operator API, with the token `serve` wrote on first start.
    pub fn operator(&self, http: &reqwest::blocking::Client) -> Api {
        let creds: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("data/initial-admin.json")).expect("initial-admin.json")).expect("json");
        Api { base: self.admin_url(), token: creds["api_token"].as_str().map(str::to_owned), http: http.clone() }
    }
}
