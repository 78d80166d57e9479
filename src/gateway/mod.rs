//! The Socket.IO gateway: accepts authenticated sockets, indexes them by user, and emits
//! notifications to them. It does not know where notifications come from.
//!
//! The transport is herald's own ([`socketio`]); its handler is [`Admission`]: what happens
//! when a socket connects, sends an event, moves to another instance, and leaves.

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

pub use admission::{Admission, Limits};
pub use delivery::{Deliverer, second_argument};
pub use lifetime::Lifetimes;
pub use member::{Entry, Groups, Member, Moves};
pub use presence::Presence;

use crate::config::{AuthConfig, ServerConfig};

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
