//! The smallest server: Socket.IO on `/socket.io/`, accepting any client that sends an `auth`
//! payload and echoing each event back as `echo`. Run:
//! `cargo run -p herald-socketio --example minimal`, then connect socket.io-client to
//! `http://127.0.0.1:3000` with `auth: {...}`.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketio::{DisconnectReason, Event, Handler, Mount, Options, Served, Server, SocketRef};
use tokio::net::TcpListener;

struct App;

impl Handler for App {
    /// What the application keeps per socket: here, its auth payload.
    type Data = Box<RawValue>;

    async fn connect(self: Arc<Self>, _socket: SocketRef<Self>, auth: Option<Box<RawValue>>) -> Result<Box<RawValue>, String> {
        auth.ok_or_else(|| "an auth payload is required".to_owned())
    }

    fn event(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        let _ = socket.emit("echo", &event.args);
    }

    fn disconnected(self: &Arc<Self>, _socket: &SocketRef<Self>, _reason: DisconnectReason) {}
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let server = Server::start(Options::default(), Arc::new(App));
    let mounts: Arc<[Arc<dyn Mount>]> = Arc::new([server.mount()]);
    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let mounts = mounts.clone();
        tokio::spawn(async move {
            // A request for another path comes back with the bytes already read, for another
            // HTTP server to take over; this one has none, so it just closes.
            if let Served::Handoff(_other) = socketio::serve(stream, &mounts).await {}
        });
    }
}
