//! Who is calling over HTTP, and whether the request may be answered at all. In order:
//!
//! 1. Host allowlist on TCP listeners (DNS rebinding): unknown, empty or bare-port Host → 403.
//! 2. Origin allowlist (a web page's request carries its Origin; others' would be CSRF) → 403.
//! 3. Identity: a `hl-` bearer token names its owner (invalid, revoked or expired → 401); a
//!    listener off loopback requires one; otherwise the kernel tells — SO_PEERCRED on unix
//!    sockets (a per-user socket admits only its user), the socket owner on loopback TCP. An
//!    unknown owner is anonymous; so is root, since a root-run forwarder would otherwise lend
//!    everyone root's rights.
//!
//! Bearer values that are not ours (OpenAI clients insist on some API key, people pass
//! "ollama") are ignored on loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nix::unistd::{Uid, User};
use sqlx::Row;
use subtle::ConstantTimeEq;

use super::Api;
use super::error::{ApiError, Dialect};
use super::listen::ConnInfo;
use crate::accounts;
use crate::config::HttpConfig;
use crate::db::now;
use crate::identity::PeerIdentity;

/// The uid standing for callers nobody can name (its own quota and usage row).
pub const ANONYMOUS_UID: u32 = u32::MAX - 1;
/// Prefix of the secrets `hyperctl token create` issues.
pub const TOKEN_PREFIX: &str = "hl-";

/// The identity a request runs as, in its extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub who: PeerIdentity,
    /// Models a token restricts its bearer to (empty = any).
    pub models: Vec<String>,
    /// The name metrics use for this caller.
    pub anonymous: bool,
}

impl Caller {
    /// The anonymous caller.
    pub fn anonymous() -> Caller {
        Caller {
            who: PeerIdentity { uid: ANONYMOUS_UID, user: "anonymous".into(), admin: false, pid: None },
            models: Vec::new(),
            anonymous: true,
        }
    }

    /// Refuses a model the caller's token does not allow.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.models.is_empty() || self.models.iter().any(|m| same_model(m, model)) {
            return Ok(());
        }
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("this token may not use the model '{model}'")))
    }
}

/// "gemma3" and "gemma3:latest" name the same model.
fn same_model(a: &str, b: &str) -> bool {
    let tag = |s: &str| {
        if s.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            s.to_string()
        } else {
            format!("{s}:latest")
        }
    };
    tag(a).eq_ignore_ascii_case(&tag(b))
}

/// Host and Origin checks, then identity; the caller lands in the request's extensions.
pub async fn guard(
    State(api): State<Arc<Api>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    mut request: Request,
    next: Next,
) -> Response {
    let dialect = Dialect::of_path(request.uri().path());
    let config = api.shared.config();
    let http = &config.http;
    if let ConnInfo::Tcp { .. } = conn
        && !host_allowed(request.headers(), http, &api.tcp_addrs)
    {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        tracing::warn!(host, "refused a request with a Host header not in http.allowed_hosts");
        return ApiError::new(StatusCode::FORBIDDEN, "host not allowed (see http.allowed_hosts)")
            .into_dialect(dialect);
    }
    let origin = request.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
    if let Some(origin) = &origin
        && !origin_allowed(origin, &http.cors_origins)
    {
        tracing::warn!(origin, "refused a request from an origin not in http.cors_origins");
        return ApiError::new(StatusCode::FORBIDDEN, "origin not allowed (see http.cors_origins)")
            .into_dialect(dialect);
    }
    if request.method() == Method::OPTIONS {
        return cors(StatusCode::NO_CONTENT.into_response(), origin.as_deref(), true);
    }
    let caller = match identify(&api, &conn, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return cors(error.into_dialect(dialect), origin.as_deref(), false),
    };
    tracing::Span::current().record("user", caller.who.user.as_str());
    request.extensions_mut().insert(caller);
    cors(next.run(request).await, origin.as_deref(), false)
}

fn cors(mut response: Response, origin: Option<&str>, preflight: bool) -> Response {
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else { return response };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, HEAD, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Request-Id, OpenAI-Beta, X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout"),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

/// The Host header names an allowed host (port ignored), or one of our own listening addresses.
pub fn host_allowed(headers: &HeaderMap, config: &HttpConfig, own: &[SocketAddr]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let Some(name) = host_name(host) else { return false };
    if name.is_empty() {
        return false;
    }
    if let Ok(ip) = name.parse::<IpAddr>()
        && own.iter().any(|a| a.ip() == ip && !a.ip().is_unspecified())
    {
        return true;
    }
    config.allowed_hosts.iter().any(|allowed| {
        let allowed = allowed.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        match allowed.strip_prefix("*.") {
            Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}")),
            None => name == allowed,
        }
    })
}

/// The host part of a Host header, lowercased and without brackets or port; `None` when malformed.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        inside
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))) {
        return None;
    }
    Some(name)
}

/// Whether a browser Origin is in the configured list.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern == "*" || pattern == origin {
            return true;
        }
        match pattern.strip_suffix(":*") {
            Some(base) => {
                origin == base
                    || origin
                        .strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
            }
            None => false,
        }
    })
}

async fn identify(api: &Api, conn: &ConnInfo, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if let Some(secret) = bearer.filter(|s| s.starts_with(TOKEN_PREFIX)) {
        return token_caller(api, secret).await;
    }
    match conn {
        ConnInfo::Tcp { tokens_required: true, .. } => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this address requires a bearer token: create one with `hyperctl token create` and send it as \
             `Authorization: Bearer <token>` (the API key of OpenAI clients)",
        )),
        ConnInfo::Tcp { owner: Some(uid), .. } if *uid != 0 => Ok(local_caller(api, *uid, None, None)),
        ConnInfo::Tcp { .. } => Ok(Caller::anonymous()),
        ConnInfo::Unix { cred: None, .. } => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "cannot identify the caller: no peer credentials"))
        }
        ConnInfo::Unix { cred: Some((uid, _, _)), owner: Some(owner) } if uid != owner => {
            tracing::warn!(uid, owner, "refused a connection to another user's socket");
            Err(ApiError::new(StatusCode::FORBIDDEN, "this socket belongs to another user"))
        }
        ConnInfo::Unix { cred: Some((uid, gid, pid)), .. } => Ok(local_caller(api, *uid, Some(*gid), *pid)),
    }
}

fn local_caller(api: &Api, uid: u32, gid: Option<u32>, pid: Option<i32>) -> Caller {
    let gid = gid.unwrap_or_else(|| {
        User::from_uid(Uid::from_raw(uid)).ok().flatten().map_or(u32::MAX, |u| u.gid.as_raw())
    });
    Caller { who: api.shared.authority.identify(uid, gid, pid), models: Vec::new(), anonymous: false }
}

/// Verifies a token: known (by its hash, compared in constant time), not revoked, not expired.
async fn token_caller(api: &Api, secret: &str) -> Result<Caller, ApiError> {
    let hash = accounts::secret_hash(secret);
    let rejected = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid, revoked or expired token (see `hyperctl token list`)",
        )
    };
    let row = sqlx::query(
        "SELECT id, uid, secret_sha256, expires_at, models, revoked FROM tokens WHERE secret_sha256 = ?",
    )
    .bind(&hash)
    .fetch_optional(&api.shared.db)
    .await
    .map_err(|e| ApiError::from(crate::error::Error::from(e)))?;
    let Some(row) = row else { return Err(rejected()) };
    let stored: String = row.get(2);
    if !bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(rejected());
    }
    let id: String = row.get(0);
    let expires_at: i64 = row.get(3);
    let revoked = row.get::<i64, _>(5) != 0;
    if revoked || (expires_at != 0 && expires_at <= now()) {
        tracing::info!(token = %id, revoked, "refused a revoked or expired token");
        return Err(rejected());
    }
    let uid = u32::try_from(row.get::<i64, _>(1)).map_err(|_| rejected())?;
    let models: Vec<String> = serde_json::from_str(row.get::<&str, _>(4)).unwrap_or_default();
    let db = api.shared.db.clone();
    tokio::spawn(async move {
        let _ = sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(now())
            .bind(&id)
            .execute(&db)
            .await;
    });
    let mut caller = local_caller(api, uid, None, None);
    caller.models = models;
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn rebinding_hosts_are_refused() {
        let config = HttpConfig::default();
        let own: Vec<SocketAddr> = vec!["127.0.0.1:11434".parse().unwrap(), "[::1]:11434".parse().unwrap()];
        for ok in [
            "localhost:11434",
            "127.0.0.1:11434",
            "[::1]:11434",
            "LOCALHOST",
            "app.localhost:8080",
            "localhost.",
        ] {
            assert!(host_allowed(&headers(ok), &config, &own), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:11434",
            "",
            ":11434",
            "localhost.evil.example",
            "127.0.0.2:11434",
            "[::1",
            "a b",
        ] {
            assert!(!host_allowed(&headers(bad), &config, &own), "{bad}");
        }
        assert!(!host_allowed(&HeaderMap::new(), &config, &own), "no Host header");
        let extra: Vec<SocketAddr> = vec!["192.0.2.7:11434".parse().unwrap()];
        assert!(host_allowed(&headers("192.0.2.7:11434"), &config, &extra), "our own bind address");
    }

    #[test]
    fn origins() {
        let allowed = HttpConfig::default().cors_origins;
        for ok in ["http://localhost", "http://localhost:3000", "https://127.0.0.1:8443", "http://[::1]:5173"]
        {
            assert!(origin_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://localhost:3000.evil",
            "null",
            "http://localhost:",
        ] {
            assert!(!origin_allowed(bad, &allowed), "{bad}");
        }
        assert!(origin_allowed("https://x.example", &["*".to_string()]));
    }

    #[test]
    fn model_names_compare_with_their_default_tag() {
        assert!(same_model("gemma3", "gemma3:latest"));
        assert!(!same_model("gemma3:1b", "gemma3"));
        let caller = Caller { models: vec!["tiny".into()], ..Caller::anonymous() };
        assert!(caller.check_model("tiny:latest").is_ok());
        assert!(caller.check_model("other").is_err());
    }
}
