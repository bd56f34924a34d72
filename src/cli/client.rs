//! HTTP client for the admin API: connection settings, JSON calls, and turning API errors into
//! operator-readable messages.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::app::DevInfo;

/// Where and as whom the CLI talks to a node.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// Admin API base URL [default: from --dev-dir, else https://127.0.0.1:9443]
    #[arg(long, env = "LGSP_ADMIN_URL", global = true)]
    pub admin_url: Option<String>,
    /// API token (lgsp.<id>.<secret>); prefer the environment variable over the flag
    #[arg(long, env = "LGSP_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data dir of an `lgsp dev` appliance: URL and token are read from its dev.json
    #[arg(long, env = "LGSP_DEV_DIR", global = true)]
    pub dev_dir: Option<PathBuf>,
    /// CA certificate (PEM) that signed the admin listener's certificate
    #[arg(long, env = "LGSP_CA", global = true)]
    pub ca: Option<PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An error answer from the API, printed as `error: CODE: message`.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.body["code"].as_str().unwrap_or("HTTP_ERROR");
        let msg = self.body["message"].as_str().map(str::to_owned).unwrap_or_else(|| self.body.to_string());
        write!(f, "{code}: {msg} (HTTP {})", self.status)?;
        if let Some(errs) = self.body["details"]["errors"].as_array() {
            for e in errs {
                write!(f, "\n  {}: {}", e["path"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("?"))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(c: &Connection, need_token: bool) -> Result<Client> {
        let dev: Option<DevInfo> = match &c.dev_dir {
            Some(d) => {
                let p = d.join("dev.json");
                let bytes = std::fs::read(&p)
                    .with_context(|| format!("cannot read {}; is `lgsp dev --data-dir {}` running?", p.display(), d.display()))?;
                Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is not a dev.json file", p.display()))?)
            }
            None => None,
        };
        let base =
            c.admin_url.clone().or_else(|| dev.as_ref().map(|d| d.admin_url.clone())).unwrap_or_else(|| "https://127.0.0.1:9443".into());
        let token = c.token.clone().or_else(|| dev.as_ref().map(|d| d.api_token.clone()));
        if need_token && token.is_none() {
            bail!("no API token: set LGSP_TOKEN (see `lgsp login`), pass --token, or --dev-dir DIR for a dev appliance");
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300));
        if let Some(ca) = &c.ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read CA file {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        Ok(Client { http: b.build()?, base: base.trim_end_matches('/').to_owned(), token })
    }

    /// Calls `method path` with an optional JSON body; returns the JSON answer (Null for 204).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(ApiFailure { status: status.as_u16(), body: value }.into())
        }
    }

    /// GET returning the raw text (CSV exports).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(ApiFailure { status: status.as_u16(), body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }.into())
        }
    }

    /// POST a non-JSON body (CSV), returning the JSON answer.
    pub async fn post_text(&self, path: &str, content_type: &str, body: String) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.post(&url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            Ok(value)
        } else {
            Err(ApiFailure { status: status.as_u16(), body: value }.into())
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(&body)).await
    }
}
