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
            // The WebSocket limits default to 64 MiB a message: hold them to the same bound.
            .ws_max_message_size(config.max_payload_bytes as usize)
            .ws_max_frame_size(config.max_payload_bytes as usize)
            .connect_timeout(config.connect_timeout)
            // Allocated per WebSocket up front; clients send little (pongs, refreshes), and a
            // larger message is still read, in more chunks. 4096 by default.
            .ws_read_buffer_size(1024)
            .build_layer();
        let presence = Arc::new(Presence::new(metrics.clone()));
        let deliverer = Deliverer::new(io.clone(), presence.clone(), metrics, config.slow_client);
        Self { layer, io, presence, deliverer }
    }

    /// Starts accepting sockets on the default namespace. `refresh_event` is the event clients
    /// emit with a fresh token.
    pub fn open(&self, admission: Arc<Admission>, refresh_event: String) {
        // The socket's handlers are registered by the middleware, once it admitted the socket:
        // socketioxide sends CONNECT before it calls the connect handler, so an event a client
        // sends as soon as it sees CONNECT could beat a handler registered there, and be
        // dropped without an ack.
        let middleware = {
            let admission = admission.clone();
            move |s: SocketRef, TryData(auth): TryData<Value>| {
                let (admission, refresh_event) = (admission.clone(), refresh_event.clone());
                async move {
                    admission.admit(&s, auth.ok().as_ref()).await?;
                    register_handlers(&s, admission, refresh_event);
                    Ok::<(), crate::auth::AuthError>(())
                }
            }
        };
        let on_connect = move |socket: SocketRef| {
            let admission = admission.clone();
            async move { admission.replay(&socket).await }
        };
        self.io.ns("/", on_connect.with(middleware));
    }
}

/// The handlers of an admitted socket: leaving its user's presence on disconnect, and token refresh.
fn register_handlers(socket: &SocketRef, admission: Arc<Admission>, refresh_event: String) {
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
