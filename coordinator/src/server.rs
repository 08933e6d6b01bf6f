//! Running the coordinator: the state store and artifact store from the configuration, the
//! gRPC services with health probes, the reaper that requeues expired leases, and a graceful
//! shutdown when the cancellation token fires.

use crate::api::jobs::JobsApi;
use crate::api::workers::WorkersApi;
use crate::api::Coordinator;
use crate::auth::{Auth, Gate, Role};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::embedded::EmbeddedBackend;
use crate::state::redis::RedisBackend;
use crate::state::StateBackend;
use crate::store::ArtifactStore;
use crate::webhooks::deliver::Deliverer;
use anyhow::{bail, Context};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::job::Settings;
use tessera_proto::transfer::{CONNECTION_WINDOW, STREAM_WINDOW};
use tessera_proto::v1::jobs_server::JobsServer;
use tessera_proto::v1::workers_server::WorkersServer;
use tessera_telemetry::metrics::{bind_metrics, serve_metrics, Readiness};
use tessera_telemetry::propagation::server_span;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use tessera_proto::MAX_MESSAGE_BYTES as MAX_MESSAGE;
/// Longest pause between two attempts to reach the state store at start.
const MAX_STATE_WAIT: Duration = Duration::from_secs(10);
/// How often the health status is refreshed from the state store.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
use crate::metrics::STORE_ANSWER;

/// Opens the state store the configuration names.
pub async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn StateBackend>> {
    Ok(match (&config.redis, config.embedded) {
        (Some(url), _) => {
            let connecting = || format!("connecting to Redis at {url}");
            Arc::new(match &config.redis_ca {
                Some(ca) => {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("reading --redis-ca {}", ca.display()))?;
                    RedisBackend::connect_with_ca(url, &config.redis_prefix, pem)
                        .await
                        .with_context(connecting)?
                }
                None => RedisBackend::connect(url, &config.redis_prefix)
                    .await
                    .with_context(connecting)?,
            })
        }
        (None, _) if !config.redis_sentinel.is_empty() => {
            let master = config.redis_master_name.as_deref().unwrap_or_default();
            Arc::new(
                RedisBackend::connect_sentinel(
                    &config.redis_sentinel,
                    master,
                    config.redis_db,
                    config.redis_wait_replicas,
                    &config.redis_prefix,
                )
                .await
                .with_context(|| format!("asking Sentinel for the Redis primary of {master}"))?,
            )
        }
        (None, true) => match &config.state_dir {
            Some(dir) => Arc::new(
                EmbeddedBackend::open(
                    dir,
                    &format!("tessera-coordinator --listen {}", config.listen),
                )
                .with_context(|| format!("opening the state in {}", dir.display()))?,
            ),
            None => Arc::new(EmbeddedBackend::in_memory()),
        },
        (None, false) => {
            bail!("say where state lives: --redis URL or --redis-sentinel (a farm), or --embedded (one machine)")
        }
    })
}

/// Opens the state store like [`open_backend`], waiting with doubling pauses while Redis cannot
/// be reached, so a coordinator started before its Redis (or while Redis restarts) comes up
/// when Redis does. A URL that cannot be right fails at once; `shutdown` ends the wait.
async fn open_backend_waiting(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn StateBackend>> {
    if let Some(url) = &config.redis {
        redis::Client::open(url.as_str())
            .with_context(|| format!("--redis '{url}' is not a Redis URL"))?;
    }
    let mut pause = Duration::from_millis(100);
    loop {
        let failure = match open_backend(config).await {
            Ok(backend) => match backend.ping().await {
                Ok(()) => return Ok(backend),
                Err(e) => anyhow::Error::new(e).context("the state store does not answer"),
            },
            Err(e) if !config.uses_redis() => return Err(e),
            Err(e) => e,
        };
        tracing::warn!("{failure:#}; retrying in {:.1} s", pause.as_secs_f64());
        tokio::select! {
            _ = shutdown.cancelled() => return Err(failure.context("stopped while waiting for the state store")),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_STATE_WAIT);
    }
}

/// Serves until `shutdown` is cancelled, then drains and returns.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::state::ensure_tls_provider();
    let backend = open_backend_waiting(&config, &shutdown).await?;
    let store = ArtifactStore::open(&config.store, config.max_artifact_bytes)?;
    store.check().await?;
    let auth = match &config.auth_file {
        Some(path) => Some(Arc::new(Auth::load(path)?)),
        None => None,
    };
    let webhooks = Arc::new(config.webhooks(auth.clone())?);
    let metrics = Arc::new(Metrics::new(backend.clone(), 3 * config.lease_ms));
    let deliverer = Arc::new(Deliverer::new(
        backend.clone(),
        webhooks.clone(),
        metrics.clone(),
    )?);
    let coordinator = Arc::new(Coordinator {
        backend: backend.clone(),
        store,
        policy: config.policy(),
        lease_ms: config.lease_ms,
        max_wait_ms: config.max_wait_ms,
        limits: config.limits(),
        catalog: config.catalog(),
        defaults: Settings::farm_defaults(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        auth: auth.clone(),
        webhooks,
    });

    let (metrics_listener, metrics_address) = bind_metrics(config.metrics_listen).await?;
    println!("tessera-coordinator metrics on {metrics_address}");

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    // The one line on standard output: tests and `tessera up` read the bound port from it.
    println!("tessera-coordinator listening on {address}");
    std::io::stdout().flush()?;
    tracing::info!(
        %address,
        lease_ms = config.lease_ms,
        tls = config.tls_cert.is_some(),
        auth = auth.is_some(),
        "serving tessera.v1"
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::default();
    let tasks = [
        tokio::spawn(crate::reaper::reap(
            coordinator.clone(),
            config.reap_ms(),
            shutdown.clone(),
        )),
        tokio::spawn(deliverer.run(shutdown.clone())),
        tokio::spawn(watch_health(
            backend,
            health,
            readiness.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(serve_metrics_logged(
            metrics_listener,
            metrics,
            readiness,
            shutdown.clone(),
        )),
    ];
    let jobs_gate = Gate::new(auth.clone(), "Jobs", &[Role::Client, Role::Admin]);
    let workers_gate = Gate::new(auth, "Workers", &[Role::Worker]);
    let result = server_builder(&config)?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .trace_fn(server_span)
        .add_service(health_service)
        .add_service(InterceptedService::new(
            JobsServer::new(JobsApi::new(coordinator.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
            jobs_gate,
        ))
        .add_service(InterceptedService::new(
            WorkersServer::new(WorkersApi::new(coordinator)).max_decoding_message_size(MAX_MESSAGE),
            workers_gate,
        ))
        // Without TCP_NODELAY a streamed download waits ~40 ms on delayed ACKs between frames.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(result?)
}

/// A server builder, with TLS when the configuration has a certificate.
fn server_builder(config: &Config) -> anyhow::Result<Server> {
    let builder = Server::builder();
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(builder);
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
    };
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    builder
        .tls_config(ServerTlsConfig::new().identity(identity))
        .context("--tls-cert/--tls-key are not a PEM certificate and its key")
}

/// Serves `/metrics` and `/healthz`; a failure is logged, not fatal: the farm keeps working
/// unobserved.
async fn serve_metrics_logged(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    if let Err(e) = serve_metrics(listener, metrics, Some(readiness), shutdown).await {
        tracing::error!("{e:#}");
    }
}

/// Reports SERVING while the state store answers, NOT_SERVING otherwise and after shutdown,
/// over gRPC health and on `/healthz`.
async fn watch_health(
    backend: Arc<dyn StateBackend>,
    health: tonic_health::server::HealthReporter,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut serving = None;
    loop {
        let up = matches!(
            tokio::time::timeout(STORE_ANSWER, backend.ping()).await,
            Ok(Ok(()))
        );
        readiness.set(up);
        if serving != Some(up) {
            set_health(&health, up).await;
            serving = Some(up);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
    readiness.set(false);
    set_health(&health, false).await;
}

async fn set_health(health: &tonic_health::server::HealthReporter, up: bool) {
    let status = if up {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status("tessera.v1.Jobs", status).await;
    health
        .set_service_status("tessera.v1.Workers", status)
        .await;
}
