//! Tests of the checks against real local servers (HTTP, raw TCP, TLS with certificates made
//! by rcgen) that go down and come back up on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

fn spec(kind: ProbeKind, target: String) -> ProbeSpec {
    ProbeSpec { kind, target, interval_s: 10, timeout_ms: 2000, expect_status: 200, tls_warn_days: 21 }
}

/// 599 means: answer 200 with a Level 2 body reporting `degraded`.
async fn answer(State(code): State<Arc<AtomicU16>>) -> impl IntoResponse {
    let c = code.load(Ordering::SeqCst);
    let (status, body) = if c == 599 { (200, r#"{"status":"degraded"}"#) } else { (c, r#"{"status":"up"}"#) };
    // No keep-alive: a stopped server must refuse the next check, not serve it on a pooled connection.
    (http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR), [(http::header::CONNECTION, "close")], body)
}

async fn serve_http(addr: SocketAddr, code: Arc<AtomicU16>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/status", axum::routing::get(answer)).with_state(code);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

fn checker(roots: RootCertStore) -> Checker {
    Checker::new(Arc::new(roots)).expect("checker")
}

#[tokio::test]
async fn http_target_goes_down_and_comes_back() {
    let code = Arc::new(AtomicU16::new(200));
    let (addr, server) = serve_http("127.0.0.1:0".parse().expect("addr"), code.clone()).await;
    let c = checker(RootCertStore::empty());
    let s = spec(ProbeKind::Http, format!("http://{addr}/status"));

    let o = c.check(&s).await;
    assert_eq!(o.health, Health::Up, "{o:?}");
    code.store(503, Ordering::SeqCst);
    let o = c.check(&s).await;
    assert_eq!(o.health, Health::Down, "{o:?}");
    assert!(o.detail.contains("503") && o.detail.contains("expected 200"), "{}", o.detail);
    code.store(599, Ordering::SeqCst);
    assert_eq!(c.check(&s).await.health, Health::Degraded);

    // The server stops: refused connections are down.
    server.abort();
    let _ = server.await;
    let o = c.check(&s).await;
    assert_eq!(o.health, Health::Down, "{o:?}");
    assert!(o.detail.contains("cannot reach"), "{}", o.detail);

    // Back on the same port.
    code.store(200, Ordering::SeqCst);
    let (_, server) = serve_http(addr, code).await;
    assert_eq!(c.check(&s).await.health, Health::Up);
    server.abort();
}

#[tokio::test]
async fn a_silent_server_is_down_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and holds connections without ever answering.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut s = spec(ProbeKind::Http, format!("http://{addr}/status"));
    s.timeout_ms = 300;
    let o = checker(RootCertStore::empty()).check(&s).await;
    assert_eq!(o.health, Health::Down, "{o:?}");
    assert!(o.detail.contains("within 300 ms"), "{}", o.detail);
    hold.abort();
}

#[tokio::test]
async fn tcp_target_goes_down_and_comes_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let c = checker(RootCertStore::empty());
    let s = spec(ProbeKind::Tcp, addr.to_string());
    assert_eq!(c.check(&s).await.health, Health::Up);
    drop(listener);
    let o = c.check(&s).await;
    assert_eq!(o.health, Health::Down, "{o:?}");
    assert!(o.detail.contains("cannot connect"), "{}", o.detail);
    let _listener = TcpListener::bind(addr).await.expect("rebind");
    assert_eq!(c.check(&s).await.health, Health::Up);
}

/// A CA and a `localhost` leaf valid for `days` more days, served over TLS on a fresh port.
async fn serve_tls(days: i64) -> (SocketAddr, CertificateDer<'static>, JoinHandle<()>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ymd = |d: chrono::DateTime<chrono::Utc>| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.not_before = ymd(now - chrono::Duration::days(30));
    ca_params.not_after = ymd(now + chrono::Duration::days(3650));
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_before = ymd(now - chrono::Duration::days(30));
    params.not_after = ymd(now + chrono::Duration::days(days));
    let leaf = params.signed_by(&key, &ca, &ca_key).expect("leaf");

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    (addr, ca.der().clone(), task)
}

fn trusting(ca: CertificateDer<'static>) -> Checker {
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("add ca");
    checker(roots)
}

#[tokio::test]
async fn tls_reports_days_left_and_warns_before_expiry() {
    let (addr, ca, server) = serve_tls(100).await;
    let s = spec(ProbeKind::Tls, format!("localhost:{}", addr.port()));
    let o = trusting(ca).check(&s).await;
    assert_eq!(o.health, Health::Up, "{o:?}");
    let days = o.cert_days_left.expect("days left");
    assert!((98..=100).contains(&days), "{days}");
    server.abort();

    let (addr, ca, server) = serve_tls(10).await;
    let s = spec(ProbeKind::Tls, format!("localhost:{}", addr.port()));
    let o = trusting(ca).check(&s).await;
    assert_eq!(o.health, Health::Degraded, "{o:?}");
    assert!(o.detail.contains("renew"), "{}", o.detail);
    assert!((8..=10).contains(&o.cert_days_left.expect("days left")));

    // Not trusted: down, saying why.
    let o = checker(RootCertStore::empty()).check(&s).await;
    assert_eq!(o.health, Health::Down, "{o:?}");
    assert!(o.detail.contains("TLS handshake"), "{}", o.detail);
    server.abort();
    let _ = server.await;
    assert_eq!(trusting(serve_tls(100).await.1).check(&s).await.health, Health::Down, "stopped server");
}

#[test]
fn specs_are_validated() {
    let ok = spec(ProbeKind::Http, "https://example.invalid/status".into());
    assert_eq!(ok.validate(), Ok(()));
    let mut s = ok.clone();
    s.interval_s = 5;
    assert!(s.validate().unwrap_err().contains("between 10 and 3600"));
    let mut s = ok.clone();
    s.timeout_ms = 20_000;
    assert!(s.validate().unwrap_err().contains("timeout_ms"));
    assert!(spec(ProbeKind::Http, "ftp://x".into()).validate().is_err());
    assert!(spec(ProbeKind::Http, "https:///x".into()).validate().is_err());
    assert!(spec(ProbeKind::Tcp, "db.example:5432".into()).validate().is_ok());
    assert!(spec(ProbeKind::Tls, "db.example".into()).validate().is_err());
    assert!(spec(ProbeKind::Tls, "db.example:0".into()).validate().is_err());
}
