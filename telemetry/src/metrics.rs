//! The Prometheus endpoint: `GET /metrics` answers with the OpenMetrics text of whatever the
//! process's [`MetricsSource`] renders at that moment.

use std::net::SocketAddr;
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

/// Serves `GET /metrics` from `source` on `listener` until `shutdown` is cancelled. A source
/// that fails answers 500 with the reason, so a scrape shows why instead of stale numbers.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    source: Arc<dyn MetricsSource>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(source);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the metrics endpoint stopped")
}

async fn scrape(State(source): State<Arc<dyn MetricsSource>>) -> Response {
    match source.render().await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}
