//! Endpoints for shared catalogs (R8), the admin audit trail, the declarative registry
//! import/export (SPEC §8) and the holiday calendar used by the 5-working-day clock.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{page, ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::document;
use crate::registry::{Catalog, CatalogField, Command};
use crate::secrets::ImportSecrets;

type Created = (StatusCode, Json<Value>);

fn summary(c: &Catalog) -> Value {
    let latest = c.latest();
    json!({
        "code": c.code, "name": c.name, "owner_agency": c.owner_agency, "description": c.description,
        "created_at": c.created_at,
        "latest_version": latest.map(|v| v.version),
        "fields": latest.map(|v| &v.fields),
        "entries": latest.map_or(0, |v| v.entries.len()),
        "versions": c.versions.iter().map(|v| json!({"version": v.version, "published_at": v.published_at, "published_by": v.published_by, "entries": v.entries.len(), "note": v.note})).collect::<Vec<_>>(),
    })
}

async fn list_catalogs(State(st): State<Shared>, _p: Principal) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<Value> = reg.catalogs.values().map(summary).collect();
    Json(page(items, None, None))
}

async fn get_catalog(State(st): State<Shared>, _p: Principal, Path(code): Path<String>) -> Result<Json<Value>, ApiError> {
    let reg = st.store.read();
    reg.catalogs.get(&code).map(|c| Json(summary(c))).ok_or_else(|| ApiError::not_found("catalog", &code))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn catalog_entries(
    State(st): State<Shared>,
    _p: Principal,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let reg = st.store.read();
    let c = reg.catalogs.get(&code).ok_or_else(|| ApiError::not_found("catalog", &code))?;
    let v = match q.version {
        Some(n) => {
            c.versions.iter().find(|v| v.version == n).ok_or_else(|| ApiError::not_found("catalog version", &format!("{code}/{n}")))?
        }
        None => c
            .latest()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NO_VERSION", format!("catalog {code} has no published version yet")))?,
    };
    let mut out = page(v.entries.clone(), q.offset, q.limit);
    out["version"] = json!(v.version);
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCatalog {
    code: String,
    name: String,
    owner_agency: String,
    #[serde(default)]
    description: String,
}

async fn create_catalog(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<NewCatalog>) -> Result<Created, ApiError> {
    p.require_operator("create catalogs")?;
    let code = b.code.clone();
    st.propose(p.actor(), Command::CreateCatalog { code: b.code, name: b.name, owner_agency: b.owner_agency, description: b.description })
        .await?;
    let reg = st.store.read();
    let c = reg.catalogs.get(&code).ok_or_else(|| ApiError::not_found("catalog", &code))?;
    Ok((StatusCode::CREATED, Json(summary(c))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCatalogVersion {
    #[serde(default)]
    fields: Option<Vec<CatalogField>>,
    entries: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    append: bool,
    #[serde(default)]
    note: String,
}

async fn publish_catalog(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<NewCatalogVersion>,
) -> Result<Created, ApiError> {
    p.require_write()?;
    let owner = st.store.read().catalogs.get(&code).map(|c| c.owner_agency.clone()).ok_or_else(|| ApiError::not_found("catalog", &code))?;
    if !p.is_operator() && p.agency.as_deref() != Some(owner.as_str()) {
        return Err(ApiError::forbidden("only the catalog's owner agency or an operator may publish its versions"));
    }
    st.propose(
        p.actor(),
        Command::PublishCatalogVersion { code: code.clone(), fields: b.fields, entries: b.entries, append: b.append, note: b.note },
    )
    .await?;
    let reg = st.store.read();
    let c = reg.catalogs.get(&code).ok_or_else(|| ApiError::not_found("catalog", &code))?;
    Ok((StatusCode::CREATED, Json(summary(c))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn admin_audit(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Json<Value>, ApiError> {
    p.require_reader("read the admin audit trail")?;
    let store = st.store.clone();
    let limit = q.limit.unwrap_or(200).min(10_000);
    let items = tokio::task::spawn_blocking(move || {
        store.audit(limit, |e| {
            q.user.as_ref().is_none_or(|u| &e.user == u)
                && q.target.as_ref().is_none_or(|t| e.target.starts_with(t.as_str()))
                && q.action.as_ref().is_none_or(|a| &e.action == a)
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))??;
    Ok(Json(json!({ "items": items })))
}

async fn export(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    p.require_reader("export the registry")?;
    let doc = document::export(&st.store.read());
    Ok(Json(json!(doc)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn import(
    State(st): State<Shared>,
    p: Principal,
    ApiQuery(q): ApiQuery<ImportQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("import a registry")?;
    let invalid = |errors: Vec<document::DocError>| {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IMPORT_INVALID",
            format!("the document has {} error(s); nothing was changed", errors.len()),
        );
        e.details = Some(json!({ "errors": errors }));
        e
    };
    let (doc, mut errors) = document::parse(body);
    let st2 = st.clone();
    let actor = p.actor();
    let planned = tokio::task::spawn_blocking(move || {
        let reg = st2.store.read();
        let mut tool = ImportSecrets(&st2.key);
        document::plan(&doc, &reg, Utc::now(), &actor, &mut tool)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    // Shape errors and rule errors are reported together: the whole file, every error.
    let commands = match planned {
        Ok(c) if errors.is_empty() => c,
        Ok(_) => return Err(invalid(errors)),
        Err(e) => {
            errors.extend(e);
            return Err(invalid(errors));
        }
    };
    let changes = commands.len();
    if changes == 0 || q.dry_run {
        return Ok(Json(json!({ "changes": changes, "applied": false, "dry_run": q.dry_run })));
    }
    st.propose(p.actor(), Command::Batch { label: "registry-import".into(), commands }).await?;
    Ok(Json(json!({ "changes": changes, "applied": true, "dry_run": false })))
}

async fn get_holidays(State(st): State<Shared>, _p: Principal) -> Json<Value> {
    Json(json!({ "holidays": st.store.read().settings.holidays }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Holidays {
    holidays: Vec<NaiveDate>,
}

async fn set_holidays(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<Holidays>) -> Result<Json<Value>, ApiError> {
    p.require_operator("set public holidays")?;
    st.propose(p.actor(), Command::SetHolidays { holidays: b.holidays }).await?;
    Ok(Json(json!({ "holidays": st.store.read().settings.holidays })))
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint { method: "get", path: "/api/v1/catalogs", summary: "List shared catalogs", roles: "any", handler: || get(list_catalogs) },
        Endpoint {
            method: "post",
            path: "/api/v1/catalogs",
            summary: "Create a shared catalog",
            roles: "operator",
            handler: || post(create_catalog),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/catalogs/{code}",
            summary: "Show a catalog and its versions",
            roles: "any",
            handler: || get(get_catalog),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/catalogs/{code}/entries",
            summary: "Entries of the latest (or ?version=) catalog version",
            roles: "any",
            handler: || get(catalog_entries),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/catalogs/{code}/versions",
            summary: "Publish a new catalog version (append=true adds entries)",
            roles: "operator, agency-admin (owner)",
            handler: || post(publish_catalog).layer(DefaultBodyLimit::max(super::LARGE_BODY)),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/audit/admin",
            summary: "The admin audit trail, newest first",
            roles: "operator, auditor",
            handler: || get(admin_audit),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/registry/export",
            summary: "The registry as a declarative document (no secrets)",
            roles: "operator, auditor",
            handler: || get(export),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/registry/import",
            summary: "Validate a whole document, then apply it atomically (?dry_run=true to only validate)",
            roles: "operator",
            handler: || post(import).layer(DefaultBodyLimit::max(super::LARGE_BODY)),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/settings/holidays",
            summary: "Public holidays skipped by the 5-working-day clock",
            roles: "any",
            handler: || get(get_holidays),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/settings/holidays",
            summary: "Replace the public holiday list",
            roles: "operator",
            handler: || put(set_holidays),
        },
    ]
}
