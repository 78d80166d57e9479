//! What authentication yields: the [`Identity`] a verified token grants, or the [`AuthError`]
//! it was refused with, and how user ids and groups are read from JSON (claims, the check
//! endpoint's answer). Every way of checking a token shares these.

use serde_json::Value;

use crate::metrics::LabelValue;

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
