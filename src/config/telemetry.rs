//! The `telemetry` section: where herald exports its traces (OTLP/HTTP) and how many records
//! without a trace of their own it traces.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::walk::Walk;

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (`/v1/traces` is appended), as `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// `None` (the default): no export unless that variable is set.
    pub endpoint: Option<String>,
    /// Headers of every export request (an API key, say). Default none.
    pub headers: BTreeMap<String, String>,
    /// How long one export may take. Default 10 s.
    pub timeout: Duration,
    /// Of the records without a `traceparent`, the share traced (0 to 1); unset, the standard
    /// `OTEL_TRACES_SAMPLER_ARG`, else 0.01.
    pub sampling_ratio: Option<f64>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` overrides it). Default `herald`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            sampling_ratio: None,
            service_name: "herald".into(),
        }
    }
}

pub(super) fn read_telemetry(walk: &mut Walk, v: Option<&Value>) -> TelemetryConfig {
    let defaults = TelemetryConfig::default();
    walk.section(v, "telemetry", |walk, s| {
        let (endpoint, headers, timeout) = walk.section(s.raw("otlp"), &s.path("otlp"), |walk, o| {
            let endpoint = walk.opt::<String>(o, "endpoint").filter(|e| !e.is_empty());
            if let Some(e) = &endpoint {
                let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
                if !scheme_ok || e.parse::<http::Uri>().is_err() {
                    walk.error(o.path("endpoint"), format!("expected an http:// or https:// URL, found `{e}`"));
                }
            }
            let headers: BTreeMap<String, String> = walk.get(o, "headers", BTreeMap::new());
            for (name, value) in &headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                    walk.error(format!("{}.{name}", o.path("headers")), "not a valid HTTP header");
                }
            }
            let timeout_ms: u64 = walk.get(o, "timeout_ms", defaults.timeout.as_millis() as u64);
            if !(1..=300_000).contains(&timeout_ms) {
                walk.error(o.path("timeout_ms"), format!("must be between 1 and 300000, found {timeout_ms}"));
            }
            (endpoint, headers, Duration::from_millis(timeout_ms.clamp(1, 300_000)))
        });
        let sampling_ratio: Option<f64> = walk.opt(s, "sampling_ratio");
        let sampling_ratio = match sampling_ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => {
                walk.error(s.path("sampling_ratio"), format!("must be between 0 and 1, found {r}"));
                None
            }
            r => r,
        };
        let service_name: String = walk.get(s, "service_name", defaults.service_name.clone());
        if service_name.is_empty() {
            walk.error(s.path("service_name"), "must not be empty");
        }
        TelemetryConfig { endpoint, headers, timeout, sampling_ratio, service_name }
    })
}
