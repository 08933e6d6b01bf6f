//! One line of a worker's `--timings` file: when each step of one task happened on that
//! worker. The worker writes these and `tessera-bench farm` reads them, so the format is
//! defined once, here.

use serde::{Deserialize, Serialize};

/// When each step of one finished task happened, in milliseconds since the worker registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskTiming {
    /// Task id.
    pub task: String,
    /// `generate`, `upscale_tile` or `stitch`.
    pub kind: String,
    /// Leased while the previous task worked (lease-ahead).
    pub ahead: bool,
    /// The lease request went out.
    pub asked_ms: f64,
    /// The lease reply arrived.
    pub leased_ms: f64,
    /// Of the lease request, how long the coordinator waited for work to exist.
    pub waited_ms: f64,
    /// The inputs were downloaded.
    pub fetched_ms: f64,
    /// The work began.
    pub started_ms: f64,
    /// The work ended.
    pub ended_ms: f64,
    /// The output was on its way back (after waiting for the previous hand-back): the worker
    /// was free for the next task.
    pub released_ms: f64,
}
