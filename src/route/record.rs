//! A Kafka record as the router reads it, and why one produced no notification.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::dropped::DropReason;
use crate::telemetry::TraceContext;

/// A Kafka record as the router sees it, borrowed from the consumer's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Milliseconds since the epoch, from the record (producer or broker time).
    pub timestamp_ms: Option<i64>,
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The trace its notifications continue: its `traceparent`, or the span of herald's that
    /// consumed it (the source reads it from the headers).
    pub trace: Option<&'a Arc<TraceContext>>,
}

/// Why a record produced no notification. Permanent: the record is counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RouteError {
    pub reason: DropReason,
    pub detail: String,
    /// The script that failed, for the per-route error metric.
    pub script: Option<String>,
}

impl RouteError {
    pub(super) fn new(reason: DropReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into(), script: None }
    }
}

pub(crate) fn parse_value<'a>(record: &Record<'a>) -> Result<&'a RawValue, RouteError> {
    let value = record.value.filter(|v| !v.is_empty()).ok_or_else(|| RouteError::new(DropReason::Empty, "record has no value"))?;
    let text = std::str::from_utf8(value).map_err(|_| RouteError::new(DropReason::BadJson, "value is not UTF-8"))?;
    serde_json::from_str(text).map_err(|e| RouteError::new(DropReason::BadJson, format!("value is not JSON: {e}")))
}
