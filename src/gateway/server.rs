//! The gateway listener: accepts TCP, terminates TLS (rustls, ALPN h2 and http/1.1) unless in
//! dev mode, serves HTTP/1.1 and HTTP/2 on the same port, and drains on shutdown. The TLS
//! config comes from `app` (`ops::tls`): its certificate can be swapped while serving.
//!
//! Invariants: a slow or silent TLS handshake cannot hold a slot forever (10 s limit); on
//! shutdown the listener closes first, in-flight requests get up to 10 s to finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;

use super::stack::{Gateway, Peer};
use crate::ops::shutdown::Shutdown;

pub async fn serve(
    gw: Arc<Gateway>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Shutdown,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let peer_info = Arc::new(Peer::new(peer));
        let service = hyper::service::service_fn(move |req| {
            let (gw, peer_info) = (gw.clone(), peer_info.clone());
            // Boxed: the pipeline's future is large, and hyper moves it around by value.
            Box::pin(async move { Ok::<_, Infallible>(gw.handle(req, &peer_info).await) })
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match acceptor.clone() {
            Some(acceptor) => {
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            None => {
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("gateway drain took longer than 10 s"),
    }
    Ok(())
}
