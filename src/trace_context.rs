//! W3C trace context (`traceparent`, `tracestate`) through calls and events, with the
//! `opentelemetry` feature: a client call carries its span's context in its headers, a server
//! span takes the caller's as its parent, a published event carries the publisher's in its
//! metadata, and the span that handles the event links to it. Parsing and formatting are
//! OpenTelemetry's W3C propagator's; spans become OpenTelemetry spans through
//! `tracing-opentelemetry`, which the application installs (see the README).
//!
//! Without the feature, or without an OpenTelemetry layer in the application's `tracing`
//! subscriber, every function here does nothing.

#[cfg(feature = "opentelemetry")]
mod enabled {
    use http::{HeaderMap, HeaderName, HeaderValue};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    const TRACEPARENT: &str = "traceparent";
    const TRACESTATE: &str = "tracestate";

    struct Headers<'a>(&'a mut HeaderMap);

    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    struct ReadHeaders<'a>(&'a HeaderMap);

    impl Extractor for ReadHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    /// The two fields of an event's metadata.
    struct Fields<'a> {
        traceparent: &'a str,
        tracestate: &'a str,
    }

    impl Extractor for Fields<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                TRACEPARENT => Some(self.traceparent),
                TRACESTATE => Some(self.tracestate),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT, TRACESTATE]
        }
    }

    #[derive(Default)]
    struct Captured {
        traceparent: String,
        tracestate: String,
    }

    impl Injector for Captured {
        fn set(&mut self, key: &str, value: String) {
            match key {
                TRACEPARENT => self.traceparent = value,
                TRACESTATE => self.tracestate = value,
                _ => {}
            }
        }
    }

    /// Puts `span`'s context into a call's headers.
    pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
        if span.is_disabled() {
            return;
        }
        let context = span.context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
        }
    }

    /// Makes the caller's span, as the call's headers carry it, the parent of `span`.
    pub(crate) fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
        if span.is_disabled() || !headers.contains_key(TRACEPARENT) {
            return;
        }
        let parent = TraceContextPropagator::new().extract(&ReadHeaders(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }

    /// The context of the current span, as an event's metadata carries it: `traceparent` and
    /// `tracestate`, both empty without one.
    pub(crate) fn of_current_span() -> (String, String) {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return Default::default();
        }
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return Default::default();
        }
        let mut captured = Captured::default();
        TraceContextPropagator::new().inject_context(&context, &mut captured);
        (captured.traceparent, captured.tracestate)
    }

    /// Whether the handling of an event whose metadata carries `traceparent` is traced: only
    /// when the publisher's span was sampled. An event published outside a trace, or in an
    /// unsampled one, is handled without a span: OpenTelemetry's sampling decision is the
    /// publisher's, and a span per event and observer would otherwise cost every delivery.
    pub(crate) fn traces_event(traceparent: &str) -> bool {
        // version "-" trace-id "-" parent-id "-" trace-flags (55 bytes), the sampled flag
        // being bit 0 of the flags. Checked per event and observer: the length first, which
        // an event published outside a trace (no traceparent) fails at once.
        traceparent.len() == 55
            && traceparent.as_bytes()[52] == b'-'
            && traceparent
                .get(53..)
                .and_then(|flags| u8::from_str_radix(flags, 16).ok())
                .is_some_and(|flags| flags & 1 == 1)
    }

    /// Links `span` to the publisher's span that an event's metadata names.
    pub(crate) fn link(span: &tracing::Span, traceparent: &str, tracestate: &str) {
        if span.is_disabled() || traceparent.is_empty() {
            return;
        }
        let fields = Fields {
            traceparent,
            tracestate,
        };
        let publisher = TraceContextPropagator::new().extract(&fields);
        let publisher = publisher.span().span_context().clone();
        if publisher.is_valid() {
            span.add_link(publisher);
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod enabled {
    use http::HeaderMap;

    pub(crate) fn inject(_: &tracing::Span, _: &mut HeaderMap) {}

    pub(crate) fn adopt_parent(_: &tracing::Span, _: &HeaderMap) {}

    pub(crate) fn of_current_span() -> (String, String) {
        Default::default()
    }

    pub(crate) fn link(_: &tracing::Span, _: &str, _: &str) {}

    /// Without OpenTelemetry, spans are for logs: every event is handled in one.
    pub(crate) fn traces_event(_: &str) -> bool {
        true
    }
}

pub(crate) use enabled::{adopt_parent, inject, link, of_current_span, traces_event};

#[cfg(all(test, feature = "opentelemetry"))]
mod test {
    use super::traces_event;

    #[test]
    fn only_an_event_published_in_a_sampled_span_is_traced() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(traces_event(sampled));
        assert!(!traces_event(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert!(!traces_event(""));
        assert!(!traces_event("garbage"));
        assert!(!traces_event(&sampled[..54]));
        // 55 bytes that are not a traceparent.
        assert!(!traces_event(&"0".repeat(55)));
        assert!(!traces_event(&format!("{}-0x", &sampled[..52])));
    }
}
