//! The reference servers of the official Engine.IO and Socket.IO conformance suites
//! (socketio/engine.io-protocol and socketio/socket.io-protocol, `test-suite/`), built on
//! this crate's server, on one port:
//!
//! - `/engine.io/`: Engine.IO only, echoing every message as it came (text as text, binary as
//!   binary);
//! - `/socket.io/`: Socket.IO with namespaces `/` and `/custom`. On connect a socket is sent
//!   `auth` with its handshake's auth (`{}` without one); on `/`, `message` is answered with
//!   `message-back` and the same arguments, and `message-with-ack` is acknowledged with its
//!   arguments.
//!
//! Both with pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1,000,000, connectTimeout
//! 1,000 ms, any origin. Run:
//! `cargo run --release -p herald-socketio --example protocol_echo -- --listen 127.0.0.1:3000`, then `npm test` in
//! each suite's `test-suite/`.

mod fixture;

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "The conformance suites' reference servers, on herald-socketio")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    fixture::Servers::start().serve(listener).await
}
