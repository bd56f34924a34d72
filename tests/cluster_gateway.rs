//! The gateway's promises that must hold across the whole cluster, with three real nodes:
//! a token revoked through one node is refused by every node, an RFC 9421 nonce used at one
//! node is refused as a replay at another, and a daily quota counts calls made at every node.
#![allow(clippy::disallowed_methods)]

mod common;
mod gateway_support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::cluster::Cluster;
use gateway_support::{eventually, h, sign_request, SignParams, Signer};
use lgsp::gateway::httpsig::SignerKey;
use serde_json::{json, Value};

struct Gateway {
    url: String,
    authority: String,
    http: reqwest::blocking::Client,
}

impl Gateway {
    fn of(c: &Cluster, k: usize) -> Gateway {
        let url = c.node(k).info["gateway_url"].as_str().expect("gateway_url").to_owned();
        let authority = url.strip_prefix("http://").expect("plain HTTP in dev").to_owned();
        Gateway { url, authority, http: gateway_support::gateway_client() }
    }

    /// Status and JSON body (Null when not JSON) of a call through this node's gateway.
    fn send(&self, method: &str, path: &str, headers: &[(String, String)], body: Option<Vec<u8>>) -> (u16, Value) {
        let r = gateway_support::send_to(&self.http, &self.url, method, path, headers, body);
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    fn token(&self, key: &str, secret: &str) -> (u16, Value) {
        let r = gateway_support::token_request_to(&self.http, &self.url, key, secret);
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }
}

/// Seeds the registry through node 1 and issues a production credential (with an HMAC key) for
/// the subscribed consumer; returns the credential's JSON.
fn seeded(c: &Cluster) -> Value {
    let op = c.api(1);
    common::seed(&op);
    let (s, cred) = op.post("/api/v1/credentials", json!({"system": "stp-hotich", "environment": "production", "hmac": true}));
    assert_eq!(s, 201, "{cred}");
    cred
}

/// Not refused by the gateway's own checks: the seeded upstream is unreachable, so an admitted
/// call ends as 502.
fn admitted(status: u16) -> bool {
    status == 502
}

#[test]
fn revocation_nonces_and_quotas_hold_across_nodes() {
    let c = Cluster::start(3, &[]);
    let cred = seeded(&c);
    let (key, secret) = (cred["consumer_key"].as_str().expect("key"), cred["consumer_secret"].as_str().expect("secret"));
    let gws: Vec<Gateway> = (1..=3).map(|k| Gateway::of(&c, k)).collect();

    // Every node's view knows the credential.
    for g in &gws {
        eventually("every gateway knows the credential", || (g.token(key, secret).0 == 200).then_some(()));
    }

    // 1. A token issued by node 1 works on node 3; revoked through node 2, it is refused by all.
    let (s, t) = gws[0].token(key, secret);
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().expect("access_token").to_owned();
    let bearer = [h("authorization", &format!("Bearer {token}"))];
    assert!(admitted(gws[2].send("GET", "/dancu/v1/citizens", &bearer, None).0));
    let (s, b) = gws[1].send(
        "POST",
        "/revoke",
        &[gateway_support::basic(key, secret), h("content-type", "application/x-www-form-urlencoded")],
        Some(format!("token={token}").into_bytes()),
    );
    assert_eq!(s, 200, "revoke: {b}");
    for (i, g) in gws.iter().enumerate() {
        eventually(&format!("node {} refuses the revoked token", i + 1), || {
            let (s, b) = g.send("GET", "/dancu/v1/citizens", &bearer, None);
            (s == 401).then_some(b)
        });
    }

    // 2. An RFC 9421 nonce used at node 1 is refused at node 2 once the nodes have exchanged
    //    what they saw (within ~50 ms; the test allows a generous margin before replaying).
    let signer = Signer {
        key: SignerKey::Hmac(STANDARD.decode(cred["hmac"]["secret_base64"].as_str().expect("hmac secret")).expect("base64")),
        key_id: cred["hmac"]["key_id"].as_str().expect("key id").to_owned(),
    };
    let params = SignParams::fresh();
    let on = |g: &Gateway| sign_request(&g.authority, &signer, "GET", "/dancu/v1/citizens", None, &params);
    let (s, b) = gws[0].send("GET", "/dancu/v1/citizens", &on(&gws[0]), None);
    assert!(admitted(s), "first use of the nonce: {s} {b}");
    std::thread::sleep(Duration::from_millis(500));
    let (s, b) = gws[1].send("GET", "/dancu/v1/citizens", &on(&gws[1]), None);
    assert_eq!((s, b["code"].as_str()), (401, Some("SIGNATURE_NONCE_REPLAYED")), "replay at another node: {b}");
    // A fresh nonce is fine on node 2.
    let fresh = sign_request(&gws[1].authority, &signer, "GET", "/dancu/v1/citizens", None, &SignParams::fresh());
    assert!(admitted(gws[1].send("GET", "/dancu/v1/citizens", &fresh, None).0));

    // 3. A daily quota of 12 calls, spent across the three nodes, admits at most 12 in total
    //    (calls spaced so that each node has heard of the others' calls).
    let sub = c.api(1).get("/api/v1/subscriptions").1["items"][0]["id"].as_str().expect("subscription id").to_owned();
    let (s, b) = c.api(1).call("PUT", &format!("/api/v1/subscriptions/{sub}/limits"), Some(&json!({"per_day": 12})));
    assert_eq!(s, 200, "set quota: {b}");
    let (s, t) = gws[0].token(key, secret);
    assert_eq!(s, 200, "{t}");
    let bearer = [h("authorization", &format!("Bearer {}", t["access_token"].as_str().expect("token")))];
    // Every node applies the change within milliseconds of the answer; leave a wide margin.
    std::thread::sleep(Duration::from_secs(1));
    let mut admitted_calls = 0;
    let mut refused = 0;
    for i in 0..30 {
        let (s, b) = gws[i % 3].send("GET", "/dancu/v1/citizens", &bearer, None);
        match s {
            502 => admitted_calls += 1,
            429 => {
                assert_eq!(b["code"], "QUOTA_EXHAUSTED", "{b}");
                refused += 1;
            }
            other => panic!("unexpected answer {other}: {b}"),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(admitted_calls <= 12, "the daily quota of 12 admitted {admitted_calls} calls across the cluster");
    assert!(refused >= 18, "calls beyond the quota are refused on every node: {refused} refused");
}
