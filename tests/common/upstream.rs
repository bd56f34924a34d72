//! A real HTTP provider for gateway tests: a hyper server on loopback, in its own thread.
//!
//! - any path: answers 200 JSON `{method, path, query, headers, body_len, body_sha256}`
//! - `/slow?ms=N`: waits N ms first
//! - `/status/N`: answers status N
//! - `/bytes?n=N`: answers N bytes of `x`
//!   Every request's headers and body hash are also kept in `seen` for assertions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The answer of a test server's handler.
pub type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// A hyper server (HTTP/1.1 and h2c) on a loopback port, in its own thread and runtime, answering
/// every request with `handler`. Stopped and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(handler: impl Fn(Request<hyper::body::Incoming>) -> Reply + Send + Sync + 'static) -> TestServer {
        let handler = Arc::new(handler);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind test server");
                tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let mut stop_rx = stop_rx;
                loop {
                    let (stream, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handler(req));
                        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        let addr = rx.recv().expect("test server address");
        TestServer { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _server: TestServer,
}

impl Upstream {
    pub fn start() -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let server = TestServer::start(move |req| Box::pin(handle(req, seen2.clone())));
        Upstream { addr: server.addr, seen, _server: server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("seen").last().cloned()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

async fn handle(req: Request<hyper::body::Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let sha = hex::encode(Sha256::digest(&body));
    seen.lock().expect("seen").push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body_len: body.len(),
        body_sha256: sha.clone(),
    });
    let param = |k: &str| query.split('&').find_map(|p| p.strip_prefix(&format!("{k}="))).and_then(|v| v.parse::<u64>().ok());
    if path.ends_with("/slow") {
        tokio::time::sleep(std::time::Duration::from_millis(param("ms").unwrap_or(1000))).await;
    }
    if let Some(code) = path.rsplit_once("/status/").and_then(|(_, c)| c.parse::<u16>().ok()) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"upstream\":\"status\"}")));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::IM_A_TEAPOT);
        return Ok(r);
    }
    if path.ends_with("/bytes") {
        let n = param("n").unwrap_or(0) as usize;
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    let hdrs: serde_json::Map<String, serde_json::Value> = headers.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let echo =
        serde_json::json!({"method": method, "path": path, "query": query, "headers": hdrs, "body_len": body.len(), "body_sha256": sha});
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(&echo).unwrap_or_default())));
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    Ok(r)
}
