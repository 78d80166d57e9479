//! The bus's inbound side: what it hands each notification that arrives to. The bus defines it
//! and the gateway implements it (`gateway::Deliverer`), so the bus never depends on sockets;
//! `app` connects the two.

pub use super::envelope::Arrival;
use super::envelope::Relayed;
use crate::metrics::AudienceKind;
use crate::replay::NotificationId;

/// Whom a live notification goes to on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee<'a> {
    User(&'a str),
    /// `among`: every group the notification's record addressed, when more than one; a socket
    /// in several takes it from the first of them only, so it gets it once.
    Group {
        name: &'a str,
        among: &'a [&'a str],
    },
    Everyone,
}

impl Addressee<'_> {
    /// The `kind` label of the delivered counter.
    pub fn kind(&self) -> AudienceKind {
        match self {
            Addressee::User(_) => AudienceKind::User,
            Addressee::Group { .. } => AudienceKind::Group,
            Addressee::Everyone => AudienceKind::Broadcast,
        }
    }
}

/// The sockets of this instance, as the bus sees them.
pub trait Inbound: Send + Sync {
    /// Emits `n` (with `{"id": id}` as a second argument, for receipts, and its
    /// `traceparent` there when it has one) to every local socket of `to`; returns how many it
    /// reached.
    fn deliver(&self, to: Addressee<'_>, n: &Arrival<'_>, id: Option<&str>) -> usize;

    /// Emits a retained notification, stored as `id`, to every local socket of `user`, after
    /// any replay in progress on each.
    fn deliver_retained(&self, user: &str, id: NotificationId, n: &Arrival<'_>) -> usize;

    /// Sockets of `user` here (the in-process bus's presence answer).
    fn sockets_of(&self, user: &str) -> usize;

    /// Sockets of members of `group` here.
    fn sockets_in_group(&self, group: &str) -> usize;

    /// Ends every local socket of `users` (the clients see a server disconnect), and with
    /// `revoked_at_ms` remembers that their tokens issued before then are refused; returns how
    /// many sockets it ended.
    fn end_sessions(&self, users: &[&str], revoked_at_ms: Option<i64>) -> usize;
    /// A message on this instance's own channel: a request forwarded here, or an answer.
    fn relayed(&self, _message: Relayed) {}

    /// The marker `token` of a moving session passed on `on`'s channel (see
    /// [`super::envelope::encode_cut`]).
    fn cut(&self, _on: Addressee<'_>, _token: u64) {}
}

/// No sockets at all: for driving the bus without a gateway (benchmarks, tests).
pub struct Nobody;

impl Inbound for Nobody {
    fn deliver(&self, _: Addressee<'_>, _: &Arrival<'_>, _: Option<&str>) -> usize {
        0
    }

    fn deliver_retained(&self, _: &str, _: NotificationId, _: &Arrival<'_>) -> usize {
        0
    }

    fn sockets_of(&self, _: &str) -> usize {
        0
    }

    fn sockets_in_group(&self, _: &str) -> usize {
        0
    }

    fn end_sessions(&self, _: &[&str], _: Option<i64>) -> usize {
        0
    }
}
