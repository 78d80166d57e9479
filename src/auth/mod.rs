//! Authentication: turns the token a client presents into the user id it may listen as, by
//! local JWT verification, an optional user-check endpoint, or both.
//!
//! It owns the cryptography, the key sources (secret, PEM file, JWKS) and the check endpoint;
//! it does not know about sockets (the gateway maps an [`AuthError`] to the `connect_error` a
//! client sees, and owns connection limits and token lifetime).

mod check;
mod jwks;
mod jwt;

use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::metrics::{LabelValue, Metrics};

/// Why a connection or a refresh was refused. `Display` is the short, fixed text the client
/// sees: library error text and token contents never leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    /// The user-check endpoint said no (401/403).
    #[error("unauthorized")]
    Unauthorized,
    /// The user-check endpoint could not answer (timeout, connection error, 5xx): fail closed.
    #[error("auth unavailable")]
    Unavailable,
    #[error("too many connections")]
    TooManyConnections,
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The identity names more groups than `auth.max_groups_per_socket`.
    #[error("too many groups")]
    TooManyGroups,
    /// The user's sessions were ended with `revoke_tokens` after this token was issued.
    #[error("token revoked")]
    TokenRevoked,
}

/// The `reason` label of `herald_gateway_auth_rejections_total`.
impl LabelValue for AuthError {
    const KEY: &'static str = "reason";
    const ALL: &'static [Self] = &[
        Self::MissingToken,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::Unauthorized,
        Self::Unavailable,
        Self::TooManyConnections,
        Self::OriginNotAllowed,
        Self::TooManyGroups,
        Self::TokenRevoked,
    ];

    fn as_label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "auth_unavailable",
            Self::TooManyConnections => "too_many_connections",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::TooManyGroups => "too_many_groups",
            Self::TokenRevoked => "token_revoked",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// `exp` in seconds since the epoch, when the token has one.
    pub expires_at: Option<u64>,
    /// `iat` in seconds since the epoch, when the token has one: tokens issued before a user's
    /// sessions were revoked are refused.
    pub issued_at: Option<u64>,
    /// The groups it belongs to (`auth.jwt.groups_claim`, `auth.check.groups_pointer`, or
    /// both, merged), sorted, without repeats.
    pub groups: Vec<String>,
}

/// Every configured way of checking a token, applied in order: JWT, then the check endpoint.
pub struct Authenticator {
    jwt: Option<jwt::JwtVerifier>,
    check: Option<check::UserCheck>,
}

impl Authenticator {
    /// Loads keys; fails on an unreadable or unparsable key file. JWKS are fetched later.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let jwt = config.auth.jwt.is_enabled().then(|| jwt::JwtVerifier::new(config, metrics.clone())).transpose()?;
        let check = config.auth.check.as_ref().map(|c| check::UserCheck::new(c, metrics)).transpose()?;
        Ok(Self { jwt, check })
    }

    /// Starts background work (JWKS refresh).
    pub fn start(&self, supervisor: &crate::supervise::Supervisor) {
        if let Some(jwt) = &self.jwt {
            jwt.start(supervisor);
        }
    }

    /// What it reads from files while running (the JWT public key), for the watcher.
    pub fn reloadables(&self) -> Vec<Arc<dyn crate::watch::Reloadable>> {
        let key = self.jwt.as_ref().and_then(|jwt| jwt.key_file());
        key.into_iter().map(|k| k as Arc<dyn crate::watch::Reloadable>).collect()
    }

    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let verified = match &self.jwt {
            Some(jwt) => Some(jwt.verify(token).await?),
            None => None,
        };
        let checked = match &self.check {
            Some(check) => Some(check.check(token).await?),
            None => None,
        };
        let mut identity = match (verified, checked) {
            // The endpoint vouches for a user: it must be the token's.
            (Some(identity), Some(check::Checked { user: Some(user), .. })) if user != identity.user_id => {
                return Err(AuthError::Unauthorized);
            }
            (Some(mut identity), Some(checked)) => {
                identity.groups.extend(checked.groups);
                identity
            }
            (Some(identity), None) => identity,
            (None, Some(check::Checked { user: Some(user_id), groups })) => Identity { user_id, expires_at: None, issued_at: None, groups },
            (None, _) => return Err(AuthError::Unauthorized),
        };
        identity.groups.sort_unstable();
        identity.groups.dedup();
        Ok(identity)
    }
}

/// Group names: one name (as a user id is read) or an array of them; `None` for anything else.
pub fn groups_from_json(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => items.iter().map(user_id_from_json).collect(),
        one => user_id_from_json(one).map(|g| vec![g]),
    }
}

/// A user id is a non-empty string or an integer; anything else identifies no one.
pub fn user_id_from_json(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_fixed() {
        let texts: Vec<String> = [
            AuthError::MissingToken,
            AuthError::InvalidToken,
            AuthError::TokenExpired,
            AuthError::Unauthorized,
            AuthError::Unavailable,
            AuthError::TooManyConnections,
            AuthError::OriginNotAllowed,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            texts,
            [
                "missing token",
                "invalid token",
                "token expired",
                "unauthorized",
                "auth unavailable",
                "too many connections",
                "origin not allowed"
            ]
        );
    }

    #[test]
    fn user_ids_are_strings_or_integers() {
        assert_eq!(user_id_from_json(&serde_json::json!("u1")).as_deref(), Some("u1"));
        assert_eq!(user_id_from_json(&serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(user_id_from_json(&serde_json::json!("")), None);
        assert_eq!(user_id_from_json(&serde_json::json!(1.5)), None);
        assert_eq!(user_id_from_json(&serde_json::json!(null)), None);
    }
}
