//! The Socket.IO gateway: accepts authenticated sockets, puts each in its user's room, and emits
//! notifications to them. It does not know where notifications come from.

mod admission;
mod delivery;
mod lifetime;
mod presence;

use std::sync::Arc;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;

pub use admission::{Admission, Limits, identity_of};
pub use delivery::Deliverer;
pub use lifetime::Lifetimes;
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
        let deliverer = Deliverer::new(io.clone(), presence.clone(), metrics, config.slow_client);
        Self { layer, io, presence, deliverer }
    }

    /// Starts accepting sockets on the default namespace. `refresh_event` is the event clients
    /// emit with a fresh token.
    pub fn open(&self, admission: Arc<Admission>, refresh_event: String) {
        let middleware = {
            let admission = admission.clone();
            move |s: SocketRef, TryData(auth): TryData<Value>| {
                let admission = admission.clone();
                async move { admission.admit(&s, auth.ok().as_ref()).await }
            }
        };
        let on_connect = move |socket: SocketRef| {
            let admission = admission.clone();
            let refresh_event = refresh_event.clone();
            async move {
                let replay_admission = admission.clone();
                let replay_socket = socket.clone();
                tokio::spawn(async move { replay_admission.replay(&replay_socket).await });
                socket.on_disconnect(async |s: SocketRef| {
                    if let Some(m) = s.extensions.get::<Arc<admission::Membership>>() {
                        m.leave();
                    }
                });
                socket.on(refresh_event, move |s: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                    let admission = admission.clone();
                    async move {
                        let data = data.unwrap_or(Value::Null);
                        let reply = lifetime::refresh(&s, &data, &admission.authenticator, &admission.lifetimes, &admission.metrics).await;
                        let _ = ack.send(&reply);
                    }
                });
            }
        };
        self.io.ns("/", on_connect.with(middleware));
    }
}
