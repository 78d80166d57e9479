//! The unit that flows from route to bus to gateway: one notification, for one audience (a
//! user, a group, everyone). A shared module: routing makes it, the bus carries it, the gateway
//! emits it.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::metrics::AudienceKind;
use crate::telemetry::TraceContext;

/// Who one notification is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every socket of one user.
    User(String),
    /// Every socket whose identity names the group. `among` lists all the groups the record
    /// addressed, when more than one: a socket in several of them takes the notification from
    /// the first of those only, so it gets it once although one message goes to each group.
    Group { name: String, among: Option<Arc<[String]>> },
    /// Every socket on every instance.
    Broadcast,
}

impl Audience {
    pub fn kind(&self) -> AudienceKind {
        match self {
            Audience::User(_) => AudienceKind::User,
            Audience::Group { .. } => AudienceKind::Group,
            Audience::Broadcast => AudienceKind::Broadcast,
        }
    }

    /// The user, for a notification to one user.
    pub fn user(&self) -> Option<&str> {
        match self {
            Audience::User(u) => Some(u),
            _ => None,
        }
    }

    /// One notification per group, each naming the others (see [`Audience::Group`]); the
    /// groups deduplicated, in the order given.
    pub fn groups(mut names: Vec<String>) -> Vec<Audience> {
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let among: Option<Arc<[String]>> = (names.len() > 1).then(|| names.clone().into());
        names.into_iter().map(|name| Audience::Group { name, among: among.clone() }).collect()
    }
}

/// One notification for one audience, ready for the bus.
#[derive(Debug, Clone)]
pub struct Notification {
    pub to: Audience,
    pub event: Arc<str>,
    /// The payload as JSON text, kept raw so it is serialised once and never re-parsed.
    pub payload: Box<RawValue>,
    /// When the record was produced, for the end-to-end latency histogram.
    pub timestamp_ms: i64,
    /// When herald took the record from Kafka (or the publish API accepted it), microseconds
    /// since the epoch, for the histogram of herald's own latency; 0 if unknown.
    pub consumed_us: i64,
    /// Keep it in the user's history for replay (the topic has `retain: true`). Only ever set
    /// for a user's notification: groups and broadcasts are live only.
    pub retain: bool,
    /// For a notification routed from a record: `topic/partition/offset/index`, its id for
    /// receipts and the offline hand-off's headers, kept with it in the history so a store
    /// retried after a lost reply finds it there instead of storing it twice. None from the
    /// publish API, whose requests have no such identity.
    pub origin: Option<Box<str>>,
    /// The W3C trace context it carries on to the client (its record's, or herald's span's).
    pub trace: Option<Arc<TraceContext>>,
}

impl Notification {
    /// A live notification to `to`, with no origin.
    pub fn new(to: Audience, event: Arc<str>, payload: Box<RawValue>, timestamp_ms: i64) -> Self {
        Self { to, event, payload, timestamp_ms, consumed_us: 0, retain: false, origin: None, trace: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_deduplicated_and_name_each_other() {
        let a = Audience::groups(vec!["a".into(), "b".into(), "a".into()]);
        let among: Arc<[String]> = vec!["a".to_owned(), "b".to_owned()].into();
        assert_eq!(
            a,
            [Audience::Group { name: "a".into(), among: Some(among.clone()) }, Audience::Group { name: "b".into(), among: Some(among) }]
        );
        assert_eq!(Audience::groups(vec!["x".into()]), [Audience::Group { name: "x".into(), among: None }]);
        assert_eq!(Audience::User("u".into()).user(), Some("u"));
        assert_eq!(Audience::Broadcast.kind(), AudienceKind::Broadcast);
    }
}
