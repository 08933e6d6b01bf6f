//! The reaper: requeues the tasks whose lease expired, so work held by a dead worker goes to a
//! live one. Safe with several coordinators: each step is one atomic transition, so a task is
//! requeued once, by whoever gets there first.
//!
//! A lease expires when its worker stops heartbeating, but a worker cannot heartbeat while the
//! state store is away (the coordinator answers UNAVAILABLE) or while this coordinator was not
//! running. So no lease expires while the store does not answer, nor for one lease length after
//! it answers again or after this coordinator starts: the workers' retried heartbeats renew
//! their leases first, and only the leases of workers that are really gone expire.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{now_ms, Coordinator};
use crate::metrics::STORE_ANSWER;

/// Expired leases handled per reaper step.
const REAP_BATCH: usize = 500;

/// Requeues expired leases every `every_ms` until `shutdown`, within the grace described above.
pub async fn reap(c: Arc<Coordinator>, every_ms: u64, shutdown: CancellationToken) {
    let mut grace = Grace::new(Duration::from_millis(c.lease_ms), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store_up = matches!(
            tokio::time::timeout(STORE_ANSWER, c.backend.ping()).await,
            Ok(Ok(()))
        );
        if grace.allows_expiry(store_up, Instant::now()) {
            expire_all(&c).await;
        }
    }
}

/// Requeues every expired lease, a batch at a time.
async fn expire_all(c: &Coordinator) {
    loop {
        match c.backend.expire(&c.policy, now_ms(), REAP_BATCH).await {
            Ok(requeued) => {
                c.metrics.leases_expired(requeued.len());
                if !requeued.is_empty() {
                    tracing::info!(?requeued, "leases expired");
                }
                if requeued.len() < REAP_BATCH {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("reaper: {e}");
                return;
            }
        }
    }
}

/// When expiring leases is fair to the workers: not while the store is down, nor within one
/// lease of its return or of this coordinator's start.
#[derive(Debug)]
struct Grace {
    lease: Duration,
    /// No lease expires before this instant.
    until: Instant,
    /// The store did not answer the last check.
    store_down: bool,
}

impl Grace {
    fn new(lease: Duration, start: Instant) -> Grace {
        Grace {
            lease,
            until: start + lease,
            store_down: false,
        }
    }

    /// Whether leases may expire now, given whether the store answered.
    fn allows_expiry(&mut self, store_up: bool, now: Instant) -> bool {
        if !store_up {
            if !self.store_down {
                tracing::warn!("the state store does not answer: no lease expires until it does");
            }
            self.store_down = true;
            return false;
        }
        if std::mem::take(&mut self.store_down) {
            self.until = now + self.lease;
            tracing::info!(
                "the state store answers again: leases expire from {:?} on, once workers could heartbeat",
                self.lease
            );
        }
        now >= self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_wait_one_lease_after_start_and_after_the_store_returns() {
        let lease = Duration::from_millis(1000);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut grace = Grace::new(lease, start);
        assert!(!grace.allows_expiry(true, at(999)), "just started");
        assert!(grace.allows_expiry(true, at(1000)));
        assert!(!grace.allows_expiry(false, at(5000)), "the store is down");
        assert!(!grace.allows_expiry(false, at(9000)), "still down");
        assert!(!grace.allows_expiry(true, at(9500)), "back, within a lease");
        assert!(!grace.allows_expiry(true, at(10499)));
        assert!(
            grace.allows_expiry(true, at(10500)),
            "a lease after its return"
        );
    }
}
