//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata: clients put the current
//! span's context on every request, servers start each request's span as its child, so the
//! spans of one job form one trace across processes.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A tonic client interceptor that adds the current span's trace context to each request.
/// Without an active OpenTelemetry span it adds nothing, so it costs nothing when tracing is
/// off.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
        });
        Ok(request)
    }
}

/// The span of one incoming gRPC request, for `tonic::transport::Server::trace_fn`: named
/// after the method, child of the caller's span when the request carries trace context, with
/// empty `job`, `task` and `worker` fields that the handler fills in
/// (`tracing::Span::current().record("job", ...)`).
pub fn server_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        job = tracing::field::Empty,
        task = tracing::field::Empty,
        worker = tracing::field::Empty,
    );
    let metadata = MetadataMap::from_headers(request.headers().clone());
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(&metadata))
    });
    // Fails only when no OpenTelemetry layer is installed (tracing off): nothing to link then.
    let _ = span.set_parent(parent);
    span
}

/// The current span's W3C `traceparent`, to store with work that continues the trace later in
/// another process; empty when tracing is off.
pub fn current_traceparent() -> String {
    let mut fields = std::collections::HashMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut fields)
    });
    fields.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote span a stored `traceparent` names (from
/// [`current_traceparent`] in another process). Does nothing for an empty or malformed value,
/// or when tracing is off.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let fields =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&fields));
    let _ = span.set_parent(parent);
}

/// Writes propagation fields into gRPC metadata.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads propagation fields from gRPC metadata.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tonic::service::Interceptor;
    use tracing_subscriber::layer::SubscriberExt;

    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    /// Runs `test` with spans that carry OpenTelemetry contexts, as `init` sets up.
    fn with_tracing(test: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_request_span_continues_the_caller_s_trace() {
        with_tracing(|| {
            let client = tracing::info_span!("client");
            let sent = client
                .in_scope(|| TraceContextInterceptor.call(tonic::Request::new(())))
                .unwrap();
            let traceparent = sent
                .metadata()
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap();
            assert!(traceparent.starts_with("00-"), "{traceparent}");

            let mut received = tonic::codegen::http::Request::new(());
            *received.uri_mut() = "/tessera.v1.Jobs/SubmitJob".parse().unwrap();
            *received.headers_mut() = sent.metadata().clone().into_headers();
            let server = server_span(&received);
            assert_eq!(trace_id(&server), trace_id(&client));

            let unrelated = server_span(&tonic::codegen::http::Request::new(()));
            assert_ne!(
                trace_id(&unrelated),
                trace_id(&client),
                "no context, new trace"
            );
        });
    }

    #[test]
    fn a_stored_traceparent_continues_the_trace_later() {
        with_tracing(|| {
            let submit = tracing::info_span!("submit");
            let stored = submit.in_scope(current_traceparent);
            assert!(stored.starts_with("00-"), "{stored}");
            let task = tracing::info_span!("task");
            continue_trace(&task, &stored);
            assert_eq!(trace_id(&task), trace_id(&submit));
            let parent = submit.context().span().span_context().span_id();
            assert!(stored.contains(&parent.to_string()), "{stored}");

            let orphan = tracing::info_span!("orphan");
            continue_trace(&orphan, "");
            continue_trace(&orphan, "not a traceparent");
            assert_ne!(trace_id(&orphan), trace_id(&submit));
        });
        assert_eq!(current_traceparent(), "", "no trace outside a span");
    }
}
