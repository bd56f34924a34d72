//! A reverse proxy with no policy at all, built from the same parts as the gateway (tokio,
//! hyper's HTTP/1.1 and HTTP/2 server via hyper-util's auto builder, hyper-util's pooled client):
//! `scripts/bench-gateway` measures it beside the gateway (`BARE=1`) to show what the HTTP stack
//! alone costs on the bench machine, i.e. the ceiling any policy work can reach.
//!
//! Usage: `bare-proxy LISTEN_ADDR UPSTREAM_BASE` (e.g. `127.0.0.1:8080 http://127.0.0.1:9000/api`);
//! a request for `/x/y/rest` goes to `UPSTREAM_BASE/rest` (the first two segments stand for the
//! gateway's `/{context}/{version}`). Not part of the product.

use std::convert::Infallible;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        return Err("usage: bare-proxy LISTEN_ADDR UPSTREAM_BASE".into());
    };
    let base: Uri = base.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(listen, base))
}

async fn serve(listen: String, base: Uri) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(http);
    let builder = Builder::new(TokioExecutor::new());
    eprintln!("bare-proxy listening on {listen}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, base, builder) = (client.clone(), base.clone(), builder.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (client, base) = (client.clone(), base.clone());
                async move { Ok::<_, Infallible>(forward(&client, &base, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn forward(client: &Client<HttpConnector, Body>, base: &Uri, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let rest = parts.uri.path().splitn(4, '/').nth(3).unwrap_or("");
    let target = format!("{}/{}", base.to_string().trim_end_matches('/'), rest);
    let Ok(uri) = target.parse::<Uri>() else { return status(StatusCode::BAD_REQUEST) };
    parts.uri = uri;
    parts.headers.remove(hyper::header::HOST);
    match client.request(Request::from_parts(parts, body.boxed_unsync())).await {
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = s;
    r
}
