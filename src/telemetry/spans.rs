//! herald's spans, exported over OTLP/HTTP when `telemetry.otlp.endpoint` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: `consume` for a
//! record, `route` (naming its script) and `publish` for each notification on the instance that
//! consumed it, `deliver` on each instance that holds its sockets.
//!
//! Whether a record is traced is decided once, when it is consumed, before any span exists:
//! the producer's `sampled` flag when its record has a `traceparent`, `telemetry.sampling_ratio`
//! for one without. An untraced record costs no span at all, so spans are built through the
//! OpenTelemetry API for traced records only; `tracing-opentelemetry` would first build every
//! `tracing` span in the subscriber and only then learn that the sampler dropped it.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};

use super::context::{TraceContext, TraceParent};
use crate::config::TelemetryConfig;

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// The exporting tracer, when export is on (one per process, as the exporter is).
pub fn tracer() -> Option<&'static Tracer> {
    TRACER.get()
}

pub struct Tracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// Of the records without a `traceparent`, the share traced, scaled to `u64::MAX`.
    root_threshold: u64,
}

/// Where OTLP/HTTP traces go: `telemetry.otlp.endpoint`, else the standard variables; `None`:
/// no export.
pub fn endpoint(config: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let base = |url: &str| format!("{}/v1/traces", url.trim_end_matches('/'));
    config
        .endpoint
        .as_deref()
        .map(base)
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|e| !e.is_empty()))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.is_empty()).map(|e| base(&e)))
}

/// Of the records without a `traceparent`, the share traced: `telemetry.sampling_ratio`, else
/// the standard `OTEL_TRACES_SAMPLER_ARG` (a ratio from 0 to 1), else 1%.
pub fn sampling_ratio(config: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> f64 {
    let standard = || env("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r));
    config.sampling_ratio.or_else(standard).unwrap_or(0.01)
}

/// Starts exporting, if configured. Outside the async runtime: the exporter's HTTP client and
/// its batch thread are its own.
pub fn start(config: &TelemetryConfig) -> anyhow::Result<()> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let Some(endpoint) = endpoint(config, &|name| std::env::var(name).ok()) else { return Ok(()) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_timeout(config.timeout)
        .with_headers(config.headers.clone().into_iter().collect())
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp: {e}"))?;
    // `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` still apply over these.
    let instance = format!("{}:{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".into()), std::process::id());
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.instance.id", instance))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // herald decides at consume time (see the module's text); the spans of a traced record
        // follow it.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("herald");
    let ratio = sampling_ratio(config, &|name| std::env::var(name).ok());
    let root_threshold = (ratio * u64::MAX as f64) as u64;
    if TRACER.set(Tracer { tracer, provider, root_threshold }).is_ok() {
        tracing::info!(%endpoint, ratio, "Exporting traces over OTLP/HTTP.");
    }
    Ok(())
}

/// Exports what is still buffered (at shutdown, outside the async runtime), for at most `within`.
pub fn shutdown(within: Duration) {
    if let Some(t) = TRACER.get()
        && let Err(e) = t.provider.shutdown_with_timeout(within)
    {
        tracing::warn!(error = %e, "Could not export the last spans.");
    }
}

/// One of herald's spans, and the context its children and the next hop carry.
pub struct Traced {
    span: Span,
    /// The span's own context, as a notification carries it on.
    pub context: TraceContext,
}

impl Traced {
    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    pub fn end(mut self) {
        self.span.end();
    }

    pub fn end_at(mut self, at: SystemTime) {
        self.span.end_with_timestamp(at);
    }
}

impl Tracer {
    /// Whether a record with this context (or none) is traced: its producer's decision, or the
    /// sampling ratio for a record without one.
    pub fn traces(&self, parent: Option<&TraceContext>) -> bool {
        match parent {
            Some(p) => p.fields().sampled(),
            None => self.root_threshold > 0 && random_u64() <= self.root_threshold,
        }
    }

    /// Starts a span, child of `parent` (or the root of a new trace).
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        started: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Traced {
        let parent_cx = parent.map_or_else(Context::new, remote);
        let builder = self.tracer.span_builder(name).with_kind(kind).with_start_time(started).with_attributes(attributes);
        let span = self.tracer.build_with_context(builder, &parent_cx);
        let own = span.span_context();
        let fields = TraceParent {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(own.span_id().to_bytes()),
            flags: own.trace_flags().to_u8(),
        };
        let context = TraceContext::child(fields, parent.and_then(TraceContext::tracestate));
        Traced { span, context }
    }
}

/// The OpenTelemetry context of a span of another process (or another stage of this one).
fn remote(parent: &TraceContext) -> Context {
    let f = parent.fields();
    let state = parent.tracestate().and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
    let span = SpanContext::new(
        TraceId::from_bytes(f.trace_id.to_be_bytes()),
        SpanId::from_bytes(f.parent_id.to_be_bytes()),
        TraceFlags::new(f.flags),
        true,
        state,
    );
    Context::new().with_remote_span_context(span)
}

/// A per-thread xorshift generator seeded from the OS: the sampling coin, without a system
/// call per record.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the OS random source");
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig { endpoint: endpoint.map(String::from), ..TelemetryConfig::default() }
    }

    #[test]
    fn the_endpoint_comes_from_the_config_then_the_standard_variables() {
        let none = |_: &str| None;
        assert_eq!(endpoint(&config(None), &none), None, "off by default");
        assert_eq!(endpoint(&config(Some("http://c:4318/")), &none).as_deref(), Some("http://c:4318/v1/traces"));
        let base = |n: &str| (n == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://env:4318".to_owned());
        assert_eq!(endpoint(&config(None), &base).as_deref(), Some("http://env:4318/v1/traces"));
        let signal = |n: &str| (n == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://t:1/x".to_owned());
        assert_eq!(endpoint(&config(None), &signal).as_deref(), Some("http://t:1/x"), "taken as it is, as the standard says");
        assert_eq!(endpoint(&config(Some("http://c:4318")), &signal).as_deref(), Some("http://c:4318/v1/traces"), "the config first");
    }

    #[test]
    fn the_ratio_comes_from_the_config_then_the_standard_variable() {
        let arg = |v: &'static str| move |n: &str| (n == "OTEL_TRACES_SAMPLER_ARG").then(|| v.to_owned());
        assert_eq!(sampling_ratio(&config(None), &|_| None), 0.01);
        assert_eq!(sampling_ratio(&config(None), &arg("0.25")), 0.25);
        assert_eq!(sampling_ratio(&config(None), &arg("7")), 0.01, "not a ratio: the default");
        let set = TelemetryConfig { sampling_ratio: Some(0.5), ..TelemetryConfig::default() };
        assert_eq!(sampling_ratio(&set, &arg("0.25")), 0.5);
    }

    #[test]
    fn the_coin_is_fair_enough() {
        let heads = (0..100_000).filter(|_| random_u64() <= u64::MAX / 100).count();
        assert!((700..1300).contains(&heads), "{heads} of 100000 at 1%");
    }
}
