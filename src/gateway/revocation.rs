//! Revoked sessions as this instance knows them: for each user whose sessions were ended with
//! `revoke_tokens`, the moment of it, kept for `auth.revocation_ttl_secs` (the longest a token
//! lives). Learnt from the bus's end-of-session messages, so every running instance refuses old
//! tokens at once, even while Redis is unreachable; instances started later ask Redis, where
//! the bus keeps the same record for as long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::{AuthError, Identity};

pub struct Revocations {
    /// User -> (revoked at, in ms since the epoch; forgotten at).
    revoked: Mutex<HashMap<String, (i64, Instant)>>,
    ttl: Duration,
}

impl Revocations {
    pub fn new(ttl: Duration) -> Self {
        Self { revoked: Mutex::new(HashMap::new()), ttl }
    }

    /// How long a revocation is kept (here and in Redis).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn record(&self, user: &str, at_ms: i64) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        revoked.retain(|_, (_, until)| *until > now);
        let entry = revoked.entry(user.to_owned()).or_insert((at_ms, now + self.ttl));
        *entry = (entry.0.max(at_ms), now + self.ttl);
    }

    /// When `user`'s tokens were last revoked, if that is still in force.
    pub fn revoked_at(&self, user: &str) -> Option<i64> {
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.get(user).filter(|(_, until)| *until > Instant::now()).map(|(at, _)| *at)
    }
}

/// Whether `identity`'s token predates a revocation at `revoked_at_ms`. Whole seconds: a token
/// issued in the second of the revocation is refused too (its `iat` cannot say which came
/// first), and one without `iat` cannot show it is newer.
pub fn check(identity: &Identity, revoked_at_ms: Option<i64>) -> Result<(), AuthError> {
    match (revoked_at_ms, identity.issued_at) {
        (None, _) => Ok(()),
        (Some(at), Some(iat)) if (iat as i64) * 1000 > at - at.rem_euclid(1000) => Ok(()),
        (Some(_), _) => Err(AuthError::TokenRevoked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(iat: Option<u64>) -> Identity {
        Identity { user_id: "u".into(), expires_at: None, issued_at: iat, groups: Vec::new() }
    }

    #[test]
    fn tokens_from_before_the_second_of_a_revocation_are_refused() {
        let at = 1_700_000_000_500;
        assert_eq!(check(&issued(Some(1_699_999_999)), Some(at)), Err(AuthError::TokenRevoked));
        assert_eq!(check(&issued(Some(1_700_000_000)), Some(at)), Err(AuthError::TokenRevoked), "the same second");
        assert_eq!(check(&issued(Some(1_700_000_001)), Some(at)), Ok(()));
        assert_eq!(check(&issued(None), Some(at)), Err(AuthError::TokenRevoked), "no iat: cannot show it is newer");
        assert_eq!(check(&issued(None), None), Ok(()));
    }

    #[test]
    fn a_revocation_is_kept_for_its_lifetime_and_the_latest_wins() {
        let r = Revocations::new(Duration::from_secs(60));
        assert_eq!(r.revoked_at("u"), None);
        r.record("u", 2_000);
        r.record("u", 1_000);
        assert_eq!(r.revoked_at("u"), Some(2_000));
        let gone = Revocations::new(Duration::ZERO);
        gone.record("u", 1);
        assert_eq!(gone.revoked_at("u"), None);
    }
}
