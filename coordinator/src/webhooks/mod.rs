//! Completion webhooks: on each finished result and at a job's end the coordinator POSTs a
//! signed JSON event to the URL the job was submitted with (or its tenant's default), so
//! users need not poll. Delivery is at least once: the outbox is the job's own event stream in
//! the state store with a per-job cursor moved only after the receiver answers 2xx, so events
//! survive a coordinator's crash, and every attempt at one event carries one delivery id for
//! receivers to drop duplicates by. Failed attempts are retried with exponential backoff for
//! a bounded time, then the event is given up and counted.
//!
//! - [`allow`]: where a URL may point (`--webhook-allow`; internal addresses refused).
//! - [`sign`]: the HMAC-SHA256 signature and the headers.
//! - [`payload`]: the JSON body of each event.
//! - [`deliver`]: the loop that claims due jobs and POSTs their events.

pub mod allow;
pub mod deliver;
pub mod payload;
pub mod sign;

use crate::auth::Auth;
use allow::AllowList;
use sign::Secret;
use std::sync::Arc;

/// Longest pause between two attempts at one event, however many failed.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;

/// How failed deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Pause after the first failed attempt; each further failure doubles it, up to
    /// [`MAX_BACKOFF_MS`].
    pub first_ms: u64,
    /// How long one event is retried before it is given up.
    pub for_ms: u64,
    /// Longest one attempt may take (connecting, sending, the receiver's answer).
    pub timeout_ms: u64,
}

impl Retry {
    /// The pause after `tries` failed attempts (the first failure has `tries` 0).
    pub fn delay_ms(&self, tries: u32) -> u64 {
        self.first_ms
            .saturating_mul(1u64 << tries.min(40))
            .min(MAX_BACKOFF_MS)
    }

    /// How long a claim on a job lasts: longer than an attempt, so only a coordinator that
    /// died (or a store that stalled) lets another deliver the same event meanwhile.
    pub fn claim_ms(&self) -> u64 {
        2 * self.timeout_ms + 1_000
    }
}

/// Where webhooks may go, how they are signed and retried: what submissions are checked
/// against and deliveries follow.
#[derive(Debug)]
pub struct Webhooks {
    /// Where URLs may point.
    pub allow: AllowList,
    /// Signs the deliveries of jobs whose tenant has no secret of its own (or no tenant).
    pub farm_secret: Option<Secret>,
    /// Tenants' own secrets and default URLs.
    pub auth: Option<Arc<Auth>>,
    /// How failed deliveries are retried.
    pub retry: Retry,
}

impl Webhooks {
    /// The secret that signs deliveries of `tenant`'s jobs: its own, else the farm's.
    pub fn secret(&self, tenant: &str) -> Option<&Secret> {
        self.auth
            .as_ref()
            .and_then(|auth| auth.webhook_secret(tenant))
            .or(self.farm_secret.as_ref())
    }

    /// The webhook a job of `tenant` submitted with `asked` ("" for none) gets: `asked`, else
    /// the tenant's default, checked against the allow list (its host resolved) and needing a
    /// secret to sign with. `Ok("")` for no webhook; the error says what is wrong.
    pub async fn admit(&self, asked: &str, tenant: &str) -> Result<String, String> {
        let default = self.auth.as_ref().and_then(|a| a.webhook_default(tenant));
        let text = match (asked, default) {
            ("", None) => return Ok(String::new()),
            ("", Some(default)) => default,
            (asked, _) => asked,
        };
        let url = self.allow.vet(text).await?;
        if self.secret(tenant).is_none() {
            let whose = if tenant.is_empty() {
                "jobs without a tenant".to_string()
            } else {
                format!("tenant '{tenant}'")
            };
            return Err(format!(
                "the farm has no webhook secret for {whose} to sign deliveries with: set \
                 tenants.{tenant}.webhook_secret in the auth file, or start the coordinator \
                 with --webhook-secret-file",
                tenant = if tenant.is_empty() { "NAME" } else { tenant }
            ));
        }
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let retry = Retry {
            first_ms: 1_000,
            for_ms: 60_000,
            timeout_ms: 10_000,
        };
        let delays: Vec<u64> = (0..4).map(|t| retry.delay_ms(t)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(retry.delay_ms(30), MAX_BACKOFF_MS);
        assert_eq!(retry.delay_ms(u32::MAX), MAX_BACKOFF_MS);
    }

    #[tokio::test]
    async fn a_webhook_needs_a_secret_and_an_allowed_address() {
        let hooks = Webhooks {
            allow: AllowList::default(),
            farm_secret: None,
            auth: None,
            retry: Retry {
                first_ms: 1,
                for_ms: 1,
                timeout_ms: 1,
            },
        };
        assert_eq!(hooks.admit("", "").await, Ok(String::new()));
        let e = hooks.admit("https://203.0.113.7/h", "").await.unwrap_err();
        assert!(
            e.contains("no webhook secret") && e.contains("--webhook-secret-file"),
            "{e}"
        );
        let e = hooks
            .admit("http://169.254.169.254/", "")
            .await
            .unwrap_err();
        assert!(e.contains("link-local"), "{e}");
    }
}
