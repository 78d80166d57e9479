//! The spans of the records herald traces, on the instance that consumes them: `consume` for
//! a record (a child of its producer's span), `route` under it (naming the script), and
//! `publish` for each of its notifications, whose context the notification then carries to the
//! instances holding its sockets. Only records the tracer traces get spans.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use rdkafka::message::{BorrowedMessage, Message};

use crate::bus::Published;
use crate::metrics::LabelValue;
use crate::notification::Notification;
use crate::route::Router;
use crate::telemetry::spans::Traced;
use crate::telemetry::{TraceContext, Tracer};

/// The open spans of one batch.
pub struct BatchSpans {
    tracer: &'static Tracer,
    /// The traced records' `consume` spans, by index in the batch.
    consumed: Vec<(usize, Traced)>,
    /// `publish` spans, by index of their notification.
    publishing: Vec<(usize, Traced)>,
}

impl BatchSpans {
    /// Starts the `consume` span of each record the tracer traces, at `taken_us` (when herald
    /// took the batch); the record then carries its span's context instead of the producer's,
    /// so that what follows is its child.
    pub fn consume(
        tracer: &'static Tracer,
        messages: &[BorrowedMessage<'_>],
        traces: &mut [Option<Arc<TraceContext>>],
        taken_us: i64,
    ) -> Self {
        let taken = UNIX_EPOCH + Duration::from_micros(taken_us.max(0) as u64);
        let mut consumed = Vec::new();
        for (i, (m, trace)) in messages.iter().zip(traces.iter_mut()).enumerate() {
            if !tracer.traces(trace.as_deref()) {
                continue;
            }
            let attributes = vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", m.topic().to_owned()),
                KeyValue::new("messaging.destination.partition.id", m.partition().to_string()),
                KeyValue::new("messaging.kafka.offset", m.offset()),
            ];
            let span = tracer.start("consume", SpanKind::Consumer, trace.as_deref(), taken, attributes);
            *trace = Some(Arc::new(span.context.clone()));
            consumed.push((i, span));
        }
        Self { tracer, consumed, publishing: Vec::new() }
    }

    /// Whether any record of the batch is traced.
    pub fn any(&self) -> bool {
        !self.consumed.is_empty()
    }

    /// After routing (from `started`): a `route` span for each traced record, naming its
    /// script, and a `publish` span, its child, for each of its notifications, which carry that
    /// span's context on.
    pub fn routed(&mut self, router: &Router, topics: &[&str], started: SystemTime, notifications: &mut [Notification]) {
        let ended = SystemTime::now();
        for (i, consume) in &self.consumed {
            let mine: Vec<usize> =
                (0..notifications.len()).filter(|&n| notifications[n].trace.as_deref() == Some(&consume.context)).collect();
            let attributes =
                vec![KeyValue::new("herald.route", router.rule_name(topics[*i])), KeyValue::new("herald.notifications", mine.len() as i64)];
            let route = self.tracer.start("route", SpanKind::Internal, Some(&consume.context), started, attributes);
            for n in mine {
                let attributes = vec![KeyValue::new("herald.audience", notifications[n].to.kind().as_label())];
                let publish = self.tracer.start("publish", SpanKind::Producer, Some(&route.context), ended, attributes);
                notifications[n].trace = Some(Arc::new(publish.context.clone()));
                self.publishing.push((n, publish));
            }
            route.end_at(ended);
        }
    }

    /// Ends every span of the batch, each `publish` with what its publish reached.
    pub fn published(self, published: &[Published]) {
        for (n, mut span) in self.publishing {
            if let Some(p) = published.get(n) {
                span.set(KeyValue::new("herald.receivers", p.receivers as i64));
                span.set(KeyValue::new("herald.stored", p.stored.is_some()));
            }
            span.end();
        }
        for (_, span) in self.consumed {
            span.end();
        }
    }
}
