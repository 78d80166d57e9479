//! The `auth` section: JWT verification, the user check, socket limits and groups.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::server::check_event_name;
use super::walk::{Walk, one_of, ranged, secs};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
    /// The optional user-check endpoint, asked whether a token's user may connect.
    pub check: Option<CheckConfig>,
    /// Event told to a socket whose token expired, just before it is disconnected. Default `auth_expired`.
    pub expired_event: String,
    /// Event a client emits with a fresh token to stay connected. Default `auth_refresh`.
    pub refresh_event: String,
    /// Sockets one user may hold on one instance; 0 is unlimited. Default 0.
    pub max_sockets_per_user: u32,
    /// What happens to the socket over `max_sockets_per_user`. Default `refuse_new`.
    pub per_user_limit: PerUserLimit,
    /// Sockets one instance accepts; 0 is unlimited. Default 0.
    pub max_sockets: u32,
    /// Origins allowed to connect (CORS for polling, the Origin header for WebSocket); empty
    /// allows any. Default empty.
    pub allowed_origins: Vec<String>,
    /// Groups one socket may belong to; a token naming more is refused. Default 100.
    pub max_groups_per_socket: usize,
    /// How long a token revocation (`POST /api/disconnect` with `revoke_tokens`) is kept: the
    /// longest a token issued before it may still be valid. Default 86400 s.
    pub revocation_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerUserLimit {
    /// The new connection gets `connect_error` `too many connections`.
    RefuseNew,
    /// The user's oldest socket is disconnected to make room.
    DisconnectOldest,
}

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub url: String,
    /// `GET` (default) or `POST`.
    pub method: String,
    /// Header carrying the token. Default `Authorization`.
    pub header: String,
    /// Prefix of the header value; empty sends the bare token. Default `Bearer`.
    pub scheme: String,
    /// Default 2000 ms.
    pub timeout: Duration,
    /// How long an answer is reused for the same token. Default 60 s; 0 disables the cache.
    pub cache_ttl: Duration,
    /// JSON pointer to the user id in the response body; required without JWT verification.
    pub user_id_pointer: Option<String>,
    /// JSON pointer to the user's groups (an array of strings) in the response body.
    pub groups_pointer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Shared secret for the HS algorithms.
    pub secret: Option<String>,
    /// PEM public key for the RS, PS, ES and EdDSA algorithms.
    pub public_key_file: Option<PathBuf>,
    /// JWKS endpoint for the RS, PS, ES and EdDSA algorithms.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again. Default 300 s.
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s. Default 10 s.
    pub jwks_min_refetch: Duration,
    /// Deadline of one JWKS fetch. Default 2000 ms.
    pub jwks_timeout: Duration,
    /// Accepted algorithms. Default `[HS256]`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Claim that holds the user id (string or number). Default `sub`.
    pub user_id_claim: String,
    /// Claim that holds the user's groups (an array of strings); `None`: tokens name no groups.
    pub groups_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default 5 s.
    pub leeway_secs: u64,
    /// Accepted issuers; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty accepts any.
    pub audiences: Vec<String>,
}

pub(super) fn is_hmac(alg: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(alg, HS256 | HS384 | HS512)
}

pub(super) fn read_auth(walk: &mut Walk, v: Option<&Value>) -> AuthConfig {
    walk.section(v, "auth", |walk, s| {
        let jwt = read_jwt(walk, s.raw("jwt"));
        let check = s.raw("check").map(|c| read_check(walk, c));
        let expired_event: String = walk.get(s, "expired_event", "auth_expired".into());
        check_event_name(walk, &s.path("expired_event"), &expired_event);
        let refresh_event: String = walk.get(s, "refresh_event", "auth_refresh".into());
        check_event_name(walk, &s.path("refresh_event"), &refresh_event);
        let max_sockets_per_user = walk.get(s, "max_sockets_per_user", 0u32);
        let per_user_limit = one_of(
            walk,
            s,
            "per_user_limit",
            &[("refuse_new", PerUserLimit::RefuseNew), ("disconnect_oldest", PerUserLimit::DisconnectOldest)],
        );
        let max_sockets = walk.get(s, "max_sockets", 0u32);
        let allowed_origins: Vec<String> = walk.get(s, "allowed_origins", Vec::new());
        for (i, origin) in allowed_origins.iter().enumerate() {
            if origin.parse::<http::HeaderValue>().is_err() || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                walk.error(
                    format!("auth.allowed_origins[{i}]"),
                    format!("expected an origin such as https://app.example.com, found `{origin}`"),
                );
            }
        }
        let max_groups_per_socket = ranged(walk, s, "max_groups_per_socket", 100usize, 1..=10_000);
        let revocation_ttl = secs(walk, s, "revocation_ttl_secs", 86_400, 1..=366 * 86_400);
        AuthConfig {
            revocation_ttl,
            jwt,
            check,
            expired_event,
            refresh_event,
            max_sockets_per_user,
            per_user_limit,
            max_sockets,
            allowed_origins,
            max_groups_per_socket,
        }
    })
}

pub(super) fn read_check(walk: &mut Walk, v: &Value) -> CheckConfig {
    walk.section(Some(v), "auth.check", |walk, s| {
        let url: String = walk.get(s, "url", String::new());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            walk.error(s.path("url"), "required: an http:// or https:// URL");
        }
        let method = walk.get::<String>(s, "method", "GET".into()).to_ascii_uppercase();
        if method != "GET" && method != "POST" {
            walk.error(s.path("method"), format!("expected GET or POST, found `{method}`"));
        }
        let header: String = walk.get(s, "header", "Authorization".into());
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            walk.error(s.path("header"), format!("`{header}` is not a valid header name"));
        }
        let scheme: String = walk.get(s, "scheme", "Bearer".into());
        let timeout = Duration::from_millis(ranged(walk, s, "timeout_ms", 2000u64, 10..=60_000));
        let cache_ttl = Duration::from_secs(ranged(walk, s, "cache_ttl_secs", 60u64, 0..=86_400));
        let user_id_pointer = walk.opt::<String>(s, "user_id_pointer");
        if let Some(p) = &user_id_pointer
            && !p.starts_with('/')
        {
            walk.error(s.path("user_id_pointer"), format!("expected a JSON pointer such as /userId, found `{p}`"));
        }
        let groups_pointer = walk.opt::<String>(s, "groups_pointer");
        if let Some(p) = &groups_pointer
            && !p.starts_with('/')
        {
            walk.error(s.path("groups_pointer"), format!("expected a JSON pointer such as /groups, found `{p}`"));
        }
        CheckConfig { url, method, header, scheme, timeout, cache_ttl, user_id_pointer, groups_pointer }
    })
}

pub(super) fn read_jwt(walk: &mut Walk, v: Option<&Value>) -> JwtConfig {
    walk.section(v, "auth.jwt", |walk, j| {
        let secret = walk.opt::<String>(j, "secret").filter(|s| !s.is_empty());
        let public_key_file = walk.opt::<String>(j, "public_key_file").filter(|s| !s.is_empty()).map(PathBuf::from);
        let jwks_url = walk.opt::<String>(j, "jwks_url").filter(|s| !s.is_empty());
        if let Some(u) = &jwks_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            walk.error(j.path("jwks_url"), "expected an http:// or https:// URL");
        }
        let jwks_refresh = secs(walk, j, "jwks_refresh_secs", 300, 1..=86_400);
        let jwks_min_refetch = secs(walk, j, "jwks_min_refetch_secs", 10, 0..=3600);
        let jwks_timeout = Duration::from_millis(ranged(walk, j, "jwks_timeout_ms", 2000u64, 10..=60_000));
        let names: Vec<String> = walk.get(j, "algorithms", vec!["HS256".into()]);
        let mut algorithms = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match name.parse::<jsonwebtoken::Algorithm>() {
                Ok(a) => algorithms.push(a),
                Err(_) => walk.error(format!("auth.jwt.algorithms[{i}]"), format!("unknown algorithm `{name}`")),
            }
        }
        if names.is_empty() {
            walk.error(j.path("algorithms"), "must list at least one algorithm");
        }
        let user_id_claim: String = walk.get(j, "user_id_claim", "sub".into());
        if user_id_claim.is_empty() {
            walk.error(j.path("user_id_claim"), "must not be empty");
        }
        let groups_claim = walk.opt::<String>(j, "groups_claim").filter(|c| !c.is_empty());
        let leeway_secs = ranged(walk, j, "leeway_secs", 5u64, 0..=3600);
        let issuers = walk.get(j, "issuers", Vec::new());
        let audiences = walk.get(j, "audiences", Vec::new());
        JwtConfig {
            secret,
            public_key_file,
            jwks_url,
            jwks_refresh,
            jwks_min_refetch,
            jwks_timeout,
            algorithms,
            user_id_claim,
            groups_claim,
            leeway_secs,
            issuers,
            audiences,
        }
    })
}

impl JwtConfig {
    /// Whether tokens are verified locally: some key source is configured.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() || self.public_key_file.is_some() || self.jwks_url.is_some()
    }
}
