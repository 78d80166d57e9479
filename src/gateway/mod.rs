//! The Socket.IO gateway: accepts authenticated sockets, indexes them by user, and emits
//! notifications to them. It does not know where notifications come from.
//!
//! The transport is herald's own ([`socketio`]); this module is its [`Handler`]: what
//! happens when a socket connects, sends an event, and leaves.

mod admission;
mod delivery;
mod lifetime;
mod member;
mod moving;
mod presence;
pub mod receipts;
pub mod relay;
pub mod revocation;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use serde_json::value::RawValue;

pub use admission::{Admission, Limits};
pub use delivery::{Deliverer, second_argument};
pub use lifetime::Lifetimes;
pub use member::{Entry, Groups, Member, Moves};
pub use presence::Presence;

use crate::config::{AuthConfig, ServerConfig};
use socketio::{self, DisconnectReason, Event, Handler, SocketRef};

/// herald's Socket.IO server.
pub type Server = socketio::Server<Admission>;

/// The running Socket.IO server.
pub struct Gateway {
    pub server: Server,
}

impl Gateway {
    /// Starts accepting sockets on the default namespace, as `admission` decides.
    /// `relay`: with Redis, how requests for other instances' sessions travel.
    pub fn start(server: &ServerConfig, auth: &AuthConfig, admission: Admission, relay: Option<&relay::Relay>) -> Self {
        let mut options = options(server, auth);
        options.engine.instance_tag = relay.map(|r| r.tag().as_bytes().try_into().expect("a tag is TAG_LEN characters"));
        let server = socketio::Server::start(options, Arc::new(admission));
        if let Some(relay) = relay {
            relay.attach_server(&server);
        }
        Self { server }
    }
}

/// The transport's settings, from `server.*` and `auth.allowed_origins`.
pub fn options(server: &ServerConfig, auth: &AuthConfig) -> socketio::Options {
    socketio::Options {
        engine: socketio::engine::Options {
            path: "/socket.io/".into(),
            ping_interval: server.ping_interval,
            ping_timeout: server.ping_timeout,
            max_payload: server.max_payload_bytes as usize,
            max_queue: server.max_buffer_size,
            join_timeout: Some(server.connect_timeout),
            upgrade_timeout: std::time::Duration::from_secs(10),
            write_timeout: server.write_timeout,
            request_timeout: server.connect_timeout,
            handshake_headers: vec!["origin", "authorization"],
            allowed_origins: auth.allowed_origins.clone(),
            instance_tag: None,
            compression: server.compression,
            flushers: None,
        },
        namespaces: vec!["/".into()],
    }
}

impl Admission {
    /// A client's receipt: recorded in Kafka, under the socket's own user, then acked.
    fn receipt(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        let (Some(receipts), Some(member)) = (self.receipts.clone(), socket.data().cloned()) else { return };
        let data = match (event.args.first(), event.attachments.is_empty()) {
            (Some(arg), true) => serde_json::from_str(arg.get()).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let (ack, socket, metrics) = (event.ack, socket.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let result = receipts.record(&member.user, socket.id(), &member.receipts_window, &data).await;
            metrics.receipt(match &result {
                Ok(()) => "ok",
                Err(receipts::Refused::Failed(_)) => "failed",
                Err(receipts::Refused::RateLimited) => "rate_limited",
                Err(receipts::Refused::Invalid(_)) => "invalid",
            });
            let reply = match result {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(why) => serde_json::json!({"ok": false, "error": why.message()}),
            };
            if let Some(ack) = ack {
                let reply = RawValue::from_string(reply.to_string()).expect("valid JSON");
                let _ = ack.send(&[&reply]);
            }
        });
    }
}

impl Handler for Admission {
    type Data = Arc<Member>;

    async fn connect(self: Arc<Self>, socket: SocketRef<Self>, auth: Option<Box<RawValue>>) -> Result<Arc<Member>, String> {
        self.admit(&socket, auth.as_deref()).await.map_err(|e| e.to_string())
    }

    fn connected(self: &Arc<Self>, socket: &SocketRef<Self>) {
        let Some(member) = socket.data().cloned() else { return };
        let (admission, socket) = (self.clone(), socket.clone());
        tokio::spawn(async move { admission.replay(&socket, &member).await });
    }

    fn event(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        if let Some(receipts) = &self.receipts
            && event.name == receipts.event
        {
            return self.receipt(socket, event);
        }
        if event.name != self.refresh_event {
            return;
        }
        let Some(ack) = event.ack else { return };
        // Binary refreshes carry no token.
        let data = match (event.args.first(), event.attachments.is_empty()) {
            (Some(arg), true) => serde_json::from_str(arg.get()).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let Some(member) = socket.data().cloned() else { return };
        if member.refreshing.swap(true, Ordering::AcqRel) {
            let busy = RawValue::from_string(r#"{"ok":false,"error":"refresh in progress"}"#.into()).expect("valid JSON");
            let _ = ack.send(&[&busy]);
            return;
        }
        let (admission, socket) = (self.clone(), socket.clone());
        tokio::spawn(async move {
            let (reply, groups) = admission.refresh(&socket, &data).await;
            if let Some(groups) = groups {
                // Acked once the new groups' notifications reach this instance.
                let entry = Entry { socket: socket.clone(), member: member.clone() };
                member.regroup(&entry, &groups, &admission.presence, &admission.bus).confirmed().await;
            }
            member.refreshing.store(false, Ordering::Release);
            let reply = RawValue::from_string(reply.to_string()).expect("valid JSON");
            let _ = ack.send(&[&reply]);
        });
    }

    async fn departing(self: Arc<Self>, socket: SocketRef<Self>) -> Option<String> {
        Admission::departing(&self, &socket).await
    }

    async fn arriving(self: Arc<Self>, socket: SocketRef<Self>, state: String) -> Result<Arc<Member>, String> {
        Admission::arriving(&self, &socket, &state).await
    }

    async fn cut(self: Arc<Self>, socket: SocketRef<Self>) -> bool {
        Admission::cut(&self, &socket).await
    }

    fn departed(self: &Arc<Self>, socket: &SocketRef<Self>) {
        if let Some(member) = socket.data() {
            member.leave(&self.presence, &self.bus);
        }
    }

    fn disconnected(self: &Arc<Self>, socket: &SocketRef<Self>, _reason: DisconnectReason) {
        if let Some(member) = socket.data() {
            member.leave(&self.presence, &self.bus);
        }
    }
}
