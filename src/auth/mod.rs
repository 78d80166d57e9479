//! Authentication: turns the token a client presents into the user id it may listen as, by
//! local JWT verification, an optional user-check endpoint, or both.
//!
//! It owns the cryptography, the key sources (secret, PEM file, JWKS) and the check endpoint;
//! it does not know about sockets (the gateway maps an [`AuthError`] to the `connect_error` a
//! client sees, and owns connection limits and token lifetime).

mod check;
mod identity;
mod jwks;
mod jwt;

pub use identity::{AuthError, Identity, groups_from_json, user_id_from_json};

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

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
