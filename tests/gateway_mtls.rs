//! Upstream authentication by TLS client certificate: the provider is a real HTTPS server on
//! loopback that requires a client certificate signed by its CA. The gateway reaches it only
//! once the version is configured with `upstream_auth = mutual_tls`; the private key never
//! appears in the admin API's answers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Provider test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let skey = rcgen::KeyPair::generate().expect("server key");
    let server =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params").signed_by(&skey, &ca, &ca_key).expect("server cert");
    let ckey = rcgen::KeyPair::generate().expect("client key");
    let mut cparams = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    cparams.distinguished_name.push(rcgen::DnType::CommonName, "lgsp-appliance");
    let client = cparams.signed_by(&ckey, &ca, &ca_key).expect("client cert");
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: skey.serialize_pem(),
        client_cert: client.pem(),
        client_key: ckey.serialize_pem(),
    }
}

/// An HTTPS provider requiring a client certificate from `ca`; counts requests it answered.
fn start_provider(p: &Pki) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut p.ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier");
    let certs = rustls_pemfile::certs(&mut p.server_cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("certs");
    let key = rustls_pemfile::private_key(&mut p.server_key.as_bytes()).expect("key").expect("a key");
    let cfg = rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(certs, key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (a2, r2) = (answered.clone(), refused.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(l.local_addr().expect("addr").port()).expect("port");
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let (acceptor, a, r) = (acceptor.clone(), a2.clone(), r2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        r.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let has_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    let svc = hyper::service::service_fn(move |_req| {
                        a.fetch_add(1, Ordering::SeqCst);
                        let body = format!("{{\"client_cert\":{has_cert}}}");
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (rx.recv().expect("provider port"), answered, refused)
}

#[test]
fn provider_requiring_a_client_certificate_is_reached_only_with_mutual_tls() {
    let p = pki();
    let (port, answered, refused) = start_provider(&p);
    let tmp = tempfile::tempdir().expect("tmp");
    let ca_file = tmp.path().join("provider-ca.pem");
    std::fs::write(&ca_file, &p.ca_pem).expect("write ca");
    let node = common::Node::start_with(&["--upstream-ca", ca_file.to_str().expect("utf-8 path")]);
    let op = node.operator();
    common::seed(&op);
    let url = format!("https://localhost:{port}/api");
    let (s, b) = op.patch("/api/v1/services/dancu/versions/v1", json!({"upstream": {"production": url}}));
    assert_eq!(s, 200, "{b}");

    let (s, cred) = op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production"}));
    assert_eq!(s, 201, "{cred}");
    let gw = node.info["gateway_url"].as_str().expect("gateway").to_owned();
    let http = reqwest::blocking::Client::new();
    let token = || -> String {
        let r: serde_json::Value = http
            .post(format!("{gw}/token"))
            .basic_auth(cred["consumer_key"].as_str().expect("key"), cred["consumer_secret"].as_str())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .expect("token")
            .json()
            .expect("json");
        r["access_token"].as_str().expect("access_token").to_owned()
    };
    let call = |t: &str| http.get(format!("{gw}/dancu/v1/x")).bearer_auth(t).send().expect("call");

    // Without a client certificate the provider refuses the handshake: 502, nothing answered.
    let t = token();
    let r = call(&t);
    assert_eq!(r.status().as_u16(), 502, "{}", r.text().unwrap_or_default());
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    assert!(refused.load(Ordering::SeqCst) >= 1, "the provider saw no handshake");

    let (s, b) = op.patch(
        "/api/v1/services/dancu/versions/v1",
        json!({"upstream_auth": {"kind": "mutual_tls", "cert_pem": p.client_cert, "key_pem": p.client_key}}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["versions"]["v1"]["upstream_auth"], json!({"kind": "mutual_tls"}), "no key material in answers: {b}");
    assert!(!b.to_string().contains("PRIVATE KEY"), "the client key leaked: {b}");

    // The view is rebuilt asynchronously after the change; allow it a moment.
    let mut last = None;
    for _ in 0..50 {
        let r = call(&t);
        if r.status().as_u16() == 200 {
            last = Some(r.text().expect("body"));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let body = last.expect("the gateway never reached the provider with its client certificate");
    assert_eq!(body, "{\"client_cert\":true}");
    assert!(answered.load(Ordering::SeqCst) >= 1);
    // The private key is stored sealed: not in clear anywhere in the data directory.
    let key_line = p.client_key.lines().nth(1).expect("key body");
    node.cli(&["audit", "verify"], None);
    for entry in walk(&node.dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(key_line), "client key in clear in {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
