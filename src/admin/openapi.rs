//! The OpenAPI 3.1 document, generated from the same [`super::endpoints`] list as the router.

use axum::Json;
use serde_json::{json, Map, Value};

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for e in super::endpoints() {
        let params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": e.summary,
            "description": format!("Allowed roles: {}.", e.roles),
            "operationId": format!("{}_{}", e.method, e.path.trim_start_matches("/api/v1/").replace(['/', '{', '}', '-'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
                "422": {"$ref": "#/components/responses/Error"}
            }
        });
        if matches!(e.method, "post" | "put" | "patch") {
            op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        if e.roles == "public" {
            op["security"] = json!([]);
        }
        let entry = paths.entry(e.path.to_owned()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "LGSP appliance admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Registry, subscriptions, credentials and catalogs of the city LGSP. Errors are JSON {code, message, details?} with a stable code."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "lgsp.<id>.<secret> from POST /api/v1/auth/login or POST /api/v1/tokens"}},
            "schemas": {"Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}},
            "responses": {"Error": {"description": "Refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
        }
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}
