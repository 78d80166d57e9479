//! A WebSocket client that offers permessage-deflate, as browsers and the Node client do
//! (tungstenite has no stable support for it): the handshake with the offer, server frames read
//! (compressed ones inflated by the server crate's inflater, `socketio::engine::deflate`), masked text frames written. Only what a
//! worker needs: herald never fragments what it sends.

use std::net::{IpAddr, SocketAddr};

use socketio::engine::deflate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest message a worker takes.
const MAX_MESSAGE: usize = 1 << 20;

pub struct DeflateWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl DeflateWs {
    /// Connects from `bind` to `path` on `server`, offering permessage-deflate; fails unless
    /// the server accepted it.
    pub async fn connect(server: SocketAddr, bind: IpAddr, path: &str) -> anyhow::Result<Self> {
        let socket = crate::stats::client_socket(bind)?;
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut ws = Self { stream, buf: Vec::with_capacity(1024) };
        let end = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            anyhow::ensure!(ws.fill().await? > 0, "closed during the handshake");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 101"), "no upgrade: {}", head.lines().next().unwrap_or(""));
        anyhow::ensure!(head.contains("sec-websocket-extensions: permessage-deflate"), "permessage-deflate was not negotiated");
        ws.buf.drain(..end);
        ws.buf.shrink_to(4096);
        Ok(ws)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Sends a text message, masked (uncompressed: the client's messages here are short).
    pub async fn send(&mut self, text: &str) -> std::io::Result<()> {
        let frame = socketio::engine::framing::client_frame(0x81, text.as_bytes(), [0x37, 0xfa, 0x21, 0x3d]);
        self.stream.write_all(&frame).await
    }

    /// The next text message (inflated if it came compressed), pings answered; `None` once the
    /// connection closes.
    pub async fn next_text(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some((first, start, len)) = self.header()
                && self.buf.len() >= start + len
            {
                let payload: Vec<u8> = self.buf.drain(..start + len).skip(start).collect();
                match first & 0x0F {
                    0x1 if first & 0x40 != 0 => {
                        let inflated = deflate::inflate(&payload, MAX_MESSAGE).map_err(|e| anyhow::anyhow!("inflate: {e:?}"))?;
                        return Ok(Some(String::from_utf8(inflated)?));
                    }
                    0x1 => return Ok(Some(String::from_utf8(payload)?)),
                    0x8 => return Ok(None),
                    0x9 => {
                        let pong = socketio::engine::framing::client_frame(0x8A, &payload, [1, 2, 3, 4]);
                        self.stream.write_all(&pong).await?;
                    }
                    _ => {}
                }
                continue;
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The first byte, payload start and length of the frame at the start of the buffer, once
    /// its header is whole.
    fn header(&self) -> Option<(u8, usize, usize)> {
        let [first, second, ..] = *self.buf.as_slice() else { return None };
        match second & 0x7F {
            126 => Some((first, 4, u16::from_be_bytes(self.buf.get(2..4)?.try_into().ok()?) as usize)),
            127 => Some((first, 10, u64::from_be_bytes(self.buf.get(2..10)?.try_into().ok()?) as usize)),
            n => Some((first, 2, n as usize)),
        }
    }
}
