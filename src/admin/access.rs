//! Endpoints for subscriptions (Form 02 request -> provider approval -> operator approval) and
//! consumer credentials (R5, R6, O8).
//!
//! A subscription is visible to operators, auditors and the agency-admins of its consumer and
//! provider agencies. Credential secrets are generated here, returned once, and stored only
//! hashed (consumer secret) or sealed (HMAC key).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Json;
use base64::Engine;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Principal;
use super::error::OptionalJson;
use super::{page, ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::{
    rules, Command, Contact, Credential, Decision, Environment, HmacKey, PublicKey, RateLimit, Role, SigAlg, State as Registry,
    Subscription, SubscriptionState,
};
use crate::secrets;

type Created = (StatusCode, Json<Value>);

fn consumer_side(p: &Principal, reg: &Registry, s: &Subscription) -> bool {
    p.role == Role::AgencyAdmin && p.sees_system(reg, &s.consumer_system)
}

fn provider_side(p: &Principal, reg: &Registry, s: &Subscription) -> bool {
    p.role == Role::AgencyAdmin && reg.provider_agency(&s.service).is_some_and(|a| p.sees_agency(a))
}

fn sees(p: &Principal, reg: &Registry, s: &Subscription) -> bool {
    p.role != Role::AgencyAdmin || consumer_side(p, reg, s) || provider_side(p, reg, s)
}

fn view(s: &Subscription, reg: &Registry) -> Value {
    let mut v = json!(s);
    let open = matches!(s.state, SubscriptionState::Requested | SubscriptionState::ProviderApproved);
    v["overdue"] = json!(open && rules::local_date(Utc::now()) > s.decision_due);
    v["provider_agency"] = json!(reg.provider_agency(&s.service));
    v["consumer_agency"] = json!(reg.agency_of_system(&s.consumer_system));
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubQuery {
    #[serde(default)]
    state: Option<SubscriptionState>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    consumer_system: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_subs(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<SubQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<Value> = reg
        .subscriptions
        .values()
        .filter(|s| sees(&p, &reg, s))
        .filter(|s| q.state.is_none_or(|x| s.state == x))
        .filter(|s| q.service.as_ref().is_none_or(|x| &s.service == x))
        .filter(|s| q.consumer_system.as_ref().is_none_or(|x| &s.consumer_system == x))
        .map(|s| view(s, &reg))
        .collect();
    Json(page(items, q.offset, q.limit))
}

fn sub_json(st: &Shared, p: &Principal, id: &str) -> Result<Value, ApiError> {
    let reg = st.store.read();
    reg.subscriptions.get(id).filter(|s| sees(p, &reg, s)).map(|s| view(s, &reg)).ok_or_else(|| ApiError::not_found("subscription", id))
}

async fn get_sub(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    sub_json(&st, &p, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubRequest {
    consumer_system: String,
    service: String,
    version: String,
    environment: Environment,
    purpose: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    contact: Option<Contact>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

async fn request_sub(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<SubRequest>) -> Result<Created, ApiError> {
    p.require_write()?;
    {
        let reg = st.store.read();
        if !p.owns_system(&reg, &b.consumer_system) {
            return Err(ApiError::not_found("system", &b.consumer_system));
        }
        // A service an agency-admin cannot see in the catalog does not exist for them.
        let visible = reg.services.get(&b.service).is_some_and(|s| {
            p.role == Role::Operator
                || p.owns_system(&reg, &s.provider_system)
                || s.versions
                    .values()
                    .any(|v| matches!(v.state, crate::registry::VersionState::Published | crate::registry::VersionState::Deprecated))
        });
        if !visible {
            return Err(ApiError::not_found("service", &b.service));
        }
    }
    if b.rate_limit.is_some() {
        p.require_operator("set rate limits")?;
    }
    let id = secrets::new_id("sub");
    st.propose(
        p.actor(),
        Command::RequestSubscription {
            id: id.clone(),
            consumer_system: b.consumer_system,
            service: b.service,
            version: b.version,
            environment: b.environment,
            purpose: b.purpose,
            scope: b.scope,
            contact: b.contact,
            rate_limit: b.rate_limit.unwrap_or_default(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(sub_json(&st, &p, &id)?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: String,
}

async fn decide(st: Shared, p: Principal, id: String, decision: Decision, reason: String) -> Result<Json<Value>, ApiError> {
    p.require_write()?;
    {
        let reg = st.store.read();
        let s = reg.subscriptions.get(&id).filter(|s| sees(&p, &reg, s)).ok_or_else(|| ApiError::not_found("subscription", &id))?;
        let allowed = match (p.role, decision) {
            (Role::Operator, _) => true,
            (Role::AgencyAdmin, Decision::ProviderApprove | Decision::Reject) => provider_side(&p, &reg, s),
            (Role::AgencyAdmin, Decision::Revoke) => provider_side(&p, &reg, s) || consumer_side(&p, &reg, s),
            _ => false,
        };
        if !allowed {
            let what = match decision {
                Decision::ProviderApprove => "only the providing agency or an operator may approve as provider",
                Decision::Approve => "only an operator may grant a subscription",
                Decision::Reject => "only the providing agency or an operator may reject",
                Decision::Revoke => "only the consumer, the provider or an operator may revoke",
            };
            return Err(ApiError::forbidden(what));
        }
    }
    st.propose(p.actor(), Command::DecideSubscription { id: id.clone(), decision, reason }).await?;
    sub_json(&st, &p, &id).map(Json)
}

async fn provider_approve(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    decide(st, p, id, Decision::ProviderApprove, b.map(|b| b.reason).unwrap_or_default()).await
}
async fn approve(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    decide(st, p, id, Decision::Approve, b.map(|b| b.reason).unwrap_or_default()).await
}
async fn reject(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    decide(st, p, id, Decision::Reject, b.reason).await
}
async fn revoke(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    decide(st, p, id, Decision::Revoke, b.reason).await
}

async fn set_limits(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<RateLimit>,
) -> Result<Json<Value>, ApiError> {
    p.require_operator("set rate limits")?;
    if b.per_second == Some(0) || b.per_day == Some(0) {
        return Err(ApiError::invalid(
            "rate_limit",
            "a limit of 0 would block all traffic; revoke the subscription instead, or omit the limit",
        ));
    }
    st.propose(p.actor(), Command::SetSubscriptionLimits { id: id.clone(), rate_limit: b }).await?;
    sub_json(&st, &p, &id).map(Json)
}

/// A credential as shown after creation (no secret material).
#[derive(Serialize)]
struct CredentialView {
    id: String,
    system: String,
    environment: Environment,
    consumer_key: String,
    hmac_key_id: Option<String>,
    public_keys: Vec<Value>,
    created_at: chrono::DateTime<Utc>,
    created_by: String,
    revoked_at: Option<chrono::DateTime<Utc>>,
}

impl From<&Credential> for CredentialView {
    fn from(c: &Credential) -> Self {
        CredentialView {
            id: c.id.clone(),
            system: c.system.clone(),
            environment: c.environment,
            consumer_key: c.consumer_key.clone(),
            hmac_key_id: c.hmac.as_ref().map(|h| h.key_id.clone()),
            public_keys: c.public_keys.iter().map(|k| json!({"key_id": k.key_id, "alg": k.alg.as_str()})).collect(),
            created_at: c.created_at,
            created_by: c.created_by.clone(),
            revoked_at: c.revoked_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredQuery {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_creds(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<CredQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<CredentialView> = reg
        .credentials
        .values()
        .filter(|c| p.sees_system(&reg, &c.system))
        .filter(|c| q.system.as_ref().is_none_or(|s| &c.system == s))
        .map(CredentialView::from)
        .collect();
    Json(page(items, q.offset, q.limit))
}

fn cred_json(st: &Shared, p: &Principal, id: &str) -> Result<Value, ApiError> {
    let reg = st.store.read();
    reg.credentials
        .get(id)
        .filter(|c| p.sees_system(&reg, &c.system))
        .map(|c| json!(CredentialView::from(c)))
        .ok_or_else(|| ApiError::not_found("credential", id))
}

async fn get_cred(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    cred_json(&st, &p, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCred {
    system: String,
    environment: Environment,
    /// Also issue an HMAC key for RFC 9421 `hmac-sha256` signatures.
    #[serde(default)]
    hmac: bool,
}

async fn issue_cred(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<NewCred>) -> Result<Created, ApiError> {
    p.require_write()?;
    if !p.owns_system(&st.store.read(), &b.system) {
        return Err(ApiError::not_found("system", &b.system));
    }
    let id = secrets::new_id("cred");
    let consumer_key = secrets::random_string(18);
    let consumer_secret = secrets::random_string(32);
    let hmac_secret = b.hmac.then(secrets::random_bytes::<32>);
    let hmac = hmac_secret
        .map(|k| HmacKey { key_id: format!("{}-{}", b.system, hex::encode(secrets::random_bytes::<4>())), secret: st.key.seal(&k) });
    let cred = Credential {
        id: id.clone(),
        system: b.system,
        environment: b.environment,
        consumer_key: consumer_key.clone(),
        secret: secrets::hash_generated(&consumer_secret),
        hmac: hmac.clone(),
        public_keys: vec![],
        created_at: Utc::now(),
        created_by: p.username.clone(),
        revoked_at: None,
    };
    st.propose(p.actor(), Command::IssueCredential { credential: cred }).await?;
    let mut out = cred_json(&st, &p, &id)?;
    out["consumer_secret"] = json!(consumer_secret);
    if let (Some(h), Some(k)) = (hmac, hmac_secret) {
        out["hmac"] = json!({ "key_id": h.key_id, "secret_base64": base64::engine::general_purpose::STANDARD.encode(k) });
    }
    out["note"] = json!("the secrets are shown only once; store them now");
    Ok((StatusCode::CREATED, Json(out)))
}

/// Refuses unless `p` may change credential `id`: 404 when `p` cannot see it, 403 when it
/// can see but not change it.
fn require_credential_owner(st: &Shared, p: &Principal, id: &str, what: &str) -> Result<(), ApiError> {
    p.require_write()?;
    let reg = st.store.read();
    let c = reg.credentials.get(id).filter(|c| p.sees_system(&reg, &c.system)).ok_or_else(|| ApiError::not_found("credential", id))?;
    if !p.owns_system(&reg, &c.system) {
        return Err(ApiError::forbidden(format!("only the owning agency or an operator may {what}")));
    }
    Ok(())
}

async fn revoke_cred(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<DecisionBody>,
) -> Result<Json<Value>, ApiError> {
    require_credential_owner(&st, &p, &id, "revoke a credential")?;
    st.propose(p.actor(), Command::RevokeCredential { id: id.clone(), reason: b.reason }).await?;
    cred_json(&st, &p, &id).map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeysBody {
    public_keys: Vec<PublicKeyInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyInput {
    key_id: String,
    alg: String,
    pem: String,
}

async fn set_public_keys(
    State(st): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PublicKeysBody>,
) -> Result<Json<Value>, ApiError> {
    require_credential_owner(&st, &p, &id, "change a credential's keys")?;
    let mut keys = Vec::with_capacity(b.public_keys.len());
    for (i, k) in b.public_keys.into_iter().enumerate() {
        let alg = SigAlg::parse(&k.alg).filter(|a| *a != SigAlg::HmacSha256).ok_or_else(|| {
            ApiError::invalid(
                &format!("public_keys[{i}].alg"),
                format!("{:?} is not one of rsa-pss-sha512, rsa-v1_5-sha256, ecdsa-p256-sha256, ed25519", k.alg),
            )
        })?;
        crate::gateway::httpsig::ParsedKey::from_pem(alg, &k.pem).map_err(|e| {
            ApiError::invalid(&format!("public_keys[{i}].pem"), format!("is not a usable {} public key: {e}", alg.as_str()))
        })?;
        keys.push(PublicKey { key_id: k.key_id, alg, pem: k.pem });
    }
    st.propose(p.actor(), Command::SetPublicKeys { id: id.clone(), public_keys: keys }).await?;
    cred_json(&st, &p, &id).map(Json)
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "get",
            path: "/api/v1/subscriptions",
            summary: "List subscriptions (with the 5-working-day `overdue` flag)",
            roles: "any (agency-admin: as consumer or provider)",
            handler: || get(list_subs),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/subscriptions",
            summary: "Request access (Form 02)",
            roles: "operator, agency-admin (consumer)",
            handler: || post(request_sub),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/subscriptions/{id}",
            summary: "Show a subscription with its history",
            roles: "any (scoped)",
            handler: || get(get_sub),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/subscriptions/{id}/provider-approve",
            summary: "Provider agrees",
            roles: "operator, agency-admin (provider)",
            handler: || post(provider_approve),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/subscriptions/{id}/approve",
            summary: "Operator grants (becomes active)",
            roles: "operator",
            handler: || post(approve),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/subscriptions/{id}/reject",
            summary: "Refuse a request (reason required)",
            roles: "operator, agency-admin (provider)",
            handler: || post(reject),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/subscriptions/{id}/revoke",
            summary: "Withdraw access (reason required)",
            roles: "operator, agency-admin (consumer or provider)",
            handler: || post(revoke),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/subscriptions/{id}/limits",
            summary: "Set rate limit and daily quota",
            roles: "operator",
            handler: || put(set_limits),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/credentials",
            summary: "List credentials (no secrets)",
            roles: "any (agency-admin: own systems)",
            handler: || get(list_creds),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/credentials",
            summary: "Issue a credential for a system and environment; secrets shown once",
            roles: "operator, agency-admin (own system)",
            handler: || post(issue_cred),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/credentials/{id}",
            summary: "Show a credential (no secrets)",
            roles: "any (scoped)",
            handler: || get(get_cred),
        },
        Endpoint {
            method: "put",
            path: "/api/v1/credentials/{id}/public-keys",
            summary: "Replace the public keys used for RFC 9421 signatures and private_key_jwt",
            roles: "operator, agency-admin (own system)",
            handler: || put(set_public_keys),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/credentials/{id}/revoke",
            summary: "Revoke a credential",
            roles: "operator, agency-admin (own system)",
            handler: || post(revoke_cred),
        },
    ]
}
