//! The state store for one machine without Redis (`tessera up`): the [`Model`] behind a mutex,
//! made durable by a journal of operations.
//!
//! With a state directory, every operation that changes the state is appended to
//! `journal.jsonl` before its answer is returned; on start the latest `state.json` snapshot is
//! loaded and the journal replayed (the transitions are deterministic, time included), then a
//! fresh snapshot is written and the journal emptied. A write cut short by a crash can only be
//! the journal's last line, without its newline, and is dropped: its operation was never
//! answered. Any other line that does not read back refuses the start, naming file and line,
//! rather than dropping operations that were answered.
//!
//! One coordinator owns the directory ([`DirLock`]) and appends with `O_APPEND`, so the journal
//! holds nothing but whole records one after the other; the snapshot is in place before the
//! journal it replaces is emptied, so a crash at any point keeps every answered operation.
//!
//! The state sits behind an async mutex, so waiting for it never blocks a runtime thread; an
//! operation that writes the journal (and now and then a synced snapshot) runs on the blocking
//! pool while it holds the state, so no reader sees a change before its record is written.

use super::dir_lock::DirLock;
use super::model::Model;
use super::{
    CancelOutcome, CompleteOutcome, ControlOutcome, CreateOutcome, Event, FailOutcome, FailVerdict,
    FarmStats, HeartbeatOutcome, JobRecord, LeaseRef, NewJob, Policy, Progress, RateSample, Rates,
    ResultRecord, StateBackend, StateError, StateResult, TaskRecord, WebhookClaim, WebhookStep,
    WorkerRecord,
};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::task::{ArtifactRef, Capabilities, NewTask};
use tokio::sync::{watch, Mutex, Notify};

/// Journal entries after which the state is snapshotted and the journal emptied.
const COMPACT_AFTER: u64 = 50_000;

/// One state-changing operation, as journaled.
#[derive(Serialize, Deserialize)]
enum Op {
    CreateJob {
        job: NewJob,
        now: u64,
    },
    RegisterWorker {
        worker: WorkerRecord,
    },
    DeregisterWorker {
        id: String,
        policy: Policy,
        now: u64,
    },
    Lease {
        worker: String,
        caps: Capabilities,
        policy: Policy,
        now: u64,
        lease_ms: u64,
    },
    Heartbeat {
        task: String,
        attempt: u32,
        worker: String,
        progress: Progress,
        policy: Policy,
        now: u64,
        lease_ms: u64,
    },
    Complete {
        task: String,
        attempt: u32,
        worker: String,
        output: ArtifactRef,
        followups: Vec<NewTask>,
        policy: Policy,
        now: u64,
    },
    Fail {
        task: String,
        attempt: u32,
        worker: String,
        error: String,
        retryable: bool,
        policy: Policy,
        now: u64,
    },
    RedoInput {
        task: String,
        attempt: u32,
        worker: String,
        key: String,
        producer: Option<String>,
        policy: Policy,
        now: u64,
    },
    Expire {
        policy: Policy,
        now: u64,
        limit: usize,
    },
    Cancel {
        job: String,
        policy: Policy,
        now: u64,
    },
    SetPriority {
        job: String,
        priority: i32,
    },
    Pause {
        job: String,
    },
    Resume {
        job: String,
    },
    Release {
        task: String,
        attempt: u32,
        worker: String,
        policy: Policy,
        now: u64,
    },
    RecordRate {
        sample: RateSample,
        now: u64,
    },
    WebhookClaim {
        now: u64,
        limit: usize,
        lease_ms: u64,
    },
    WebhookAdvance {
        job: String,
        from: String,
        to: String,
        step: WebhookStep,
        now: u64,
    },
    WebhookFailed {
        job: String,
        from: String,
        error: String,
        retry_at: u64,
        now: u64,
    },
}

/// What an operation answered.
enum Answer {
    Created(CreateOutcome),
    Unit,
    Tasks(Vec<String>),
    Leased(Option<Box<TaskRecord>>),
    Heartbeat(HeartbeatOutcome),
    Complete(CompleteOutcome),
    Fail(FailOutcome),
    Verdict(FailVerdict),
    Cancel(CancelOutcome),
    Control(ControlOutcome),
    Released(bool),
    Claimed(Vec<WebhookClaim>),
    Changed(bool),
}

impl Op {
    fn apply(&self, m: &mut Model) -> Answer {
        match self {
            Op::CreateJob { job, now } => Answer::Created(m.create_job(job, *now)),
            Op::RegisterWorker { worker } => {
                m.register_worker(worker);
                Answer::Unit
            }
            Op::DeregisterWorker { id, policy, now } => {
                Answer::Tasks(m.deregister_worker(id, policy, *now))
            }
            Op::Lease {
                worker,
                caps,
                policy,
                now,
                lease_ms,
            } => Answer::Leased(m.lease(worker, caps, policy, *now, *lease_ms).map(Box::new)),
            Op::Heartbeat {
                task,
                attempt,
                worker,
                progress,
                policy,
                now,
                lease_ms,
            } => Answer::Heartbeat(m.heartbeat(
                LeaseRef {
                    task,
                    attempt: *attempt,
                    worker,
                },
                progress,
                policy,
                *now,
                *lease_ms,
            )),
            Op::Complete {
                task,
                attempt,
                worker,
                output,
                followups,
                policy,
                now,
            } => Answer::Complete(m.complete(
                LeaseRef {
                    task,
                    attempt: *attempt,
                    worker,
                },
                output,
                followups,
                policy,
                *now,
            )),
            Op::Fail {
                task,
                attempt,
                worker,
                error,
                retryable,
                policy,
                now,
            } => Answer::Fail(m.fail(
                LeaseRef {
                    task,
                    attempt: *attempt,
                    worker,
                },
                error,
                *retryable,
                policy,
                *now,
            )),
            Op::RedoInput {
                task,
                attempt,
                worker,
                key,
                producer,
                policy,
                now,
            } => Answer::Verdict(m.redo_input(
                LeaseRef {
                    task,
                    attempt: *attempt,
                    worker,
                },
                key,
                producer.as_deref(),
                policy,
                *now,
            )),
            Op::Expire { policy, now, limit } => Answer::Tasks(m.expire(policy, *now, *limit)),
            Op::Cancel { job, policy, now } => Answer::Cancel(m.cancel(job, policy, *now)),
            Op::SetPriority { job, priority } => Answer::Control(m.set_priority(job, *priority)),
            Op::Pause { job } => Answer::Control(m.pause(job)),
            Op::Resume { job } => Answer::Control(m.resume(job)),
            Op::RecordRate { sample, now } => {
                m.record_rate(sample, *now);
                Answer::Unit
            }
            Op::Release {
                task,
                attempt,
                worker,
                policy,
                now,
            } => {
                let lease = LeaseRef {
                    task,
                    attempt: *attempt,
                    worker,
                };
                Answer::Released(m.release(lease, policy, *now))
            }
            Op::WebhookClaim {
                now,
                limit,
                lease_ms,
            } => Answer::Claimed(m.webhook_claim(*now, *limit, *lease_ms)),
            Op::WebhookAdvance {
                job,
                from,
                to,
                step,
                now,
            } => Answer::Changed(m.webhook_advance(job, from, to, step, *now)),
            Op::WebhookFailed {
                job,
                from,
                error,
                retry_at,
                now,
            } => Answer::Changed(m.webhook_failed(job, from, error, *retry_at, *now)),
        }
    }
}

/// Where the state is persisted.
struct Journal {
    dir: PathBuf,
    file: File,
    entries: u64,
    _lock: DirLock,
}

impl Journal {
    fn journal_path(dir: &Path) -> PathBuf {
        dir.join("journal.jsonl")
    }

    fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Claims `dir` for `owner`, loads the state from it and starts a new, empty journal there.
    fn open(dir: &Path, owner: &str) -> StateResult<(Model, Journal)> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock = DirLock::acquire(dir, owner)?;
        let snapshot = Self::snapshot_path(dir);
        let mut model: Model = match std::fs::read(&snapshot) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                what: snapshot.display().to_string(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Model::default(),
            Err(e) => return Err(io_error(&snapshot, e)),
        };
        replay(&Self::journal_path(dir), &mut model)?;
        // Appending, not truncating: the replayed operations stay in the journal until the
        // snapshot below holds them.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(Self::journal_path(dir))
            .map_err(|e| io_error(dir, e))?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            entries: 0,
            _lock: lock,
        };
        journal.snapshot(&model)?;
        Ok((model, journal))
    }

    fn append(&mut self, op: &Op, model: &Model) -> StateResult<()> {
        let mut line = serde_json::to_vec(op).expect("operations serialise");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| io_error(&self.dir, e))?;
        self.entries += 1;
        if self.entries >= COMPACT_AFTER {
            self.snapshot(model)?;
        }
        Ok(())
    }

    /// Writes the whole state (atomically, by rename) and empties the journal.
    fn snapshot(&mut self, model: &Model) -> StateResult<()> {
        let path = Self::snapshot_path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(model).expect("the state serialises");
        std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        // The same append-only handle, emptied: the next record goes to offset 0.
        self.file
            .set_len(0)
            .map_err(|e| io_error(&Self::journal_path(&self.dir), e))?;
        self.entries = 0;
        Ok(())
    }
}

/// Applies every journal record to `model`, skipping NUL bytes between records. Only a last line without its newline (a write cut
/// short by a crash, never answered) is dropped; any other unreadable line is an error naming
/// it, since dropping it would lose an operation that was answered.
fn replay(path: &Path, model: &mut Model) -> StateResult<()> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    let mut lines = bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .peekable();
    while let Some((i, line)) = lines.next() {
        let complete = line.ends_with(b"\n");
        // NUL runs are holes another writer left (journals from before the directory lock);
        // no record contains one, so the record after a hole is kept.
        let start = line.iter().position(|&b| b != 0).unwrap_or(line.len());
        if start > 0 {
            tracing::warn!(path = %path.display(), line = i + 1, "skipping {start} NUL bytes");
        }
        let line = &line[start..];
        match serde_json::from_slice::<Op>(line) {
            Ok(op) if complete => {
                op.apply(model);
            }
            _ if !complete && lines.peek().is_none() => tracing::warn!(
                path = %path.display(),
                "dropping the journal's last line, cut short by a crash"
            ),
            parsed => {
                return Err(StateError::Corrupt {
                    what: format!("{} line {}", path.display(), i + 1),
                    detail: parsed.err().map_or_else(
                        || "a record without its end of line".to_string(),
                        |e| e.to_string(),
                    ),
                })
            }
        }
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> StateError {
    StateError::Unavailable(format!("{}: {e}", path.display()))
}

struct Inner {
    model: Model,
    journal: Option<Journal>,
}

impl Inner {
    /// Applies `op`, journaling it when `keep` says its answer changed something (a lease that
    /// found nothing did not); returns the answer with whether it queued a task and whether it
    /// added an event. Blocks on the journal's file when there is one.
    fn apply(&mut self, op: Op, keep: fn(&Answer) -> bool) -> StateResult<Applied> {
        let answer = op.apply(&mut self.model);
        if keep(&answer) {
            if let Some(journal) = self.journal.as_mut() {
                journal.append(&op, &self.model)?;
            }
        }
        Ok(Applied {
            answer,
            queued: std::mem::take(&mut self.model.queued_any),
            evented: std::mem::take(&mut self.model.evented),
        })
    }
}

/// An applied operation's answer, with what it means for those waiting on the store.
struct Applied {
    answer: Answer,
    queued: bool,
    evented: bool,
}

/// The in-process state store.
pub struct EmbeddedBackend {
    inner: Arc<Mutex<Inner>>,
    work: Arc<Notify>,
    events: watch::Sender<u64>,
}

impl EmbeddedBackend {
    /// A store kept in memory only (lost when the process ends).
    pub fn in_memory() -> Self {
        Self::with(Model::default(), None)
    }

    /// A store persisted in `dir`, loaded from it if it holds a state. It owns `dir` until it
    /// is dropped; another store opening it meanwhile is refused with [`StateError::InUse`],
    /// naming `owner` (say, what this process serves) with its pid and host.
    pub fn open(dir: &Path, owner: &str) -> StateResult<Self> {
        let (model, journal) = Journal::open(dir, owner)?;
        Ok(Self::with(model, Some(journal)))
    }

    fn with(model: Model, journal: Option<Journal>) -> Self {
        EmbeddedBackend {
            inner: Arc::new(Mutex::new(Inner { model, journal })),
            work: Arc::new(Notify::new()),
            events: watch::channel(0).0,
        }
    }

    async fn read<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.inner.lock().await.model)
    }

    /// Applies and journals `op` (see [`Inner::apply`]), then wakes waiting lease requests and
    /// watchers. A journaled store writes on the blocking pool, holding the state meanwhile, so
    /// the record is in the journal before anyone sees the change or gets the answer.
    async fn apply(&self, op: Op, keep: fn(&Answer) -> bool) -> StateResult<Answer> {
        let mut inner = self.inner.clone().lock_owned().await;
        let applied = if inner.journal.is_none() {
            inner.apply(op, keep)?
        } else {
            tokio::task::spawn_blocking(move || inner.apply(op, keep))
                .await
                .map_err(|e| StateError::Unavailable(format!("the journal writer: {e}")))??
        };
        if applied.queued {
            self.work.notify_waiters();
        }
        if applied.evented {
            self.events.send_modify(|n| *n += 1);
        }
        Ok(applied.answer)
    }
}

impl EmbeddedBackend {
    /// Applies a change of a running job, journaled when it applied.
    async fn control(&self, op: Op) -> StateResult<ControlOutcome> {
        match self
            .apply(op, |a| {
                matches!(a, Answer::Control(ControlOutcome::Applied))
            })
            .await?
        {
            Answer::Control(outcome) => Ok(outcome),
            _ => Err(unexpected()),
        }
    }
}

impl EmbeddedBackend {
    /// Applies an operation answering whether it changed anything, journaled when it did.
    async fn changed(&self, op: Op) -> StateResult<bool> {
        match self
            .apply(op, |a| matches!(a, Answer::Changed(true)))
            .await?
        {
            Answer::Changed(changed) => Ok(changed),
            _ => Err(unexpected()),
        }
    }
}

fn always(_: &Answer) -> bool {
    true
}

fn unexpected() -> StateError {
    StateError::Corrupt {
        what: "embedded operation".into(),
        detail: "answer of the wrong kind".into(),
    }
}

#[async_trait::async_trait]
impl StateBackend for EmbeddedBackend {
    async fn create_job(&self, job: &NewJob, now: u64) -> StateResult<()> {
        let op = Op::CreateJob {
            job: job.clone(),
            now,
        };
        match self
            .apply(op, |a| matches!(a, Answer::Created(CreateOutcome::Created)))
            .await?
        {
            Answer::Created(outcome) => outcome.into_result(job),
            _ => Err(unexpected()),
        }
    }

    async fn job(&self, id: &str) -> StateResult<Option<JobRecord>> {
        Ok(self.read(|m| m.job(id)).await)
    }

    async fn jobs(
        &self,
        tenant: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> StateResult<(Vec<JobRecord>, u64)> {
        Ok(self.read(|m| m.jobs(tenant, offset, limit)).await)
    }

    async fn results(
        &self,
        job: &str,
        offset: usize,
        limit: usize,
    ) -> StateResult<Option<(Vec<ResultRecord>, u64)>> {
        Ok(self.read(|m| m.results(job, offset, limit)).await)
    }

    async fn task(&self, id: &str) -> StateResult<Option<TaskRecord>> {
        Ok(self.read(|m| m.task(id)).await)
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> StateResult<()> {
        let op = Op::RegisterWorker {
            worker: worker.clone(),
        };
        self.apply(op, always).await.map(|_| ())
    }

    async fn worker(&self, id: &str) -> StateResult<Option<WorkerRecord>> {
        Ok(self.read(|m| m.worker(id)).await)
    }

    async fn workers(&self) -> StateResult<Vec<WorkerRecord>> {
        Ok(self.read(|m| m.workers()).await)
    }

    async fn deregister_worker(
        &self,
        id: &str,
        policy: &Policy,
        now: u64,
    ) -> StateResult<Vec<String>> {
        let op = Op::DeregisterWorker {
            id: id.to_string(),
            policy: *policy,
            now,
        };
        match self.apply(op, always).await? {
            Answer::Tasks(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn lease(
        &self,
        worker: &str,
        caps: &Capabilities,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<Option<TaskRecord>> {
        let op = Op::Lease {
            worker: worker.to_string(),
            caps: caps.clone(),
            policy: *policy,
            now,
            lease_ms,
        };
        match self
            .apply(op, |a| matches!(a, Answer::Leased(Some(_))))
            .await?
        {
            Answer::Leased(t) => Ok(t.map(|t| *t)),
            _ => Err(unexpected()),
        }
    }

    async fn heartbeat(
        &self,
        lease: LeaseRef<'_>,
        progress: &Progress,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<HeartbeatOutcome> {
        let op = Op::Heartbeat {
            task: lease.task.to_string(),
            attempt: lease.attempt,
            worker: lease.worker.to_string(),
            progress: progress.clone(),
            policy: *policy,
            now,
            lease_ms,
        };
        let keep = |a: &Answer| matches!(a, Answer::Heartbeat(HeartbeatOutcome::Continue { .. }));
        match self.apply(op, keep).await? {
            Answer::Heartbeat(h) => Ok(h),
            _ => Err(unexpected()),
        }
    }

    async fn complete(
        &self,
        lease: LeaseRef<'_>,
        output: &ArtifactRef,
        followups: &[NewTask],
        policy: &Policy,
        now: u64,
    ) -> StateResult<CompleteOutcome> {
        let op = Op::Complete {
            task: lease.task.to_string(),
            attempt: lease.attempt,
            worker: lease.worker.to_string(),
            output: output.clone(),
            followups: followups.to_vec(),
            policy: *policy,
            now,
        };
        let keep = |a: &Answer| matches!(a, Answer::Complete(CompleteOutcome::Accepted));
        match self.apply(op, keep).await? {
            Answer::Complete(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn fail(
        &self,
        lease: LeaseRef<'_>,
        error: &str,
        retryable: bool,
        policy: &Policy,
        now: u64,
    ) -> StateResult<FailOutcome> {
        let op = Op::Fail {
            task: lease.task.to_string(),
            attempt: lease.attempt,
            worker: lease.worker.to_string(),
            error: error.to_string(),
            retryable,
            policy: *policy,
            now,
        };
        match self.apply(op, always).await? {
            Answer::Fail(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    async fn redo_input(
        &self,
        lease: LeaseRef<'_>,
        key: &str,
        producer: Option<&str>,
        policy: &Policy,
        now: u64,
    ) -> StateResult<FailVerdict> {
        let op = Op::RedoInput {
            task: lease.task.to_string(),
            attempt: lease.attempt,
            worker: lease.worker.to_string(),
            key: key.to_string(),
            producer: producer.map(str::to_string),
            policy: *policy,
            now,
        };
        match self.apply(op, always).await? {
            Answer::Verdict(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn expire(&self, policy: &Policy, now: u64, limit: usize) -> StateResult<Vec<String>> {
        let op = Op::Expire {
            policy: *policy,
            now,
            limit,
        };
        match self
            .apply(op, |a| !matches!(a, Answer::Tasks(t) if t.is_empty()))
            .await?
        {
            Answer::Tasks(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    async fn cancel(&self, job: &str, policy: &Policy, now: u64) -> StateResult<CancelOutcome> {
        let op = Op::Cancel {
            job: job.to_string(),
            policy: *policy,
            now,
        };
        match self
            .apply(op, |a| {
                matches!(a, Answer::Cancel(CancelOutcome::Cancelled))
            })
            .await?
        {
            Answer::Cancel(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn set_priority(
        &self,
        job: &str,
        priority: i32,
        _policy: &Policy,
        _now: u64,
    ) -> StateResult<ControlOutcome> {
        let op = Op::SetPriority {
            job: job.to_string(),
            priority,
        };
        self.control(op).await
    }

    async fn pause(&self, job: &str, _policy: &Policy, _now: u64) -> StateResult<ControlOutcome> {
        self.control(Op::Pause {
            job: job.to_string(),
        })
        .await
    }

    async fn resume(&self, job: &str, _policy: &Policy, _now: u64) -> StateResult<ControlOutcome> {
        self.control(Op::Resume {
            job: job.to_string(),
        })
        .await
    }

    async fn release(&self, lease: LeaseRef<'_>, policy: &Policy, now: u64) -> StateResult<bool> {
        let op = Op::Release {
            task: lease.task.to_string(),
            attempt: lease.attempt,
            worker: lease.worker.to_string(),
            policy: *policy,
            now,
        };
        match self
            .apply(op, |a| matches!(a, Answer::Released(true)))
            .await?
        {
            Answer::Released(released) => Ok(released),
            _ => Err(unexpected()),
        }
    }

    async fn events(
        &self,
        job: &str,
        after: &str,
        max: usize,
        wait: Duration,
    ) -> StateResult<Vec<Event>> {
        let mut changes = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let found = self.read(|m| m.events(job, after, max)).await;
            if !found.is_empty() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }

    async fn stats(&self) -> StateResult<FarmStats> {
        Ok(self.read(|m| m.stats()).await)
    }

    async fn ping(&self) -> StateResult<()> {
        Ok(())
    }

    async fn record_rate(&self, sample: &RateSample, now: u64) -> StateResult<()> {
        let op = Op::RecordRate {
            sample: sample.clone(),
            now,
        };
        self.apply(op, always).await.map(|_| ())
    }

    async fn rates(&self) -> StateResult<Rates> {
        Ok(self.read(|m| m.rates()).await)
    }

    async fn webhook_claim(
        &self,
        now: u64,
        limit: usize,
        lease_ms: u64,
    ) -> StateResult<Vec<WebhookClaim>> {
        let op = Op::WebhookClaim {
            now,
            limit,
            lease_ms,
        };
        let claimed = |a: &Answer| matches!(a, Answer::Claimed(c) if !c.is_empty());
        match self.apply(op, claimed).await? {
            Answer::Claimed(claims) => Ok(claims),
            _ => Err(unexpected()),
        }
    }

    async fn webhook_advance(
        &self,
        job: &str,
        from: &str,
        to: &str,
        step: &WebhookStep,
        now: u64,
    ) -> StateResult<bool> {
        let op = Op::WebhookAdvance {
            job: job.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            step: step.clone(),
            now,
        };
        self.changed(op).await
    }

    async fn webhook_failed(
        &self,
        job: &str,
        from: &str,
        error: &str,
        retry_at: u64,
        now: u64,
    ) -> StateResult<bool> {
        let op = Op::WebhookFailed {
            job: job.to_string(),
            from: from.to_string(),
            error: error.to_string(),
            retry_at,
            now,
        };
        self.changed(op).await
    }
}
