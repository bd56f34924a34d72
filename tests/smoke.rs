//! The appliance starts, writes dev.json, and answers on all three listeners.
mod common;

#[test]
fn dev_starts_and_answers() {
    let n = common::Node::start();
    for k in ["admin_url", "gateway_url", "metrics_url", "username", "password", "api_token"] {
        assert!(n.info[k].as_str().is_some_and(|s| !s.is_empty()), "dev.json lacks {k}: {}", n.info);
    }
    let (s, me) = n.operator().get("/api/v1/auth/me");
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["role"], "operator");
    let metrics = n.http.get(format!("{}/metrics", n.info["metrics_url"].as_str().unwrap())).send().unwrap().text().unwrap();
    assert!(metrics.contains("lgsp_registry_objects"), "{metrics}");
    let (s, doc) = n.anonymous().get("/api/v1/openapi.json");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/agencies"]["post"].is_object());
}
