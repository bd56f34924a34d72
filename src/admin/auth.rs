//! Authentication (bearer tokens, password login with lockout), the caller's [`Principal`],
//! and the user and token endpoints (O7).
//!
//! Token wire format: `lgsp.<id>.<secret>`; only a salted SHA-256 of the secret is stored and
//! it is compared in constant time. Unknown users cost the same argon2 work as known ones.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::routing::{delete, get, patch, post};
use axum::Json;
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, ApiJson, ApiQuery, Endpoint, Shared};
use crate::registry::{Actor, ApiToken, Command, Role, State as Registry, User};
use crate::secrets;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    pub agency: Option<String>,
    pub token_id: String,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor { user: self.username.clone(), role: self.role, agency: self.agency.clone() }
    }
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
    /// Refuses read-only roles.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.role == Role::Auditor {
            return Err(ApiError::forbidden("the auditor role is read-only"));
        }
        Ok(())
    }
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        if self.role != Role::Operator {
            return Err(ApiError::forbidden(format!("only an operator may {what}")));
        }
        Ok(())
    }
    pub fn require_reader(&self, what: &str) -> Result<(), ApiError> {
        if self.role == Role::AgencyAdmin {
            return Err(ApiError::forbidden(format!("only an operator or auditor may {what}")));
        }
        Ok(())
    }
    /// Operators and auditors see every agency; an agency-admin only its own.
    pub fn sees_agency(&self, code: &str) -> bool {
        self.role != Role::AgencyAdmin || self.agency.as_deref() == Some(code)
    }
    pub fn sees_system(&self, reg: &Registry, id: &str) -> bool {
        reg.agency_of_system(id).is_some_and(|a| self.sees_agency(a))
    }
    /// Owns (may change) a system: operator, or agency-admin of its agency.
    pub fn owns_system(&self, reg: &Registry, id: &str) -> bool {
        self.role == Role::Operator || (self.role == Role::AgencyAdmin && self.sees_system(reg, id))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// Splits `lgsp.<id>.<secret>`.
fn parse_token(t: &str) -> Option<(&str, &str)> {
    let rest = t.strip_prefix("lgsp.")?;
    let (id, secret) = rest.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

impl FromRequestParts<Shared> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &Shared) -> Result<Self, ApiError> {
        let Some(raw) = bearer(parts) else {
            return Err(ApiError::unauthenticated(
                "send `Authorization: Bearer <token>`; get a token with POST /api/v1/auth/login or `lgsp token create`",
            ));
        };
        let invalid = || ApiError::unauthenticated("the token is invalid, expired or revoked; log in again");
        let (id, secret) = parse_token(raw).ok_or_else(invalid)?;
        let reg = st.store.read();
        let tok = reg.tokens.get(id).ok_or_else(invalid)?;
        if !secrets::verify_secret(&tok.secret, secret) {
            return Err(invalid());
        }
        if tok.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(invalid());
        }
        let user = reg.users.get(&tok.username).ok_or_else(invalid)?;
        if user.disabled {
            return Err(invalid());
        }
        Ok(Principal { username: user.username.clone(), role: user.role, agency: user.agency.clone(), token_id: tok.id.clone() })
    }
}

/// A user as shown by the API (no password hash).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub agency: Option<String>,
    pub disabled: bool,
    pub locked_until: Option<chrono::DateTime<Utc>>,
    pub password_changed_at: chrono::DateTime<Utc>,
    pub created_at: chrono::DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            role: u.role,
            agency: u.agency.clone(),
            disabled: u.disabled,
            locked_until: u.locked_until.filter(|t| *t > Utc::now()),
            password_changed_at: u.password_changed_at,
            created_at: u.created_at,
        }
    }
}

/// Creates a token for `username` and returns its wire form (shown once).
pub async fn issue_token(
    st: &Shared,
    actor: Actor,
    username: &str,
    name: &str,
    ttl: Option<Duration>,
    session: bool,
) -> Result<(String, ApiToken), ApiError> {
    let id = hex::encode(secrets::random_bytes::<8>());
    let secret = secrets::random_string(32);
    let now = Utc::now();
    let token = ApiToken {
        id: id.clone(),
        username: username.to_owned(),
        name: name.to_owned(),
        secret: secrets::hash_generated(&secret),
        created_at: now,
        expires_at: match ttl {
            Some(d) => Some(now.checked_add_signed(d).ok_or_else(|| ApiError::invalid("expires_in_days", "is too far in the future"))?),
            None => None,
        },
        session,
    };
    st.propose(actor, Command::IssueToken { token: token.clone() }).await?;
    Ok((format!("lgsp.{id}.{secret}"), token))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(State(st): State<Shared>, ApiJson(b): ApiJson<LoginBody>) -> Result<Json<Value>, ApiError> {
    let bad = || ApiError::new(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS", "wrong username or password");
    let user = st.store.read().users.get(&b.username).cloned();
    let now = Utc::now();
    if let Some(u) = &user {
        if let Some(until) = u.locked_until.filter(|t| *t > now) {
            let mut e = ApiError::new(
                StatusCode::LOCKED,
                "ACCOUNT_LOCKED",
                format!("this account is locked after repeated failed logins until {until}; wait or ask an operator to unlock it"),
            );
            e.retry_after = Some(u64::try_from((until - now).num_seconds()).unwrap_or(1).max(1));
            return Err(e);
        }
    }
    let phc = user.as_ref().map_or_else(|| secrets::dummy_password_hash().to_owned(), |u| u.password_hash.clone());
    let pw = b.password.clone();
    let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&phc, &pw)).await.unwrap_or(false);
    let Some(u) = user else { return Err(bad()) };
    let actor = Actor { user: u.username.clone(), role: u.role, agency: u.agency.clone() };
    if !ok {
        st.propose(
            actor,
            Command::RecordLoginFailure {
                username: u.username.clone(),
                threshold: st.cfg.lockout_threshold,
                lock_seconds: st.cfg.lockout_seconds,
            },
        )
        .await?;
        tracing::warn!(user = %u.username, "admin login failed");
        return Err(bad());
    }
    if u.disabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "ACCOUNT_DISABLED", "this account is disabled; ask an operator"));
    }
    if u.failed_logins > 0 || u.locked_until.is_some() {
        st.propose(actor.clone(), Command::RecordLoginSuccess { username: u.username.clone() }).await?;
    }
    let ttl = Duration::seconds(i64::try_from(st.cfg.session_ttl_seconds).unwrap_or(28_800));
    let (token, t) = issue_token(&st, actor, &u.username, "session", Some(ttl), true).await?;
    tracing::info!(user = %u.username, "admin login");
    Ok(Json(json!({ "token": token, "expires_at": t.expires_at, "user": UserView::from(&u) })))
}

async fn logout(State(st): State<Shared>, p: Principal) -> Result<StatusCode, ApiError> {
    st.propose(p.actor(), Command::RevokeToken { id: p.token_id.clone() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(st): State<Shared>, p: Principal) -> Result<Json<Value>, ApiError> {
    let reg = st.store.read();
    let u = reg.users.get(&p.username).ok_or_else(|| ApiError::unauthenticated("the account no longer exists"))?;
    Ok(Json(json!(UserView::from(u))))
}

fn visible_user(p: &Principal, u: &User) -> bool {
    p.role != Role::AgencyAdmin || (u.agency.is_some() && u.agency == p.agency)
}

/// May `p` manage (change) user `u`? Operators: anyone; agency-admins: their agency's users.
fn manages_user(p: &Principal, u: &User) -> bool {
    p.role == Role::Operator || (p.role == Role::AgencyAdmin && visible_user(p, u))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserQuery {
    #[serde(default)]
    agency: Option<String>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_users(State(st): State<Shared>, p: Principal, ApiQuery(q): ApiQuery<UserQuery>) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<UserView> = reg
        .users
        .values()
        .filter(|u| visible_user(&p, u))
        .filter(|u| q.agency.as_ref().is_none_or(|a| u.agency.as_ref() == Some(a)))
        .map(UserView::from)
        .collect();
    Json(super::page(items, q.offset, q.limit))
}

fn find_user(st: &Shared, p: &Principal, name: &str) -> Result<User, ApiError> {
    let reg = st.store.read();
    reg.users.get(name).filter(|u| visible_user(p, u) || u.username == p.username).cloned().ok_or_else(|| ApiError::not_found("user", name))
}

async fn get_user(State(st): State<Shared>, p: Principal, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(UserView::from(&find_user(&st, &p, &name)?))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    #[serde(default)]
    display_name: String,
    role: Role,
    #[serde(default)]
    agency: Option<String>,
    password: String,
}

async fn create_user(State(st): State<Shared>, p: Principal, ApiJson(b): ApiJson<NewUser>) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_write()?;
    if p.role == Role::AgencyAdmin && (b.role != Role::AgencyAdmin || b.agency != p.agency) {
        return Err(ApiError::forbidden("an agency-admin may only create agency-admin accounts for its own agency"));
    }
    secrets::check_password_policy(&b.password).map_err(|r| ApiError::invalid("password", r))?;
    let pw = b.password;
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&pw))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    st.propose(
        p.actor(),
        Command::CreateUser {
            username: b.username.clone(),
            display_name: b.display_name,
            role: b.role,
            agency: b.agency,
            password_hash: hash,
        },
    )
    .await?;
    let u = find_user(&st, &p, &b.username)?;
    Ok((StatusCode::CREATED, Json(json!(UserView::from(&u)))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

async fn update_user(
    State(st): State<Shared>,
    p: Principal,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<UserPatch>,
) -> Result<Json<Value>, ApiError> {
    p.require_write()?;
    let u = find_user(&st, &p, &name)?;
    if !manages_user(&p, &u) {
        return Err(ApiError::forbidden("you may not change this account"));
    }
    if b.disabled == Some(true) && u.username == p.username {
        return Err(ApiError::new(StatusCode::CONFLICT, "SELF_DISABLE", "you cannot disable your own account"));
    }
    st.propose(p.actor(), Command::UpdateUser { username: name.clone(), display_name: b.display_name, disabled: b.disabled }).await?;
    Ok(Json(json!(UserView::from(&find_user(&st, &p, &name)?))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    #[serde(default)]
    current_password: Option<String>,
    new_password: String,
}

async fn set_password(
    State(st): State<Shared>,
    p: Principal,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let u = find_user(&st, &p, &name)?;
    let own = u.username == p.username;
    if own {
        let cur =
            b.current_password.clone().ok_or_else(|| ApiError::invalid("current_password", "required to change your own password"))?;
        let phc = u.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&phc, &cur)).await.unwrap_or(false);
        if !ok {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "INVALID_CREDENTIALS", "the current password is wrong"));
        }
    } else {
        p.require_write()?;
        if !manages_user(&p, &u) {
            return Err(ApiError::forbidden("you may not reset this account's password"));
        }
    }
    secrets::check_password_policy(&b.new_password).map_err(|r| ApiError::invalid("new_password", r))?;
    let pw = b.new_password;
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&pw))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    st.propose(p.actor(), Command::SetPassword { username: name, password_hash: hash }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unlock_user(State(st): State<Shared>, p: Principal, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    p.require_write()?;
    let u = find_user(&st, &p, &name)?;
    if !manages_user(&p, &u) {
        return Err(ApiError::forbidden("you may not unlock this account"));
    }
    st.propose(p.actor(), Command::UnlockUser { username: name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    username: String,
    name: String,
    created_at: chrono::DateTime<Utc>,
    expires_at: Option<chrono::DateTime<Utc>>,
    session: bool,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> Self {
        TokenView {
            id: t.id.clone(),
            username: t.username.clone(),
            name: t.name.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            session: t.session,
        }
    }
}

async fn list_tokens(State(st): State<Shared>, p: Principal) -> Json<Value> {
    let reg = st.store.read();
    let items: Vec<TokenView> = reg.tokens.values().filter(|t| t.username == p.username || p.is_operator()).map(TokenView::from).collect();
    Json(super::page(items, None, None))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

async fn create_token(
    State(st): State<Shared>,
    p: Principal,
    ApiJson(b): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if b.name.trim().is_empty() || b.name.len() > 100 {
        return Err(ApiError::invalid("name", "must be 1-100 characters"));
    }
    if b.expires_in_days.is_some_and(|d| !(1..=3650).contains(&d)) {
        return Err(ApiError::invalid("expires_in_days", "must be between 1 and 3650, or omitted for a token that does not expire"));
    }
    let ttl = b.expires_in_days.map(|d| Duration::days(i64::from(d)));
    let (token, t) = issue_token(&st, p.actor(), &p.username, &b.name, ttl, false).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "id": t.id, "expires_at": t.expires_at, "note": "the token is shown only once; store it now" })),
    ))
}

async fn revoke_token(State(st): State<Shared>, p: Principal, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let owner = st.store.read().tokens.get(&id).map(|t| t.username.clone());
    match owner {
        Some(o) if o == p.username || p.is_operator() => {}
        _ => return Err(ApiError::not_found("token", &id)),
    }
    st.propose(p.actor(), Command::RevokeToken { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "post",
            path: "/api/v1/auth/login",
            summary: "Log in with username and password; returns a session token",
            roles: "public",
            handler: || post(login),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/auth/logout",
            summary: "Revoke the calling token",
            roles: "any",
            handler: || post(logout),
        },
        Endpoint { method: "get", path: "/api/v1/auth/me", summary: "The calling user", roles: "any", handler: || get(me) },
        Endpoint {
            method: "get",
            path: "/api/v1/users",
            summary: "List users (agency-admin: its agency's)",
            roles: "any",
            handler: || get(list_users),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/users",
            summary: "Create a user (password policy O7)",
            roles: "operator, agency-admin (own agency)",
            handler: || post(create_user),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/users/{username}",
            summary: "Show a user",
            roles: "any (scoped)",
            handler: || get(get_user),
        },
        Endpoint {
            method: "patch",
            path: "/api/v1/users/{username}",
            summary: "Rename or disable a user",
            roles: "operator, agency-admin (own agency)",
            handler: || patch(update_user),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/users/{username}/password",
            summary: "Change (own, with current password) or reset a password",
            roles: "self, operator, agency-admin (own agency)",
            handler: || post(set_password),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/users/{username}/unlock",
            summary: "Unlock an account locked by failed logins",
            roles: "operator, agency-admin (own agency)",
            handler: || post(unlock_user),
        },
        Endpoint {
            method: "get",
            path: "/api/v1/tokens",
            summary: "List your API tokens (operator: all)",
            roles: "any",
            handler: || get(list_tokens),
        },
        Endpoint {
            method: "post",
            path: "/api/v1/tokens",
            summary: "Create an API token (shown once)",
            roles: "any",
            handler: || post(create_token),
        },
        Endpoint {
            method: "delete",
            path: "/api/v1/tokens/{id}",
            summary: "Revoke an API token",
            roles: "owner, operator",
            handler: || delete(revoke_token),
        },
    ]
}
