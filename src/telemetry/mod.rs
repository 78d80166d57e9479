//! What herald tells operators besides its metrics: its log lines, and the trace a record's
//! W3C trace context continues through herald to the client (and back with a receipt).

pub mod context;
mod logs;
pub mod spans;

pub use context::TraceContext;
pub use logs::init;
pub use spans::{Tracer, tracer};
