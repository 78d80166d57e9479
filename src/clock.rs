//! The wall clock, read one way everywhere: record timestamps, latencies between instances,
//! token expiry and receipt times all compare against it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch (Kafka's timestamp unit).
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Wall-clock microseconds since the epoch: instances on one host share this clock, so a time
/// taken by one and read by another measures the hop between them.
pub fn unix_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
