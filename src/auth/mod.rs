//! Token verification: turns the token a client presents into the user id it may listen as.
//!
//! It owns the cryptographic check and the claim rules; it does not know about sockets (the
//! gateway maps an [`AuthError`] to the `connect_error` a client sees).

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::config::JwtConfig;
use crate::metrics::AuthRejection;

/// Why a token was refused. `Display` is the short, fixed text the client sees: library error
/// text never leaves the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
}

impl AuthError {
    pub fn rejection(self) -> AuthRejection {
        match self {
            Self::MissingToken => AuthRejection::MissingToken,
            Self::InvalidToken => AuthRejection::InvalidToken,
            Self::TokenExpired => AuthRejection::TokenExpired,
        }
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// `exp` in seconds since the epoch, when the token has one.
    pub expires_at: Option<u64>,
}

/// Verifies JWTs against one key and an explicit algorithm allow-list.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    user_id_claim: String,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> anyhow::Result<Self> {
        let secret = config.secret.as_deref().unwrap_or_default();
        let mut validation = Validation::new(*config.algorithms.first().unwrap_or(&Algorithm::HS256));
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        validation.validate_aud = !config.audiences.is_empty();
        if !config.audiences.is_empty() {
            validation.set_audience(&config.audiences);
        }
        if !config.issuers.is_empty() {
            validation.set_issuer(&config.issuers);
        }
        Ok(Self { key: DecodingKey::from_secret(secret.as_bytes()), validation, user_id_claim: config.user_id_claim.clone() })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        })?;
        let claims = data.claims;
        let user_id = claims.get(&self.user_id_claim).and_then(user_id_from_json).ok_or(AuthError::InvalidToken)?;
        Ok(Identity { user_id, expires_at: claims.get("exp").and_then(Value::as_u64) })
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
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn config() -> JwtConfig {
        JwtConfig {
            secret: Some("s3cret".into()),
            algorithms: vec![Algorithm::HS256],
            user_id_claim: "sub".into(),
            leeway_secs: 0,
            issuers: vec![],
            audiences: vec![],
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(claims: Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn accepts_a_valid_token_with_string_or_numeric_user() {
        let v = Verifier::new(&config()).unwrap();
        let id = v.verify(&sign(json!({"sub": "u42", "exp": now() + 60}), "s3cret")).unwrap();
        assert_eq!(id.user_id, "u42");
        assert_eq!(v.verify(&sign(json!({"sub": 42, "exp": now() + 60}), "s3cret")).unwrap().user_id, "42");
    }

    #[test]
    fn refuses_bad_tokens_with_fixed_reasons() {
        let v = Verifier::new(&config()).unwrap();
        assert_eq!(v.verify(""), Err(AuthError::MissingToken));
        assert_eq!(v.verify("garbage"), Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&sign(json!({"sub": "u", "exp": now() + 60}), "wrong")), Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&sign(json!({"sub": "u", "exp": now() - 60}), "s3cret")), Err(AuthError::TokenExpired));
        assert_eq!(v.verify(&sign(json!({"sub": "u", "exp": now() + 60, "nbf": now() + 600}), "s3cret")), Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&sign(json!({"sub": "u"}), "s3cret")), Err(AuthError::InvalidToken), "exp is required");
        assert_eq!(v.verify(&sign(json!({"exp": now() + 60}), "s3cret")), Err(AuthError::InvalidToken), "no user id");
        assert_eq!(v.verify(&sign(json!({"sub": 1.5, "exp": now() + 60}), "s3cret")), Err(AuthError::InvalidToken));
    }

    #[test]
    fn error_text_is_fixed() {
        assert_eq!(AuthError::MissingToken.to_string(), "missing token");
        assert_eq!(AuthError::InvalidToken.to_string(), "invalid token");
        assert_eq!(AuthError::TokenExpired.to_string(), "token expired");
    }
}
