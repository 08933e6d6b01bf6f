//! `tessera watch`: follows a job's event stream to its end. A coordinator that restarts or a
//! network that drops does not end the watch: it reconnects with backoff and resumes after the
//! last event it showed, so nothing is shown twice or missed.

use std::time::Duration;

use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tonic::Code;

use crate::error::{with_causes, JobEnded, Unreachable};
use crate::farm::{Address, Farm};
use crate::output::{event_json, print_json, shown};
use crate::progress::Bars;

/// First wait before reconnecting; doubled each failed try up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Tries in a row before giving up (about a minute with the backoff above).
const MAX_RETRIES: u32 = 35;

/// Follows `job` until its `JobDone`; Ok when it succeeded, [`JobEnded`] when it failed or was
/// cancelled.
pub async fn watch(address: &Address, job: &str, json: bool) -> anyhow::Result<()> {
    let url = &address.url;
    let mut farm = Farm::connect(address).await?;
    let status = farm.job(job).await?;
    let mut bars = (!json).then(|| Bars::new(&status));
    let mut waiting = Waiting::default();
    waiting.show(&status, &bars);
    let mut cursor = String::new();
    let mut retries = 0;
    loop {
        let mut why = match farm.watch(job, &cursor).await {
            Ok(mut stream) => loop {
                let Ok(message) = tokio::time::timeout(QUIET, stream.message()).await else {
                    // Nothing happened for a while: say why, if the farm knows.
                    if let Ok(status) = farm.job(job).await {
                        waiting.show(&status, &bars);
                    }
                    continue;
                };
                match message {
                    Ok(Some(event)) => {
                        retries = 0;
                        cursor.clone_from(&event.cursor);
                        match &mut bars {
                            Some(bars) => bars.show(&event),
                            None => print_json(&event_json(&event)),
                        }
                        if let Some(Event::JobDone(done)) = &event.event {
                            if let Some(bars) = &bars {
                                bars.finish(done);
                            }
                            return outcome(job, done);
                        }
                    }
                    Ok(None) => break "the event stream ended early".to_string(),
                    Err(status) if retryable(status.code()) => break with_causes(&status),
                    Err(status) => return Err(farm.refused(status)),
                }
            },
            Err(status) if retryable(status.code()) => with_causes(&status),
            Err(status) => return Err(farm.refused(status)),
        };
        // Reconnect until a coordinator answers at the same address again; each try's note
        // says why the try before it failed, not why the first one did.
        farm = loop {
            retries += 1;
            if retries > MAX_RETRIES {
                anyhow::bail!(
                    "lost the coordinator at {url} and it did not come back: {why} (rerun \
                     `tessera watch {job}` once it is up)"
                );
            }
            let note = format!("reconnecting to {url} (try {retries}): {why}");
            match &bars {
                Some(bars) => bars.note(&note),
                None => eprintln!("{note}"),
            }
            tokio::time::sleep(backoff(retries)).await;
            match Farm::connect(address).await {
                Ok(farm) => break farm,
                Err(error) => why = connect_failure(&error),
            }
        };
    }
}

/// How long a watch goes without events before it asks the coordinator why.
const QUIET: Duration = Duration::from_secs(10);

/// The last reason shown for a job not moving, so each is shown once.
#[derive(Default)]
struct Waiting(String);

impl Waiting {
    /// Shows why the job waits (above the bars, or as a JSON `waiting` line), when that is
    /// news.
    fn show(&mut self, status: &v1::JobStatus, bars: &Option<Bars>) {
        if status.waiting_for.is_empty() || status.waiting_for == self.0 {
            return;
        }
        self.0.clone_from(&status.waiting_for);
        match bars {
            Some(bars) => bars.note(&shown(&status.waiting_for)),
            None => print_json(&serde_json::json!({
                "job_id": status.job_id, "type": "waiting", "reason": status.waiting_for
            })),
        }
    }
}

/// Whether a failed watch may succeed on a new connection: the transport failed or the server
/// went away, as opposed to a refusal such as an unknown job.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
    )
}

/// Why a reconnection failed, in the words of a reconnect note: the transport's own account
/// when the coordinator is unreachable (the note already names the address), the whole error
/// otherwise.
fn connect_failure(error: &anyhow::Error) -> String {
    match error.downcast_ref::<Unreachable>() {
        Some(unreachable) => unreachable.detail.clone(),
        None => format!("{error:#}"),
    }
}

fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << retry.min(10).saturating_sub(1))
        .min(MAX_BACKOFF)
}

fn outcome(job: &str, done: &v1::JobDone) -> anyhow::Result<()> {
    match done.state() {
        v1::JobState::Succeeded => Ok(()),
        state => Err(JobEnded {
            job: job.to_string(),
            state,
            failed: done.results_failed,
        }
        .into()),
    }
}
