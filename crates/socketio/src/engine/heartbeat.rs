//! The heartbeat: one task and a timer wheel for every session's pings, ping timeouts and join
//! timeout, instead of a timer (and a task to poll it) per session.
//!
//! A session is in the wheel once per pending visit, as a weak reference: a closed session
//! costs nothing but its slot until its visit comes round.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::options::Options;
use super::stats::CloseReason;

/// What the heartbeat asks of a session (the engine's sessions implement it).
pub(super) trait Beating: Send + Sync + 'static {
    fn is_closed(&self) -> bool;
    /// The layer above joined the session.
    fn joined(&self) -> bool;
    /// Sends a ping due at `due_ms` and awaits its pong; `false` if it could not go out.
    fn ping(self: &Arc<Self>, due_ms: u64) -> bool;
    fn awaiting_pong(&self) -> bool;
    /// When the last pong came (or the session opened), on the wheel's clock.
    fn last_pong_ms(&self) -> u64;
    fn set_last_pong_ms(&self, ms: u64);
    fn close(self: &Arc<Self>, reason: CloseReason);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Visit {
    /// Time to send a ping.
    Ping,
    /// The pong for the last ping is due.
    PongDue,
    /// The layer above must have joined the session by now.
    JoinDue,
}

/// A session's next heartbeat visit, in its slot of the wheel.
struct Timer<S> {
    session: Weak<S>,
    due_ms: u64,
    visit: Visit,
}

pub(super) struct Wheel<S> {
    started: Instant,
    tick_ms: u64,
    slots: Mutex<Vec<Vec<Timer<S>>>>,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    join_timeout_ms: Option<u64>,
}

impl<S: Beating> Wheel<S> {
    pub(super) fn new(options: &Options) -> Self {
        let ms = |d: Duration| d.as_millis().max(1) as u64;
        let (interval, timeout) = (ms(options.ping_interval), ms(options.ping_timeout));
        let join = options.join_timeout.map(ms);
        // Fine enough that a visit is at most a fortieth of the shortest period late (between 5
        // and 250 ms), with slots for the longest period so most visits are due when reached.
        let shortest = interval.min(timeout).min(join.unwrap_or(u64::MAX));
        let tick_ms = (shortest / 40).clamp(5, 250);
        let longest = interval.max(timeout).max(join.unwrap_or(0));
        let slots = (longest / tick_ms + 2) as usize;
        Self {
            started: Instant::now(),
            tick_ms,
            slots: Mutex::new((0..slots).map(|_| Vec::new()).collect()),
            ping_interval_ms: interval,
            ping_timeout_ms: timeout,
            join_timeout_ms: join,
        }
    }

    /// Milliseconds since the engine started: the wheel's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn schedule(&self, session: &Arc<S>, due_ms: u64, visit: Visit) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let n = slots.len() as u64;
        // Never into a slot the task may have passed already this tick.
        let tick = due_ms.div_ceil(self.tick_ms).max(self.now_ms() / self.tick_ms + 1);
        let slot = (tick % n) as usize;
        slots[slot].push(Timer { session: Arc::downgrade(session), due_ms, visit });
    }

    /// A new session: its first ping after one interval, and its join deadline.
    pub(super) fn opened(&self, session: &Arc<S>) {
        let now = self.now_ms();
        session.set_last_pong_ms(now);
        self.schedule(session, now + self.ping_interval_ms, Visit::Ping);
        if let Some(join) = self.join_timeout_ms {
            self.schedule(session, now + join, Visit::JoinDue);
        }
    }

    /// Takes every timer due by `now_ms` from the slots the clock passed since `last_tick`.
    fn due(&self, last_tick: &mut u64, now_ms: u64) -> Vec<Timer<S>> {
        let mut due = Vec::new();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let n = slots.len() as u64;
        let now_tick = now_ms / self.tick_ms;
        // After a long stall, one turn of the wheel covers every slot.
        let first = (*last_tick + 1).max(now_tick.saturating_sub(n - 1));
        for tick in first..=now_tick {
            let slot = &mut slots[(tick % n) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].due_ms <= now_ms {
                    due.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if slot.is_empty() {
                *slot = Vec::new();
            }
        }
        *last_tick = now_tick;
        due
    }

    /// Visits a session whose `visit` was due at `due_ms`. Deadlines run from when a visit was
    /// due, not from when the tick got to it, so the wheel's granularity never lengthens them.
    fn visit(&self, session: &Arc<S>, visit: Visit, due_ms: u64, now_ms: u64) {
        if session.is_closed() {
            return;
        }
        match visit {
            Visit::Ping => {
                if session.ping(due_ms) {
                    self.schedule(session, due_ms + self.ping_timeout_ms, Visit::PongDue);
                }
            }
            Visit::PongDue if session.awaiting_pong() => session.close(CloseReason::PingTimeout),
            Visit::PongDue => {
                // Engine.IO pings again one interval after the pong.
                let pong = session.last_pong_ms();
                self.schedule(session, (pong + self.ping_interval_ms).max(now_ms), Visit::Ping);
            }
            Visit::JoinDue if !session.joined() => session.close(CloseReason::JoinTimeout),
            Visit::JoinDue => {}
        }
    }
}

/// The heartbeat task of the `wheel` an `engine` holds: ends when the engine is gone, which a
/// tick keeps alive while it visits.
pub(super) async fn run<E, S: Beating>(engine: Weak<E>, wheel: fn(&E) -> &Wheel<S>) {
    let tick = match engine.upgrade() {
        Some(e) => Duration::from_millis(wheel(&e).tick_ms),
        None => return,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = 0;
    loop {
        interval.tick().await;
        let Some(engine) = engine.upgrade() else { return };
        let wheel = wheel(&engine);
        let now = wheel.now_ms();
        for timer in wheel.due(&mut last_tick, now) {
            if let Some(session) = timer.session.upgrade() {
                wheel.visit(&session, timer.visit, timer.due_ms, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_follows_the_shortest_period() {
        let fast = Options { ping_interval: Duration::from_millis(300), ping_timeout: Duration::from_millis(200), ..Default::default() };
        let w = Wheel::<crate::engine::Session<crate::engine::tests::Nothing>>::new(&fast);
        assert_eq!(w.tick_ms, 5);
        let slow = Options::default();
        let w = Wheel::<crate::engine::Session<crate::engine::tests::Nothing>>::new(&slow);
        assert_eq!(w.tick_ms, 250);
        assert_eq!(w.slots.lock().unwrap().len(), 25_000 / 250 + 2);
    }
}
