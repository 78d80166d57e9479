//! Sources of records: the Kafka consumer, and the embedded Kafka-protocol broker used when
//! herald runs on its own for a try-out.

pub mod dead_letter;
pub mod embedded;
pub mod kafka;
mod offline;
mod producer;
mod traced;

pub use producer::producer_for;
