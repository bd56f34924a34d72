//! Endpoints for agencies (with restructuring), information systems and services with their
//! versions and lifecycle (R1–R4, R7).
//!
//! Visibility: operators and auditors see everything; an agency-admin sees its own agency and
//! systems, every service with a published or deprecated version (the public catalog, R9), and
//! its own drafts. Upstream URLs are shown only to the provider and to operators and auditors.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{page, ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::{
    AgencyStatus, Command, Contact, NewAgency, PayloadFormat, Role, SecurityClearance, Service, ServiceSpec, State as Registry, Timestamp,
    UpstreamAuth, Upstreams, VersionState,
};

type Created = (StatusCode, Json<Value>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgencyQuery {
    #[serde(default)]
    status: Option<AgencyStatus>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_agencies(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<AgencyQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<_> =
        reg.agencies.values().filter(|a| p.sees_agency(&a.code)).filter(|a| q.status.is_none_or(|s| a.status == s)).collect();
    Json(page(items, q.offset, q.limit))
}

fn agency_json(st: &Shared, p: &Principal, code: &str) -> Result<Value, ApiError> {
    let reg = st.store.read();
    reg.agencies.get(code).filter(|_| p.sees_agency(code)).map(|a| json!(a)).ok_or_else(|| ApiError::not_found("agency", code))
}

async fn get_agency(State(st): State<Shared>, p: Principal, Path(code): Path<String>) -> Result<Json<Value>, ApiError> {
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgencyBody {
    code: String,
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    contacts: Vec<Contact>,
}

async fn create_agency(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<NewAgencyBody>) -> Result<Created, ApiError> {
    p.require_operator("register agencies")?;
    st.propose(p.actor(), Command::CreateAgency { code: b.code.clone(), name: b.name, parent: b.parent, contacts: b.contacts }).await?;
    Ok((StatusCode::CREATED, Json(agency_json(&st, &p, &b.code)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgencyPatch {
    #[serde(default)]
    contacts: Option<Vec<Contact>>,
    #[serde(default)]
    parent: Option<String>,
}

async fn update_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<AgencyPatch>,
) -> Result<Json<Value>, ApiError> {
    p.require_write()?;
    agency_json(&st, &p, &code)?;
    if b.parent.is_some() {
        p.require_operator("change an agency's parent")?;
    }
    st.propose(p.actor(), Command::UpdateAgency { code: code.clone(), contacts: b.contacts, parent: b.parent }).await?;
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    new_name: String,
    #[serde(default)]
    new_code: Option<String>,
    reason: String,
}

async fn rename_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<RenameBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("rename or recode agencies")?;
    let target = b.new_code.clone().unwrap_or_else(|| code.clone());
    st.propose(p.actor(), Command::RenameAgency { code, new_name: b.new_name, new_code: b.new_code, reason: b.reason }).await?;
    agency_json(&st, &p, &target).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    into: Vec<NewAgency>,
    #[serde(default)]
    systems: std::collections::BTreeMap<String, String>,
    reason: String,
}

async fn split_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<SplitBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("split agencies")?;
    st.propose(p.actor(), Command::SplitAgency { code: code.clone(), into: b.into, systems: b.systems, reason: b.reason }).await?;
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    sources: Vec<String>,
    into: NewAgency,
    reason: String,
}

async fn merge_agencies(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<MergeBody>) -> Result<Json<Value>, ApiError> {
    p.require_operator("merge agencies")?;
    let code = b.into.code.clone();
    st.propose(p.actor(), Command::MergeAgencies { sources: b.sources, into: b.into, reason: b.reason }).await?;
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DissolveBody {
    #[serde(default)]
    successor: Option<String>,
    reason: String,
}

async fn dissolve_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<DissolveBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("dissolve agencies")?;
    st.propose(p.actor(), Command::DissolveAgency { code: code.clone(), successor: b.successor, reason: b.reason }).await?;
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

async fn suspend_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("suspend agencies")?;
    st.propose(p.actor(), Command::SetAgencySuspended { code: code.clone(), suspended: true, reason: b.reason }).await?;
    agency_json(&st, &p, &code).map(Json)
}

async fn reinstate_agency(
    State(st): State<Shared>,
    p: Principal,
    Path(code): Path<String>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("reinstate agencies")?;
    st.propose(p.actor(), Command::SetAgencySuspended { code: code.clone(), suspended: false, reason: b.reason }).await?;
    agency_json(&st, &p, &code).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemQuery {
    #[serde(default)]
    agency: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_systems(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<SystemQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<_> =
        reg.systems.values().filter(|s| p.sees_agency(&s.agency)).filter(|s| q.agency.as_ref().is_none_or(|a| &s.agency == a)).collect();
    Json(page(items, q.offset, q.limit))
}

fn system_json(st: &Shared, p: &Principal, id: &str) -> Result<Value, ApiError> {
    let reg = st.store.read();
    reg.systems.get(id).filter(|s| p.sees_agency(&s.agency)).map(|s| json!(s)).ok_or_else(|| ApiError::not_found("system", id))
}

async fn get_system(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    system_json(&st, &p, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSystemBody {
    id: String,
    agency: String,
    name: String,
    #[serde(default)]
    description: String,
    security: SecurityClearance,
    #[serde(default)]
    contacts: Vec<Contact>,
}

async fn create_system(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<NewSystemBody>) -> Result<Created, ApiError> {
    p.require_write()?;
    if !p.sees_agency(&b.agency) {
        return Err(ApiError::not_found("agency", &b.agency));
    }
    st.propose(
        p.actor(),
        Command::CreateSystem {
            id: b.id.clone(),
            agency: b.agency,
            name: b.name,
            description: b.description,
            security: b.security,
            contacts: b.contacts,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(system_json(&st, &p, &b.id)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    security: Option<SecurityClearance>,
    #[serde(default)]
    contacts: Option<Vec<Contact>>,
    #[serde(default)]
    disabled: Option<bool>,
}

async fn update_system(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<SystemPatch>,
) -> Result<Json<Value>, ApiError> {
    p.require_write()?;
    system_json(&st, &p, &id)?;
    st.propose(
        p.actor(),
        Command::UpdateSystem {
            id: id.clone(),
            name: b.name,
            description: b.description,
            security: b.security,
            contacts: b.contacts,
            disabled: b.disabled,
        },
    )
    .await?;
    system_json(&st, &p, &id).map(Json)
}

/// Is `p` the provider (or an operator) of this service?
fn provides(p: &Principal, reg: &Registry, svc: &Service) -> bool {
    p.owns_system(reg, &svc.provider_system)
}

fn in_public_catalog(svc: &Service) -> bool {
    svc.versions.values().any(|v| matches!(v.state, VersionState::Published | VersionState::Deprecated))
}

fn service_view(p: &Principal, reg: &Registry, svc: &Service) -> Option<Value> {
    let full = p.role != Role::AgencyAdmin || provides(p, reg, svc);
    if full {
        let mut out = json!(svc);
        // Sealed upstream secrets never leave the node, even encrypted: show only the kind.
        for v in svc.versions.values() {
            out["versions"][&v.version]["upstream_auth"] = json!({ "kind": v.upstream_auth.kind() });
        }
        return Some(out);
    }
    if !in_public_catalog(svc) {
        return None;
    }
    // Public catalog entry: no drafts, no upstream addresses.
    let mut s = svc.clone();
    s.versions.retain(|_, v| matches!(v.state, VersionState::Published | VersionState::Deprecated));
    for v in s.versions.values_mut() {
        v.upstream = Upstreams::default();
        v.upstream_auth = UpstreamAuth::None;
        v.history.clear();
    }
    let mut out = json!(s);
    out["provider_agency"] = json!(reg.agency_of_system(&svc.provider_system));
    Some(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceQuery {
    #[serde(default)]
    provider_system: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_services(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<ServiceQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<Value> = reg
        .services
        .values()
        .filter(|s| q.provider_system.as_ref().is_none_or(|ps| &s.provider_system == ps))
        .filter_map(|s| service_view(&p, &reg, s))
        .collect();
    Json(page(items, q.offset, q.limit))
}

fn service_json(st: &Shared, p: &Principal, context: &str) -> Result<Value, ApiError> {
    let reg = st.store.read();
    reg.services.get(context).and_then(|s| service_view(p, &reg, s)).ok_or_else(|| ApiError::not_found("service", context))
}

async fn get_service(State(st): State<Shared>, p: Principal, Path(ctx): Path<String>) -> Result<Json<Value>, ApiError> {
    service_json(&st, &p, &ctx).map(Json)
}

/// Refuses unless `p` provides the service; 404 when `p` cannot even see it.
fn require_provider(st: &Shared, p: &Principal, context: &str) -> Result<(), ApiError> {
    p.require_write()?;
    let reg = st.store.read();
    let svc = reg.services.get(context).ok_or_else(|| ApiError::not_found("service", context))?;
    if provides(p, &reg, svc) {
        return Ok(());
    }
    if service_view(p, &reg, svc).is_some() {
        return Err(ApiError::forbidden("only the providing agency or an operator may change this service"));
    }
    Err(ApiError::not_found("service", context))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    context: String,
    provider_system: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    format: PayloadFormat,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    request_description: String,
    #[serde(default)]
    response_description: String,
    #[serde(default)]
    sample_request: String,
    #[serde(default)]
    sample_response: String,
}

impl From<ServiceBody> for ServiceSpec {
    fn from(b: ServiceBody) -> Self {
        ServiceSpec {
            context: b.context,
            provider_system: b.provider_system,
            name: b.name,
            description: b.description,
            purpose: b.purpose,
            format: b.format,
            methods: b.methods,
            request_description: b.request_description,
            response_description: b.response_description,
            sample_request: b.sample_request,
            sample_response: b.sample_response,
        }
    }
}

async fn create_service(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<ServiceBody>) -> Result<Created, ApiError> {
    p.require_write()?;
    if !p.owns_system(&st.store.read(), &b.provider_system) {
        return Err(ApiError::not_found("system", &b.provider_system));
    }
    let ctx = b.context.clone();
    st.propose(p.actor(), Command::CreateService { service: b.into() }).await?;
    Ok((StatusCode::CREATED, Json(service_json(&st, &p, &ctx)?)))
}

async fn update_service(
    State(st): State<Shared>,
    p: Principal,
    Path(ctx): Path<String>,
    ApiJson(b): ApiJson<ServiceBody>,
) -> Result<Json<Value>, ApiError> {
    require_provider(&st, &p, &ctx)?;
    st.propose(p.actor(), Command::UpdateService { context: ctx.clone(), spec: b.into() }).await?;
    service_json(&st, &p, &ctx).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: String,
    #[serde(default)]
    upstream: Upstreams,
    #[serde(default)]
    max_body_bytes: Option<u64>,
}

async fn add_version(
    State(st): State<Shared>,
    p: Principal,
    Path(ctx): Path<String>,
    ApiJson(b): ApiJson<VersionBody>,
) -> Result<Created, ApiError> {
    require_provider(&st, &p, &ctx)?;
    st.propose(
        p.actor(),
        Command::AddVersion { context: ctx.clone(), version: b.version, upstream: b.upstream, max_body_bytes: b.max_body_bytes },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(service_json(&st, &p, &ctx)?)))
}

/// Upstream authentication as an operator types it; secrets are sealed before they are proposed.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum UpstreamAuthInput {
    None,
    Basic { username: String, password: String },
    Bearer { token: String },
    MutualTls { cert_pem: String, key_pem: String },
    Signature,
}

impl UpstreamAuthInput {
    fn seal(self, key: &crate::secrets::SecretsKey) -> Result<UpstreamAuth, ApiError> {
        Ok(match self {
            UpstreamAuthInput::None => UpstreamAuth::None,
            UpstreamAuthInput::Basic { username, password } => {
                if password.is_empty() {
                    return Err(ApiError::invalid("upstream_auth.password", "must not be empty"));
                }
                UpstreamAuth::Basic { username, password: key.seal(password.as_bytes()) }
            }
            UpstreamAuthInput::Bearer { token } => {
                if token.is_empty() {
                    return Err(ApiError::invalid("upstream_auth.token", "must not be empty"));
                }
                UpstreamAuth::Bearer { token: key.seal(token.as_bytes()) }
            }
            UpstreamAuthInput::MutualTls { cert_pem, key_pem } => {
                if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ApiError::invalid("upstream_auth.cert_pem", "must be a PEM certificate chain"));
                }
                if !key_pem.contains("PRIVATE KEY-----") {
                    return Err(ApiError::invalid("upstream_auth.key_pem", "must be a PEM private key"));
                }
                UpstreamAuth::MutualTls { cert_pem, key_pem: key.seal(key_pem.as_bytes()) }
            }
            UpstreamAuthInput::Signature => UpstreamAuth::Signature,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionPatch {
    #[serde(default)]
    upstream: Option<Upstreams>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    upstream_auth: Option<UpstreamAuthInput>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn update_version(
    State(st): State<Shared>,
    p: Principal,
    Path((ctx, v)): Path<(String, String)>,
    ApiJson(b): ApiJson<VersionPatch>,
) -> Result<Json<Value>, ApiError> {
    require_provider(&st, &p, &ctx)?;
    let upstream_auth = b.upstream_auth.map(|a| a.seal(&st.key)).transpose()?;
    st.propose(
        p.actor(),
        Command::UpdateVersion {
            context: ctx.clone(),
            version: v,
            upstream: b.upstream,
            max_body_bytes: b.max_body_bytes,
            upstream_auth,
            timeout_ms: b.timeout_ms,
        },
    )
    .await?;
    service_json(&st, &p, &ctx).map(Json)
}

async fn publish_version(State(st): State<Shared>, p: Principal, Path((ctx, v)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    require_provider(&st, &p, &ctx)?;
    st.propose(p.actor(), Command::PublishVersion { context: ctx.clone(), version: v }).await?;
    service_json(&st, &p, &ctx).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeprecateBody {
    retire_at: Timestamp,
    reason: String,
    #[serde(default)]
    override_reason: Option<String>,
}

fn check_override(p: &Principal, o: &Option<String>) -> Result<(), ApiError> {
    if o.is_some() {
        p.require_operator("override the notice and overlap rules")?;
    }
    Ok(())
}

async fn deprecate_version(
    State(st): State<Shared>,
    p: Principal,
    Path((ctx, v)): Path<(String, String)>,
    ApiJson(b): ApiJson<DeprecateBody>,
) -> Result<Json<Value>, ApiError> {
    require_provider(&st, &p, &ctx)?;
    check_override(&p, &b.override_reason)?;
    st.propose(
        p.actor(),
        Command::DeprecateVersion {
            context: ctx.clone(),
            version: v,
            retire_at: b.retire_at,
            reason: b.reason,
            override_reason: b.override_reason,
        },
    )
    .await?;
    service_json(&st, &p, &ctx).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    reason: String,
    #[serde(default)]
    override_reason: Option<String>,
}

async fn retire_version(
    State(st): State<Shared>,
    p: Principal,
    Path((ctx, v)): Path<(String, String)>,
    ApiJson(b): ApiJson<RetireBody>,
) -> Result<Json<Value>, ApiError> {
    require_provider(&st, &p, &ctx)?;
    check_override(&p, &b.override_reason)?;
    st.propose(
        p.actor(),
        Command::RetireVersion { context: ctx.clone(), version: v, reason: b.reason, override_reason: b.override_reason },
    )
    .await?;
    service_json(&st, &p, &ctx).map(Json)
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/agencies",
            summary: "List agencies",
            roles: "any (agency-admin: own)",
            handler: || get(list_agencies),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies",
            summary: "Register an agency with its QĐ 20/2020 code",
            roles: "operator",
            handler: || post(create_agency),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/agencies/{code}",
            summary: "Show an agency with its restructuring history",
            roles: "any (scoped)",
            handler: || get(get_agency),
        },
        Endpoint {
            method: "patch",
            path: "/api/v1/agencies/{code}",
            summary: "Change contacts (operator: also parent)",
            roles: "operator, agency-admin (own)",
            handler: || patch(update_agency),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/{code}/rename",
            summary: "Rename, optionally under a new code",
            roles: "operator",
            handler: || post(rename_agency),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/{code}/split",
            summary: "Split into new agencies, assigning every system",
            roles: "operator",
            handler: || post(split_agency),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/merge",
            summary: "Merge agencies into a new or existing one",
            roles: "operator",
            handler: || post(merge_agencies),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/{code}/dissolve",
            summary: "Dissolve, handing systems to a successor",
            roles: "operator",
            handler: || post(dissolve_agency),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/{code}/suspend",
            summary: "Suspend an agency's traffic",
            roles: "operator",
            handler: || post(suspend_agency),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/agencies/{code}/reinstate",
            summary: "Lift a suspension",
            roles: "operator",
            handler: || post(reinstate_agency),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/systems",
            summary: "List information systems",
            roles: "any (agency-admin: own)",
            handler: || get(list_systems),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/systems",
            summary: "Register a system with its security level or commitment",
            roles: "operator, agency-admin (own)",
            handler: || post(create_system),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/systems/{id}",
            summary: "Show a system",
            roles: "any (scoped)",
            handler: || get(get_system),
        },
        Endpoint {
            method: "patch",
            path: "/api/v1/systems/{id}",
            summary: "Change a system",
            roles: "operator, agency-admin (own)",
            handler: || patch(update_system),
        },
        Endpoint { method: "get", path: "/api/v1/services", summary: "The service catalog", roles: "any", handler: || get(list_services) },
        Endpoint {
            method: "post",
            path: "/api/v1/services",
            summary: "Register a service (Form 01)",
            roles: "operator, agency-admin (provider)",
            handler: || post(create_service),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/services/{context}",
            summary: "Show a service",
            roles: "any (scoped)",
            handler: || get(get_service),
        },
        Endpoint {
            method: "patch",
            path: "/api/v1/services/{context}",
            summary: "Update a service's description",
            roles: "operator, agency-admin (provider)",
            handler: || patch(update_service),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/services/{context}/versions",
            summary: "Add a draft version",
            roles: "operator, agency-admin (provider)",
            handler: || post(add_version),
        },
        Endpoint {
            method: "patch",
            path: "/api/v1/services/{context}/versions/{version}",
            summary: "Change upstreams or body limit",
            roles: "operator, agency-admin (provider)",
            handler: || patch(update_version),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/services/{context}/versions/{version}/publish",
            summary: "Publish a draft version",
            roles: "operator, agency-admin (provider)",
            handler: || post(publish_version),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/services/{context}/versions/{version}/deprecate",
            summary: "Announce retirement (60-day notice, 180-day overlap; override: operator with reason)",
            roles: "operator, agency-admin (provider)",
            handler: || post(deprecate_version),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/services/{context}/versions/{version}/retire",
            summary: "Retire a version; its subscriptions are revoked",
            roles: "operator, agency-admin (provider)",
            handler: || post(retire_version),
        },
    ]
}
