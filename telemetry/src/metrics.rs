//! The Prometheus endpoint: `GET /metrics` answers with the OpenMetrics text of whatever the
//! process's [`MetricsSource`] renders at that moment; with a [`Readiness`], `GET /healthz`
//! answers beside it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The content type of the OpenMetrics text that `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Something that renders its metrics as OpenMetrics text on each scrape. Asynchronous so a
/// source can read shared state (the coordinator's queue depths live in Redis) just before
/// rendering, which keeps gauges right with several processes sharing that state.
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    /// The whole exposition, ending in `# EOF`.
    async fn render(&self) -> anyhow::Result<String>;
}

/// A plain registry is a source whose metrics the process updates as things happen.
#[async_trait::async_trait]
impl MetricsSource for Registry {
    async fn render(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, self)?;
        Ok(text)
    }
}

/// Whether the process can serve, answered on `GET /healthz` (200 `SERVING`, else 503
/// `NOT_SERVING`). Plain HTTP on the metrics port, so probes need neither TLS nor a token when
/// the gRPC port has both (a kubelet's gRPC probe cannot speak TLS).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Records whether the process can serve now.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether it can.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds `address` (port 0 picks a free port) for [`serve_metrics`] and returns the address
/// actually bound, for the process to announce.
pub async fn bind_metrics(
    address: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("serving metrics on {address}"))?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `GET /metrics` from `source` on `listener`, and `GET /healthz` from `readiness`
/// when there is one, until `shutdown` is cancelled. A source that fails answers 500 with the
/// reason, so a scrape shows why instead of stale numbers.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    source: Arc<dyn MetricsSource>,
    readiness: Option<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(source);
    if let Some(readiness) = readiness {
        app = app.route(
            "/healthz",
            axum::routing::get(move || healthz(readiness.clone())),
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the metrics endpoint stopped")
}

async fn healthz(readiness: Readiness) -> Response {
    if readiness.get() {
        (StatusCode::OK, "SERVING\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n").into_response()
    }
}

async fn scrape(State(source): State<Arc<dyn MetricsSource>>) -> Response {
    match source.render().await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_registry_is_served_on_get_metrics_and_readiness_on_get_healthz() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things counted", counter.clone());
        counter.inc_by(3);
        let (listener, address) = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let shutdown = CancellationToken::new();
        let readiness = Readiness::default();
        let server = tokio::spawn(serve_metrics(
            listener,
            Arc::new(registry),
            Some(readiness.clone()),
            shutdown.clone(),
        ));

        let response = get(address, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(CONTENT_TYPE), "{response}");
        assert!(response.contains("things_total 3\n"), "{response}");
        assert!(response.ends_with("# EOF\n"), "{response}");
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 503"));
        readiness.set(true);
        let health = get(address, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("SERVING\n"), "{health}");

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
