//! The delivery loop: one task per coordinator claims jobs whose webhook events are due,
//! POSTs each job's next event, and moves the job's cursor only once the receiver answered
//! 2xx (at least once: a crash between the answer and the move sends the event again, with
//! the same delivery id). A failed attempt is retried after a doubling pause, and an event
//! failing for the whole retry time is given up, so one dead receiver cannot hold a job's
//! outbox for ever. Claims expire, so a coordinator that dies mid-delivery only delays it.

use super::payload::{body, delivery_id, event_type};
use super::sign::{signature, DELIVERY, EVENT, SIGNATURE, TIMESTAMP};
use super::Webhooks;
use crate::api::now_ms;
use crate::metrics::Metrics;
use crate::state::{Event, EventKind, StateBackend, StateResult, WebhookClaim, WebhookStep};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Most jobs one coordinator delivers to at once.
const IN_FLIGHT: usize = 16;
/// Events read per look at a job's stream.
const READ: usize = 256;
/// How often the outbox is looked at while nothing finishes meanwhile.
const POLL: Duration = Duration::from_millis(200);

/// What a delivery needs: the store, the rules, an HTTP client that resolves names through
/// the allow list, and the metrics it counts in.
pub struct Deliverer {
    backend: Arc<dyn StateBackend>,
    hooks: Arc<Webhooks>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

/// Resolves names for the HTTP client, refusing any that has an address the allow list does
/// not allow: the checked addresses are the ones connected to, so a name cannot pass the
/// check and then resolve elsewhere (DNS rebinding).
struct CheckedResolver(Arc<Webhooks>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let hooks = self.0.clone();
        Box::pin(async move {
            let addresses = hooks.allow.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Deliverer {
    /// A deliverer following `hooks`. Redirects are not followed (a receiver could send the
    /// request on to an address the list refuses) and no proxy is used.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        hooks: Arc<Webhooks>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Deliverer> {
        let client = reqwest::Client::builder()
            .dns_resolver(CheckedResolver(hooks.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_millis(hooks.retry.timeout_ms))
            .user_agent(concat!("tessera-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            backend,
            hooks,
            client,
            metrics,
        })
    }

    /// Delivers until `shutdown`; deliveries in flight then are dropped, their claims expire
    /// and the events are sent again later.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut flying = JoinSet::new();
        let mut store_down = false;
        loop {
            while flying.try_join_next().is_some() {}
            let room = IN_FLIGHT - flying.len();
            if room > 0 {
                let claim_ms = self.hooks.retry.claim_ms();
                match self.backend.webhook_claim(now_ms(), room, claim_ms).await {
                    Ok(claims) => {
                        store_down = false;
                        for claim in claims {
                            flying.spawn(self.clone().deliver_logged(claim));
                        }
                    }
                    Err(e) if !store_down => {
                        store_down = true;
                        tracing::warn!("webhook outbox: {e}");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
                Some(_) = flying.join_next(), if !flying.is_empty() => {}
            }
        }
        flying.shutdown().await;
    }

    async fn deliver_logged(self: Arc<Self>, claim: WebhookClaim) {
        if let Err(e) = self.deliver(&claim).await {
            tracing::warn!(job = %claim.job, "webhook delivery: {e}");
        }
    }

    /// Delivers the next webhook event of a claimed job, or passes over the events before it
    /// when none is one.
    async fn deliver(&self, claim: &WebhookClaim) -> StateResult<()> {
        let (job, from) = (claim.job.as_str(), claim.cursor.as_str());
        let events = self.backend.events(job, from, READ, Duration::ZERO).await?;
        let Some(event) = events.iter().find(|e| e.kind.is_webhook_event()) else {
            let to = events.last().map_or(from, |e| e.cursor.as_str());
            let step = WebhookStep::Skipped;
            self.backend
                .webhook_advance(job, from, to, &step, now_ms())
                .await?;
            return Ok(());
        };
        let Some(payload) = self.payload(job, event).await? else {
            return Ok(());
        };
        let attempt = self.post(claim, event, payload).await;
        let now = now_ms();
        let (outcome, moved) = match attempt {
            Ok(()) => {
                let step = WebhookStep::Delivered;
                let moved = self
                    .backend
                    .webhook_advance(job, from, &event.cursor, &step, now)
                    .await?;
                ("delivered", moved)
            }
            Err(error) => self.failed(claim, event, error, now).await?,
        };
        if moved {
            self.metrics.webhook(outcome);
        }
        Ok(())
    }

    /// Records a failed attempt: retried after the backoff, or given up once the event has
    /// failed for the whole retry time. Answers the outcome and whether it was recorded.
    async fn failed(
        &self,
        claim: &WebhookClaim,
        event: &Event,
        error: String,
        now: u64,
    ) -> StateResult<(&'static str, bool)> {
        let (job, from) = (claim.job.as_str(), claim.cursor.as_str());
        let retry = &self.hooks.retry;
        let since = match claim.failing_since_ms {
            0 => now,
            since => since,
        };
        if now.saturating_sub(since) >= retry.for_ms {
            tracing::warn!(job, event = %event.cursor, "webhook event given up: {error}");
            let step = WebhookStep::Dropped(error);
            let moved = self
                .backend
                .webhook_advance(job, from, &event.cursor, &step, now)
                .await?;
            return Ok(("dropped", moved));
        }
        tracing::info!(
            job,
            tries = claim.tries + 1,
            "webhook attempt failed: {error}"
        );
        let retry_at = now + retry.delay_ms(claim.tries);
        let moved = self
            .backend
            .webhook_failed(job, from, &error, retry_at, now)
            .await?;
        Ok(("failed", moved))
    }

    /// The body announcing `event` of `job`; `None` when the job is gone.
    async fn payload(&self, job: &str, event: &Event) -> StateResult<Option<Vec<u8>>> {
        let Some(record) = self.backend.job(job).await? else {
            return Ok(None);
        };
        let result = match &event.kind {
            EventKind::TaskDone { unit, .. } => self
                .backend
                .results(job, *unit as usize, 1)
                .await?
                .and_then(|(page, _)| page.into_iter().next()),
            _ => None,
        };
        let value = body(&record, event, result.as_ref());
        Ok(Some(
            serde_json::to_vec(&value).expect("JSON values serialise"),
        ))
    }

    /// One attempt: the signed POST; `Err` says why it did not count as delivered.
    async fn post(
        &self,
        claim: &WebhookClaim,
        event: &Event,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let secret = self.hooks.secret(&claim.tenant).ok_or_else(|| {
            format!(
                "the farm has no webhook secret for tenant '{}' any more",
                claim.tenant
            )
        })?;
        let url = self.hooks.allow.check_url(&claim.url)?;
        let timestamp = now_ms() / 1000;
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE, signature(secret, timestamp, &payload))
            .header(TIMESTAMP, timestamp.to_string())
            .header(DELIVERY, delivery_id(&claim.job, event))
            .header(EVENT, event_type(&event.kind))
            .body(payload)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(format!("the receiver answered {status}"))
    }
}

/// An HTTP failure with its causes, without the URL (which may hold the receiver's own
/// credentials, and ends up in logs).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
