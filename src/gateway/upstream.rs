//! Calls to providers' systems: pooled HTTP/1.1 and HTTP/2 clients over plain TCP or rustls
//! (system roots plus an optional extra CA file), one extra client per distinct mTLS client
//! certificate, connect timeouts.
//!
//! Invariants: bodies stream through untouched; a client is built once per TLS identity and
//! reused; no secret material is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::body::GwBody;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, GwBody>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read upstream CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the mTLS client certificate or key of this service version is unusable: {0}")]
    ClientIdentity(String),
}

pub struct Upstreams {
    roots: Arc<rustls::RootCertStore>,
    connect_timeout: Duration,
    plain: HttpClient,
    /// SHA-256(cert || key) -> client presenting that identity.
    mtls: Mutex<HashMap<[u8; 32], HttpClient>>,
}

fn client(
    roots: Arc<rustls::RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    connect_timeout: Duration,
) -> Result<HttpClient, UpstreamError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::ClientIdentity(e.to_string()))?
        .with_root_certificates(roots);
    // ALPN (h2, http/1.1) is set by the connector builder below.
    let tls = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| UpstreamError::ClientIdentity(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().enable_http2().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(1024).build(https))
}

impl Upstreams {
    pub fn new(extra_ca: Option<&std::path::Path>, connect_timeout: Duration) -> Result<Upstreams, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(path) = extra_ca {
            let show = path.display().to_string();
            let pem = std::fs::read(path).map_err(|e| UpstreamError::CaFile { path: show.clone(), reason: e.to_string() })?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| UpstreamError::CaFile { path: show.clone(), reason: e.to_string() })?;
                roots.add(c).map_err(|e| UpstreamError::CaFile { path: show.clone(), reason: e.to_string() })?;
                n += 1;
            }
            if n == 0 {
                return Err(UpstreamError::CaFile { path: show, reason: "no PEM certificate in it".into() });
            }
        }
        let roots = Arc::new(roots);
        let plain = client(roots.clone(), None, connect_timeout)?;
        Ok(Upstreams { roots, connect_timeout, plain, mtls: Mutex::new(HashMap::new()) })
    }

    /// The trust store for upstreams (system roots plus `gateway.upstream_ca_file`); the
    /// health probes verify with the same.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.roots.clone()
    }

    /// The client without a TLS client identity.
    pub fn plain(&self) -> &HttpClient {
        &self.plain
    }

    /// The client presenting this mTLS identity (built on first use).
    pub fn with_identity(&self, cert_pem: &str, key_pem: &str) -> Result<HttpClient, UpstreamError> {
        let id: [u8; 32] = Sha256::new().chain_update(cert_pem.as_bytes()).chain_update(key_pem.as_bytes()).finalize().into();
        if let Some(c) = self.mtls.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(c.clone());
        }
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| UpstreamError::ClientIdentity(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| UpstreamError::ClientIdentity(e.to_string()))?
            .ok_or_else(|| UpstreamError::ClientIdentity("no private key in the PEM".into()))?;
        let c = client(self.roots.clone(), Some((certs, key)), self.connect_timeout)?;
        self.mtls.lock().unwrap_or_else(|e| e.into_inner()).insert(id, c.clone());
        Ok(c)
    }
}
