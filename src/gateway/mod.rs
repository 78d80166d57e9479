//! The Socket.IO gateway: accepts authenticated sockets, puts each in its user's room, and emits
//! notifications to them. It does not know where notifications come from.

mod admission;
mod delivery;
mod presence;

use std::sync::Arc;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;

pub use admission::{Admission, identity_of};
pub use delivery::Deliverer;
pub use presence::Presence;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The Socket.IO server before it accepts anyone: its tower layer, its handle, and the
/// presence table and deliverer that the bus needs.
pub struct Gateway {
    pub layer: SocketIoLayer,
    pub io: SocketIo,
    pub presence: Arc<Presence>,
    pub deliverer: Deliverer,
}

impl Gateway {
    pub fn new(config: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        let (layer, io) = SocketIo::builder()
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .max_buffer_size(config.max_buffer_size)
            .max_payload(config.max_payload_bytes)
            .build_layer();
        let presence = Arc::new(Presence::new(metrics.clone()));
        let deliverer = Deliverer::new(io.clone(), presence.clone(), metrics);
        Self { layer, io, presence, deliverer }
    }

    /// Starts accepting sockets on the default namespace.
    pub fn open(&self, admission: Arc<Admission>) {
        let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
            let admission = admission.clone();
            async move { admission.admit(&s, auth.ok().as_ref()).await }
        };
        self.io.ns("/", on_connect.with(middleware));
    }
}

async fn on_connect(socket: SocketRef) {
    socket.on_disconnect(async |s: SocketRef| {
        if let Some(m) = s.extensions.get::<Arc<admission::Membership>>() {
            m.leave();
        }
    });
}
