//! The Pub/Sub channels this instance wants (its users', its groups', the broadcast one), and
//! what Redis has confirmed: the state each subscriber connection keeps in step with joins and
//! leaves.

use std::collections::{HashMap, HashSet};

use tokio::sync::oneshot;

/// A join or leave of one socket, for one channel (its user's or one of its groups').
pub enum Op {
    Acquire(String, oneshot::Sender<()>),
    Release(String),
    /// A cluster channel whose slot moved here, with its sockets; told once subscribed here.
    Adopt(String, u32, oneshot::Sender<()>),
    /// A cluster channel whose slot moved to another master.
    Forget(String),
}

#[derive(Default)]
pub struct Interest {
    /// Sockets per channel on this instance, as told by acquire/release.
    pub wanted: HashMap<String, u32>,
    /// Channels Redis has confirmed.
    pub subscribed: HashSet<String>,
    /// Channels whose subscription may differ from what is wanted.
    pub dirty: HashSet<String>,
    /// Channels whose UNSUBSCRIBE is on its way: no longer counted as subscribed, so a join
    /// meanwhile waits for a SUBSCRIBE sent after it.
    pub unsubscribing: HashSet<String>,
    /// Connects waiting for a channel's subscription to be confirmed.
    waiters: Vec<(String, oneshot::Sender<()>)>,
}

impl Interest {
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Acquire(user, tx) => {
                *self.wanted.entry(user.clone()).or_insert(0) += 1;
                if self.subscribed.contains(&user) {
                    let _ = tx.send(());
                } else {
                    self.dirty.insert(user.clone());
                    if self.waiters.len() > 64 + 2 * self.wanted.len() {
                        // Connects that gave up waiting (during an outage, say).
                        self.waiters.retain(|(_, tx)| !tx.is_closed());
                    }
                    self.waiters.push((user, tx));
                }
            }
            Op::Adopt(channel, sockets, tx) => {
                *self.wanted.entry(channel.clone()).or_insert(0) += sockets;
                self.dirty.insert(channel.clone());
                self.waiters.push((channel, tx));
            }
            Op::Forget(channel) => {
                self.wanted.remove(&channel);
                // Its waiting joins are let through: the channel is subscribed elsewhere now.
                self.waiters.retain(|(c, _)| *c != channel);
                self.dirty.insert(channel);
            }
            Op::Release(user) => {
                if let Some(count) = self.wanted.get_mut(&user) {
                    *count -= 1;
                    if *count == 0 {
                        self.wanted.remove(&user);
                        self.dirty.insert(user);
                    }
                }
            }
        }
    }

    /// A new connection has no subscriptions: every wanted one is to be made again.
    pub fn reset(&mut self) {
        self.subscribed.clear();
        self.unsubscribing.clear();
        self.dirty.extend(self.wanted.keys().cloned());
    }

    /// The channels to subscribe and to unsubscribe now, from what changed.
    pub fn changes(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for user in self.dirty.drain() {
            match (self.wanted.contains_key(&user), self.subscribed.contains(&user)) {
                (true, false) => subscribe.push(user),
                (false, true) => {
                    self.subscribed.remove(&user);
                    self.unsubscribing.insert(user.clone());
                    unsubscribe.push(user);
                }
                _ => {}
            }
        }
        (subscribe, unsubscribe)
    }

    /// Lets the connects through whose channel is subscribed now.
    pub fn answer_waiters(&mut self) {
        for (user, tx) in std::mem::take(&mut self.waiters) {
            if tx.is_closed() {
                continue;
            }
            if self.subscribed.contains(&user) {
                let _ = tx.send(());
            } else {
                self.waiters.push((user, tx));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_leave_unsubscribes_and_a_join_waits_for_confirmation() {
        let mut i = Interest::default();
        let (tx, mut rx) = oneshot::channel();
        i.apply(Op::Acquire("u".into(), tx));
        i.apply(Op::Acquire("u".into(), oneshot::channel().0));
        assert_eq!(i.changes(), (vec!["u".to_owned()], vec![]));
        i.answer_waiters();
        assert!(rx.try_recv().is_err(), "not confirmed yet");
        i.subscribed.insert("u".into());
        i.answer_waiters();
        assert!(rx.try_recv().is_ok());
        i.apply(Op::Release("u".into()));
        assert_eq!(i.changes(), (vec![], vec![]), "one socket is left");
        i.apply(Op::Release("u".into()));
        assert_eq!(i.changes(), (vec![], vec!["u".to_owned()]));
        i.reset();
        assert_eq!(i.changes(), (vec![], vec![]), "nothing wanted after the reset");
    }

    #[test]
    fn a_join_while_an_unsubscribe_is_on_its_way_waits_for_a_new_subscribe() {
        let mut i = Interest::default();
        i.apply(Op::Acquire("u".into(), oneshot::channel().0));
        i.changes();
        i.subscribed.insert("u".into());
        i.apply(Op::Release("u".into()));
        assert_eq!(i.changes(), (vec![], vec!["u".to_owned()]));
        let (tx, mut rx) = oneshot::channel();
        i.apply(Op::Acquire("u".into(), tx));
        i.answer_waiters();
        assert!(rx.try_recv().is_err(), "not answered while the UNSUBSCRIBE is on its way");
        assert_eq!(i.changes(), (vec!["u".to_owned()], vec![]), "subscribed again after it");
    }
}
