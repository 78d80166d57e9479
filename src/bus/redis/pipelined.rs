//! One pipelined connection to Redis (the server, the Sentinels' master, or one cluster node):
//! a batch's commands go out in one write and their replies are read in order, with no command
//! object, channel or task per command (a client library spent about 4 µs of CPU on each).
//!
//! A batch that fails for any reason drops the connection: replies still in flight must never
//! be taken for the next batch's. The next batch connects again (to whatever master the
//! Sentinels name by then); the caller retries the failed one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::address::{Access, Endpoint};
use super::link::{Link, LinkError};
use super::resp::{self, Value};

pub struct Pipelined {
    access: Access,
    /// One cluster node; `None`: where the URL leads (the server, the Sentinels' master).
    node: Option<Endpoint>,
    connection: Mutex<Option<Connection>>,
    /// When a connection was last made after one was lost (see `RESUBSCRIBE_SETTLE`).
    reconnected_at: std::sync::Mutex<Option<Instant>>,
    /// A batch has gone through on some connection before.
    ever_connected: AtomicBool,
}

struct Connection {
    link: Link,
    replies: BytesMut,
    /// A batch was written and not all its replies read: set before writing, cleared after the
    /// last reply. Still set at the next batch means the last caller stopped waiting half-way
    /// (its future was dropped): the connection is out of step and is dropped.
    busy: bool,
}

/// A batch's commands, RESP-encoded, and how many replies they get.
#[derive(Default)]
pub struct Pipeline {
    pub bytes: Vec<u8>,
    pub commands: usize,
}

impl Pipeline {
    pub fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        resp::command(&mut self.bytes, args);
        self.commands += 1;
    }
}

impl Pipelined {
    pub fn new(access: Access, node: Option<Endpoint>) -> Self {
        Self {
            access,
            node,
            connection: Mutex::new(None),
            reconnected_at: std::sync::Mutex::new(None),
            ever_connected: AtomicBool::new(false),
        }
    }

    pub fn reconnected_at(&self) -> Option<Instant> {
        *self.reconnected_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `pipeline` and returns one reply per command, in order (an error reply is a
    /// [`Value::Error`] in its place). Fails whole, within the command deadline, or not at all.
    pub async fn send(&self, pipeline: &Pipeline) -> Result<Vec<Value>, LinkError> {
        let mut guard = self.connection.lock().await;
        if guard.as_ref().is_some_and(|c| c.busy) {
            *guard = None;
        }
        let had_one = guard.is_some();
        let timeout = self.access.timeout;
        let result = tokio::time::timeout(timeout, async {
            if guard.is_none() {
                let link = match &self.node {
                    Some((host, port)) => self.access.node(host, *port).await?,
                    None => self.access.connect().await?,
                };
                *guard = Some(Connection { link, replies: BytesMut::with_capacity(16 << 10), busy: false });
            }
            let c = guard.as_mut().expect("connected above");
            c.busy = true;
            let lost = |e: std::io::Error, doing: &str| LinkError::Unreachable(format!("{doing} Redis: {e}"));
            c.link.write_all(&pipeline.bytes).await.map_err(|e| lost(e, "writing to"))?;
            let mut replies = Vec::with_capacity(pipeline.commands);
            while replies.len() < pipeline.commands {
                match resp::take(&mut c.replies).map_err(|e| LinkError::Unreachable(e.to_string()))? {
                    Some(value) => replies.push(value),
                    None => {
                        if c.link.read_buf(&mut c.replies).await.map_err(|e| lost(e, "reading from"))? == 0 {
                            return Err(LinkError::Unreachable("Redis closed the connection".to_owned()));
                        }
                    }
                }
            }
            c.busy = false;
            Ok(replies)
        })
        .await
        .unwrap_or_else(|_| Err(LinkError::Unreachable("Timeout Error: Redis did not answer in time".to_owned())));
        match &result {
            Err(_) => *guard = None,
            // The first connection ever is not a reconnection: Redis did not just lose the other
            // instances' subscriptions.
            Ok(_) if !had_one && self.ever_connected.swap(true, Ordering::AcqRel) => {
                *self.reconnected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            Ok(_) => {}
        }
        result
    }
}
