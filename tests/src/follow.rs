//! Following a job through faults: clients that reconnect while coordinators fail over or their
//! state store comes back, as `tessera watch` does, so a test sees every event of a job once
//! however often its stream broke.

use std::time::{Duration, Instant};

use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_proto::v1::jobs_client::JobsClient;
use tonic::transport::Channel;

/// Longest a test waits for a job's next event or for a coordinator to answer.
pub const PATIENCE: Duration = Duration::from_secs(240);

/// A Jobs client of `url`, retried until one connects.
pub async fn jobs(url: &str) -> JobsClient<Channel> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match JobsClient::connect(url.to_string()).await {
            Ok(client) => return client,
            Err(e) => assert!(Instant::now() < deadline, "cannot reach {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's events, followed across failures: a broken stream is reopened after the last
/// cursor seen, so no event is missed or seen twice.
pub struct Follower {
    url: String,
    /// The job followed.
    pub job: String,
    cursor: String,
    /// Every event so far, in order.
    pub events: Vec<Event>,
}

impl Follower {
    /// Follows `job` at the coordinator (or balancer) `url`, from its first event.
    pub fn new(url: &str, job: &str) -> Follower {
        Follower {
            url: url.to_string(),
            job: job.to_string(),
            cursor: String::new(),
            events: Vec::new(),
        }
    }

    /// Tasks accepted so far.
    pub fn done(&self) -> usize {
        let done = |e: &&Event| matches!(e, Event::TaskDone(_));
        self.events.iter().filter(done).count()
    }

    /// Whether the job has ended.
    pub fn ended(&self) -> bool {
        matches!(self.events.last(), Some(Event::JobDone(_)))
    }

    /// Follows until `done` tasks were accepted or the job ended; fails when no event came
    /// for [`PATIENCE`].
    pub async fn until_done(&mut self, done: usize) {
        let mut deadline = Instant::now() + PATIENCE;
        while self.done() < done && !self.ended() {
            assert!(
                Instant::now() < deadline,
                "job {} made no progress in {PATIENCE:?}: {:?}",
                self.job,
                self.events.last()
            );
            let mut client = jobs(&self.url).await;
            let request = v1::WatchJobRequest {
                job_id: self.job.clone(),
                after: self.cursor.clone(),
                include_previews: false,
            };
            let Ok(stream) = client.watch_job(request).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            loop {
                let next = tokio::time::timeout_at(deadline.into(), stream.message()).await;
                let Ok(Ok(Some(message))) = next else { break };
                self.cursor = message.cursor;
                self.events.push(message.event.expect("events have a body"));
                deadline = Instant::now() + PATIENCE;
                if self.done() >= done || self.ended() {
                    return;
                }
            }
        }
    }

    /// Follows until the job ends.
    pub async fn until_end(&mut self) {
        self.until_done(usize::MAX).await
    }
}
