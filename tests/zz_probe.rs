#![allow(clippy::disallowed_methods)]
mod common;
mod gateway_support;
use common::upstream::Upstream;
use gateway_support::*;
use std::io::{Read, Write};

fn raw(addr: &str, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn probe() {
    let gw = Gw::start();
    let up = Upstream::start();
    gw.set_upstreams("dancu", "v1", &format!("{}/api", up.url()), &up.url());
    let cred = gw.credential("stp-hotich", "production", false);
    let tok = gw.token(&cred);
    for path in
        ["/dancu/v1/../../secret", "/dancu/v1/%2e%2e/%2e%2e/secret", "/dancu/v1/..%2f..%2fsecret", "/dancu/..", "/dancu/v1/a/../../../x"]
    {
        let resp = raw(
            &gw.authority,
            &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n", gw.authority),
        );
        println!("{path} -> {} | provider path {:?}", resp.lines().next().unwrap_or(""), up.last().map(|s| s.path));
    }
    let resp = raw(
        &gw.authority,
        &format!(
            "GET /dancu/v1/hop HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nConnection: close, x-hop\r\nX-Hop: secret\r\n\r\n",
            gw.authority
        ),
    );
    println!("hop -> {} | {:?}", resp.lines().next().unwrap_or(""), up.last().map(|s| s.headers));
}
