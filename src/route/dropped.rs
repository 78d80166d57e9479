//! Why a record, or one notification routed from it, was not delivered to the bus: the
//! `reason` label of `herald_records_dropped_total`.

use crate::metrics::LabelValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The user had no socket on any instance (the bus's answer, counted by the source).
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

impl LabelValue for DropReason {
    const KEY: &'static str = "reason";
    const ALL: &'static [Self] =
        &[Self::Offline, Self::BadJson, Self::Empty, Self::NoUserId, Self::BadUserId, Self::Filtered, Self::ScriptError];

    fn as_label(self) -> &'static str {
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

    fn index(self) -> usize {
        self as usize
    }
}
