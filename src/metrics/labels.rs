//! The label values of the labelled metrics: why a record was dropped, why a socket was
//! refused, whom a notification was for.

use metrics::Counter;

/// Why a record (or one notification routed from it) was not delivered to the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The user had no socket on any instance.
    Offline,
    /// The record value was not valid JSON (or not UTF-8).
    BadJson,
    /// The record value was empty (a tombstone).
    Empty,
    /// No user id where the route looks for one.
    NoUserId,
    /// The user id was neither a non-empty string nor a number.
    BadUserId,
    /// A route script returned `()`.
    Filtered,
    /// A route script failed or hit a limit.
    ScriptError,
}

impl DropReason {
    pub const ALL: [DropReason; 7] =
        [Self::Offline, Self::BadJson, Self::Empty, Self::NoUserId, Self::BadUserId, Self::Filtered, Self::ScriptError];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::BadJson => "bad_json",
            Self::Empty => "empty",
            Self::NoUserId => "no_user_id",
            Self::BadUserId => "bad_user_id",
            Self::Filtered => "filtered",
            Self::ScriptError => "script_error",
        }
    }
}

/// Who a notification was addressed to: the label of the per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudienceKind {
    User,
    Group,
    Broadcast,
}

impl AudienceKind {
    pub const ALL: [AudienceKind; 3] = [Self::User, Self::Group, Self::Broadcast];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
            Self::Broadcast => "broadcast",
        }
    }
}

/// One counter per [`AudienceKind`], as the `kind` label.
pub struct PerKind(pub(super) [Counter; 3]);

impl PerKind {
    pub fn get(&self, kind: AudienceKind) -> &Counter {
        &self.0[kind as usize]
    }

    pub fn increment(&self, kind: AudienceKind, n: u64) {
        self.get(kind).increment(n);
    }
}

/// Why a socket was refused at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthRejection {
    MissingToken,
    InvalidToken,
    TokenExpired,
    Unauthorized,
    Unavailable,
    TooManyConnections,
    OriginNotAllowed,
    TooManyGroups,
}

impl AuthRejection {
    pub const ALL: [AuthRejection; 8] = [
        Self::MissingToken,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::Unauthorized,
        Self::Unavailable,
        Self::TooManyConnections,
        Self::OriginNotAllowed,
        Self::TooManyGroups,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "auth_unavailable",
            Self::TooManyConnections => "too_many_connections",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::TooManyGroups => "too_many_groups",
        }
    }
}
