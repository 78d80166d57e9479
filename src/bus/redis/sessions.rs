//! Sessions across instances on Redis: ending them (the revocation kept under
//! `redis.revoked_key`, for instances and reconnects that come later, and the control message
//! on the broadcast channel that every instance acts on, `subscriber::deliver_one`), and the
//! markers that cut a moving session's channels between its old instance and its new one.

use std::sync::Arc;
use std::time::Duration;

use super::nodes::Lane;
use super::resp::Value;
use super::{RedisBus, routed};
use crate::bus::envelope;
use crate::bus::outcome::BusError;

impl RedisBus {
    /// Records the revocation of `users`' tokens (for `ttl`) when asked, then tells every
    /// instance to end their sessions; returns how many instances heard it.
    pub async fn end_sessions(&self, users: &[String], revoked_at_ms: Option<i64>, ttl: Duration) -> Result<usize, BusError> {
        if let Some(at) = revoked_at_ms {
            // Recorded first: an instance that starts, or a client that reconnects, after the
            // message below finds it.
            let (at, ttl_ms) = (at.to_string(), ttl.as_millis().max(1).to_string());
            let sets: Vec<_> = users
                .iter()
                .map(|user| {
                    let key = self.revoked_key.channel(user).into_bytes();
                    routed(vec![b"SET".to_vec(), key, at.clone().into_bytes(), b"PX".to_vec(), ttl_ms.clone().into_bytes()])
                })
                .collect();
            for reply in self.run(&sets, Lane::Write).await? {
                reply.map_err(BusError)?;
            }
        }
        let message = envelope::encode_end_sessions(users, revoked_at_ms).into_bytes();
        let replies =
            self.pipeline(vec![vec![self.publish_verb().to_vec(), self.channels.broadcast().as_bytes().to_vec(), message]], 1).await?;
        match replies.into_iter().next() {
            Some(Ok(Value::Integer(n))) => Ok(n.max(0) as usize),
            Some(Ok(other)) => Err(BusError(format!("unexpected reply to a publish: {other:?}"))),
            Some(Err(e)) => Err(BusError(e)),
            None => Err(BusError("no reply to a publish".into())),
        }
    }

    /// Publishes a move's marker on `user`'s channel, each of `groups`' and the broadcast one.
    pub async fn publish_cut(&self, token: u64, user: &str, groups: &[Arc<str>]) -> Result<(), BusError> {
        let marker = envelope::encode_cut(token).into_bytes();
        let channels = std::iter::once(self.channels.user(user))
            .chain(groups.iter().map(|g| self.channels.group(g)))
            .chain(std::iter::once(self.channels.broadcast().to_owned()));
        let commands: Vec<_> = channels.map(|c| vec![self.publish_verb().to_vec(), c.into_bytes(), marker.clone()]).collect();
        let n = commands.len();
        for reply in self.pipeline(commands, n).await? {
            reply.map_err(BusError)?;
        }
        Ok(())
    }

    /// When `user`'s tokens were revoked, if that is still in force. While Redis is down this
    /// answers at once with an error (the caller goes by what its instance heard), so a
    /// connect never waits out a timeout for it.
    pub async fn revoked_at(&self, user: &str) -> Result<Option<i64>, BusError> {
        if !self.is_connected() {
            return Err(BusError("Redis is not connected".into()));
        }
        let get = [routed(vec![b"GET".to_vec(), self.revoked_key.channel(user).into_bytes()])];
        let value = self.run(&get, Lane::Read).await?.pop().unwrap_or_else(|| Err("no reply".into())).map_err(BusError)?;
        Ok(value.as_str().and_then(|s| s.parse().ok()))
    }
}
