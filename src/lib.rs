//! herald: a real-time notification gateway.
//!
//! A record flows one way through four stages, each in its own module:
//!
//! 1. [`source`]: a Kafka consumer group reads records (or the embedded broker serves them);
//! 2. [`route`]: each record becomes notifications for one or more users;
//! 3. [`bus`]: each notification is published on its user's (or group's) Redis channel (or
//!    in-process), and what arrives is handed to the [`bus::Inbound`] the gateway implements;
//! 4. [`gateway`]: the instances holding the audience's sockets emit it over Socket.IO.
//!
//! No module imports one that imports it back (`tests/layering.rs`); `docs/architecture.md`
//! draws the flow.
//!
//! [`config`] reads and validates the YAML configuration, [`auth`] verifies tokens, [`http`]
//! serves health and metrics, [`metrics`] names every metric, [`notification`] is the unit that
//! flows from route to bus to gateway, [`replay`] gives reconnecting
//! clients what they missed, [`watch`] rereads route scripts and keys when their files change
//! (ConfigMap and Secret volumes included), and [`app`] wires it together.

// Unsafe code only where a system call or librdkafka's C API has no safe wrapper: the modules
// that allow it say why (`process`, `source::embedded`).
#![deny(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod notification;
pub mod process;
pub mod replay;
pub mod route;
pub mod source;
pub mod supervise;
pub mod telemetry;
pub mod throttle;
pub mod watch;
