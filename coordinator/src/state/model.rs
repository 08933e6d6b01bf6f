//! The coordinator's state as plain Rust data with every transition as a method: the embedded
//! backend's whole logic, and the reference the Redis scripts (`lua/`) follow step by step. The
//! orderings mirror Redis sorted sets exactly (score, then member), so both backends hand out
//! tasks in the same order.
//!
//! Transitions are deterministic functions of the state and their arguments (time included),
//! which is what lets the embedded backend persist a journal of operations and replay it.

use super::{
    minute_of, CancelOutcome, CompleteOutcome, ControlOutcome, CreateOutcome, Event, EventKind,
    FailOutcome, FailVerdict, FarmStats, HeartbeatOutcome, JobRecord, JobState, LeaseRef, NewJob,
    Policy, Progress, RateSample, Rates, ResultRecord, ResultState, StateCounts, TaskRecord,
    TaskState, WebhookClaim, WebhookStatus, WebhookStep, WorkerRecord,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tessera_core::plan::Unit;
use tessera_core::task::{ArtifactRef, Capabilities, KindCounts, NewTask, Requirements, TaskKind};

/// Fair-share position given to new jobs: below every served job (served jobs get the lease
/// counter), in submission order among themselves.
pub const NEW_JOB_VT: i64 = -1_000_000_000;

/// A task with the bookkeeping that only the state store needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Task {
    record: TaskRecord,
    class: String,
    seq: u64,
    planned_tiles: u32,
    planned_stitches: u32,
    /// Workers whose attempts at it failed, blamed only if another worker completes it.
    #[serde(default)]
    failed_by: BTreeSet<String>,
}

/// A job with its queues, results, bans and events.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    record: JobRecord,
    vt: i64,
    units: Vec<Unit>,
    results: BTreeMap<u32, ArtifactRef>,
    unit_errors: BTreeMap<u32, String>,
    tasks: Vec<String>,
    classes: BTreeSet<(u32, String)>,
    queues: BTreeMap<String, BTreeSet<(u64, String)>>,
    worker_failures: BTreeMap<String, u32>,
    banned: BTreeSet<String>,
    events: VecDeque<Event>,
    /// Where its webhook deliveries are in its events.
    #[serde(default)]
    hook: HookCursor,
}

/// A job's place in its webhook deliveries (the `wh_` fields of the Redis job hash).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HookCursor {
    /// The last event delivered or passed over ("" for none).
    cursor: String,
    /// Failed attempts at the event after it.
    tries: u32,
    /// When the first of those failed (0: none did).
    since: u64,
}

/// The whole state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Model {
    seq: u64,
    job_seq: u64,
    tick: i64,
    event_seq: u64,
    jobs: BTreeMap<String, Job>,
    job_order: BTreeMap<u64, String>,
    tasks: HashMap<String, Task>,
    rotation: BTreeMap<i32, BTreeSet<(i64, String)>>,
    leases: BTreeSet<(u64, String)>,
    workers: BTreeMap<String, WorkerRecord>,
    /// Per tenant: the clock minute of its last submission and its submissions in it.
    #[serde(default)]
    submissions: BTreeMap<String, (u64, u32)>,
    /// The farm's measured rates, by class of work (see [`Model::record_rate`]).
    #[serde(default)]
    rates: Rates,
    /// Per worker: when it last finished a task, where its next sample's time starts.
    #[serde(default)]
    rate_clock: BTreeMap<String, u64>,
    /// Pairs of worker and class of work of which the worker has finished a task.
    #[serde(default)]
    rate_seen: BTreeSet<(String, String)>,
    /// The webhook outbox: jobs with events to deliver, and when each is due (a claim moves
    /// it to the claim's end).
    #[serde(default)]
    outbox: BTreeMap<String, u64>,
    /// Set by transitions that queued a task, for waking waiting lease requests.
    #[serde(skip)]
    pub queued_any: bool,
    /// Set by transitions that added an event, for waking watchers.
    #[serde(skip)]
    pub evented: bool,
}

impl Model {
    // ----- reads -------------------------------------------------------------------------

    /// A job with its queue position.
    pub fn job(&self, id: &str) -> Option<JobRecord> {
        let job = self.jobs.get(id)?;
        let mut record = job.record.clone();
        record.queue_position = self
            .jobs
            .values()
            .filter(|j| j.record.priority > record.priority && !j.record.paused)
            .map(|j| j.record.counts.queued)
            .sum();
        Some(record)
    }

    /// Jobs newest first; only `tenant`'s when it is given.
    pub fn jobs(&self, tenant: Option<&str>, offset: usize, limit: usize) -> (Vec<JobRecord>, u64) {
        let listed = |id: &&String| tenant.is_none_or(|t| self.jobs[*id].record.tenant == t);
        let page = self
            .job_order
            .values()
            .rev()
            .filter(listed)
            .skip(offset)
            .take(limit)
            .filter_map(|id| self.job(id))
            .collect();
        let total = match tenant {
            None => self.job_order.len(),
            Some(_) => self.job_order.values().filter(listed).count(),
        };
        (page, total as u64)
    }

    /// A page of a job's results.
    pub fn results(
        &self,
        id: &str,
        offset: usize,
        limit: usize,
    ) -> Option<(Vec<ResultRecord>, u64)> {
        let job = self.jobs.get(id)?;
        let page = job
            .units
            .iter()
            .skip(offset)
            .take(limit)
            .map(|unit| {
                let output = job.results.get(&unit.index).cloned();
                let error = job.unit_errors.get(&unit.index).cloned();
                let state = if output.is_some() {
                    ResultState::Done
                } else if error.is_some() {
                    ResultState::Failed
                } else if job.record.state == JobState::Cancelled {
                    ResultState::Cancelled
                } else {
                    ResultState::Pending
                };
                ResultRecord {
                    unit: unit.clone(),
                    state,
                    output,
                    error,
                }
            })
            .collect();
        Some((page, job.units.len() as u64))
    }

    /// Queue depths per priority and kind, and task counts, over every job.
    pub fn stats(&self) -> FarmStats {
        let mut stats = FarmStats::default();
        for job in self.jobs.values() {
            let counts = &job.record.counts;
            for state in TaskState::ALL {
                *stats.tasks.get_mut(state) += counts.get(state);
            }
            // A paused job's queue is not offered: no worker could lease it now.
            for queue in job.queues.values().filter(|_| !job.record.paused) {
                let Some((_, first)) = queue.first() else {
                    continue;
                };
                let kind = self.tasks[first].record.kind;
                *stats.queued.entry((job.record.priority, kind)).or_default() += queue.len() as u64;
            }
        }
        stats
    }

    /// The farm's measured rates.
    pub fn rates(&self) -> Rates {
        self.rates.clone()
    }

    /// A task with everything stored about it.
    pub fn task(&self, id: &str) -> Option<TaskRecord> {
        self.tasks.get(id).map(|t| t.record.clone())
    }

    /// A registered worker.
    pub fn worker(&self, id: &str) -> Option<WorkerRecord> {
        self.workers.get(id).cloned()
    }

    /// Every registered worker, by id.
    pub fn workers(&self) -> Vec<WorkerRecord> {
        self.workers.values().cloned().collect()
    }

    /// Up to `max` events of a job after `after` ("" or an unknown cursor: from the start).
    pub fn events(&self, id: &str, after: &str, max: usize) -> Vec<Event> {
        let after: u64 = after.parse().unwrap_or(0);
        let Some(job) = self.jobs.get(id) else {
            return Vec::new();
        };
        job.events
            .iter()
            .filter(|e| e.cursor.parse::<u64>().unwrap_or(0) > after)
            .take(max)
            .cloned()
            .collect()
    }

    // ----- transitions -------------------------------------------------------------------

    /// Stores a job, unless its id is taken or its tenant's quota refuses it.
    pub fn create_job(&mut self, new: &NewJob, now: u64) -> CreateOutcome {
        if self.jobs.contains_key(&new.id) {
            return CreateOutcome::Exists;
        }
        if let Some(refused) = self.over_quota(new, now) {
            return refused;
        }
        if new.quota.submissions_per_minute.is_some() {
            let minute = minute_of(now);
            let entry = self
                .submissions
                .entry(new.tenant.clone())
                .or_insert((minute, 0));
            if entry.0 != minute {
                *entry = (minute, 0);
            }
            entry.1 += 1;
        }
        self.job_seq += 1;
        let record = JobRecord {
            id: new.id.clone(),
            name: new.name.clone(),
            tenant: new.tenant.clone(),
            priority: new.priority,
            state: JobState::Running,
            upscale_only: new.upscale_only,
            settings: new.settings.clone(),
            submitted_ms: now,
            finished_ms: 0,
            counts: StateCounts::default(),
            expected: new.expected,
            ended: KindCounts::default(),
            busy_ms: KindCounts::default(),
            timed: KindCounts::default(),
            units_total: new.units.len() as u64,
            units_done: 0,
            units_failed: 0,
            attempts: 0,
            retries: 0,
            paused: false,
            queue_position: 0,
            webhook: WebhookStatus {
                url: new.webhook.clone(),
                ..WebhookStatus::default()
            },
        };
        self.jobs.insert(
            new.id.clone(),
            Job {
                record,
                vt: NEW_JOB_VT + self.job_seq as i64,
                units: new.units.clone(),
                results: BTreeMap::new(),
                unit_errors: BTreeMap::new(),
                tasks: Vec::new(),
                classes: BTreeSet::new(),
                queues: BTreeMap::new(),
                worker_failures: BTreeMap::new(),
                banned: BTreeSet::new(),
                events: VecDeque::new(),
                hook: HookCursor::default(),
            },
        );
        self.job_order.insert(self.job_seq, new.id.clone());
        for task in &new.tasks {
            self.create_task(task);
        }
        CreateOutcome::Created
    }

    /// The refusal of `new` by its tenant's quota, if any.
    fn over_quota(&self, new: &NewJob, now: u64) -> Option<CreateOutcome> {
        if let Some(limit) = new.quota.jobs_in_flight {
            let running = self
                .jobs
                .values()
                .filter(|j| j.record.tenant == new.tenant && j.record.state == JobState::Running)
                .count();
            if running >= limit as usize {
                return Some(CreateOutcome::JobsInFlight(limit));
            }
        }
        if let Some(limit) = new.quota.submissions_per_minute {
            let this_minute = match self.submissions.get(&new.tenant) {
                Some(&(minute, count)) if minute == minute_of(now) => count,
                _ => 0,
            };
            if this_minute >= limit {
                return Some(CreateOutcome::SubmissionsPerMinute(limit));
            }
        }
        None
    }

    /// Adds or replaces a worker.
    pub fn register_worker(&mut self, worker: &WorkerRecord) {
        self.workers.insert(worker.id.clone(), worker.clone());
    }

    /// Removes a worker and queues again the tasks it holds (current and leased ahead).
    pub fn deregister_worker(&mut self, id: &str, policy: &Policy, now: u64) -> Vec<String> {
        let Some(worker) = self.workers.remove(id) else {
            return Vec::new();
        };
        let held: Vec<String> = [worker.current_task, worker.ahead_task]
            .into_iter()
            .flatten()
            .filter(|tid| self.holds(id, tid))
            .collect();
        for tid in &held {
            let deadline = self.tasks[tid].record.deadline_ms;
            self.leases.remove(&(deadline, tid.clone()));
            self.take_back(tid, policy, now);
        }
        held
    }

    /// Whether `worker` holds the lease of task `tid` now.
    fn holds(&self, worker: &str, tid: &str) -> bool {
        self.tasks
            .get(tid)
            .is_some_and(|t| t.record.state == TaskState::Running && t.record.worker == worker)
    }

    /// Queues again a task its worker gave back on leaving (a drain hands over its checkpoint
    /// first): the worker neither failed it nor went silent, so neither the task's expiry
    /// budget nor its errors change (mirrors `deregister_worker.lua`).
    fn take_back(&mut self, tid: &str, policy: &Policy, now: u64) {
        let worker = self.tasks[tid].record.worker.clone();
        self.release_worker(&worker, tid);
        self.enqueue(tid);
        self.requeued_event(tid, "worker deregistered", policy, now);
    }

    /// Leases the next task the worker can do.
    pub fn lease(
        &mut self,
        worker: &str,
        caps: &Capabilities,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> Option<TaskRecord> {
        // A worker asking for work is alive, whether or not there is any.
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now;
        }
        let (prio, job_id, class) = self.next_queue(worker, caps)?;
        let tid = self.pop(prio, &job_id, &class);
        self.tick += 1;
        let job = self.jobs.get_mut(&job_id).expect("queued job exists");
        let old_vt = job.vt;
        job.vt = self.tick;
        job.record.attempts += 1;
        if let Some(set) = self.rotation.get_mut(&prio) {
            if set.remove(&(old_vt, job_id.clone())) {
                set.insert((self.tick, job_id.clone()));
            }
        }
        let deadline = now + lease_ms;
        self.move_task(&tid, TaskState::Running);
        let task = self.tasks.get_mut(&tid).expect("queued task exists");
        task.record.attempt += 1;
        task.record.worker = worker.to_string();
        task.record.deadline_ms = deadline;
        task.record.started_ms = now;
        let record = task.record.clone();
        self.leases.insert((deadline, tid.clone()));
        let working = self
            .workers
            .get(worker)
            .and_then(|w| w.current_task.clone());
        let busy = working.is_some_and(|current| self.holds(worker, &current));
        if let Some(w) = self.workers.get_mut(worker) {
            if busy {
                w.ahead_task = Some(tid.clone());
            } else {
                w.current_task = Some(tid.clone());
            }
            w.last_seen_ms = now;
        }
        self.event(
            &job_id,
            now,
            policy,
            EventKind::TaskStarted {
                task: tid,
                kind: record.kind,
                attempt: record.attempt,
                worker: worker.to_string(),
                unit: record.unit,
            },
        );
        Some(record)
    }

    /// The first queue, in scheduling order, holding a task this worker can do.
    fn next_queue(&self, worker: &str, caps: &Capabilities) -> Option<(i32, String, String)> {
        for (prio, jobs) in self.rotation.iter().rev() {
            for (_, job_id) in jobs {
                let job = &self.jobs[job_id];
                if job.banned.contains(worker) {
                    continue;
                }
                for (_, class) in &job.classes {
                    let fits =
                        Requirements::from_class_key(class).is_some_and(|r| r.satisfied_by(caps));
                    if fits {
                        return Some((*prio, job_id.clone(), class.clone()));
                    }
                }
            }
        }
        None
    }

    /// Takes the first task of a queue, dropping the queue, the job's place in the rotation
    /// and the priority level as they empty.
    fn pop(&mut self, prio: i32, job_id: &str, class: &str) -> String {
        let job = self.jobs.get_mut(job_id).expect("queued job exists");
        let queue = job.queues.get_mut(class).expect("class has a queue");
        let (_, tid) = queue.pop_first().expect("queue is not empty");
        if queue.is_empty() {
            job.queues.remove(class);
            job.classes.retain(|(_, c)| c != class);
            if job.classes.is_empty() {
                let vt = job.vt;
                let set = self.rotation.get_mut(&prio).expect("priority level exists");
                set.remove(&(vt, job_id.to_string()));
                if set.is_empty() {
                    self.rotation.remove(&prio);
                }
            }
        }
        tid
    }

    /// Renews a lease and records progress.
    pub fn heartbeat(
        &mut self,
        lease: LeaseRef<'_>,
        progress: &Progress,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> HeartbeatOutcome {
        let LeaseRef {
            task,
            attempt,
            worker,
        } = lease;
        let Some(t) = self.tasks.get_mut(task) else {
            return HeartbeatOutcome::Lost;
        };
        let r = &mut t.record;
        if r.state == TaskState::Cancelled {
            return HeartbeatOutcome::Cancelled;
        }
        if r.state != TaskState::Running || r.attempt != attempt || r.worker != worker {
            return HeartbeatOutcome::Lost;
        }
        let old = r.deadline_ms;
        r.deadline_ms = now + lease_ms;
        r.iteration = progress.iteration;
        r.loss = progress.loss;
        if let Some((checkpoint, iteration)) = &progress.checkpoint {
            if *iteration >= r.checkpoint_iteration {
                r.checkpoint = Some(checkpoint.clone());
                r.checkpoint_iteration = *iteration;
            }
        }
        let (job, deadline, checkpoint_iteration) =
            (r.job.clone(), r.deadline_ms, r.checkpoint_iteration);
        let paused = self.jobs[&job].record.paused;
        self.leases.remove(&(old, task.to_string()));
        self.leases.insert((deadline, task.to_string()));
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_ms = now;
        }
        self.event(
            &job,
            now,
            policy,
            EventKind::Progress {
                task: task.to_string(),
                attempt,
                iteration: progress.iteration,
                iterations: progress.iterations,
                loss: progress.loss,
                checkpoint_iteration,
            },
        );
        if progress.preview {
            self.event(
                &job,
                now,
                policy,
                EventKind::Preview {
                    task: task.to_string(),
                    attempt,
                    iteration: progress.iteration,
                },
            );
        }
        if paused {
            return HeartbeatOutcome::Paused {
                deadline_ms: deadline,
            };
        }
        HeartbeatOutcome::Continue {
            deadline_ms: deadline,
        }
    }

    /// Accepts a task's output.
    pub fn complete(
        &mut self,
        lease: LeaseRef<'_>,
        output: &ArtifactRef,
        followups: &[NewTask],
        policy: &Policy,
        now: u64,
    ) -> CompleteOutcome {
        let LeaseRef {
            task,
            attempt,
            worker,
        } = lease;
        let Some(t) = self.tasks.get(task) else {
            return CompleteOutcome::Stale;
        };
        let r = &t.record;
        match r.state {
            TaskState::Done if r.attempt == attempt => return CompleteOutcome::Duplicate,
            TaskState::Cancelled => return CompleteOutcome::Cancelled,
            TaskState::Running if r.attempt == attempt && r.worker == worker => {}
            _ => return CompleteOutcome::Stale,
        }
        let (job_id, kind, unit, is_final, parent, slot, deadline, started) = (
            r.job.clone(),
            r.kind,
            r.unit,
            r.is_final,
            r.parent.clone(),
            r.slot,
            r.deadline_ms,
            r.started_ms,
        );
        self.leases.remove(&(deadline, task.to_string()));
        self.release_worker(worker, task);
        if let Some(w) = self.workers.get_mut(worker) {
            w.tasks_done += 1;
        }
        self.move_task(task, TaskState::Done);
        let t = self.tasks.get_mut(task).expect("task exists");
        t.record.output = Some(output.clone());
        let failed_by = std::mem::take(&mut t.failed_by);
        self.blame(&job_id, &failed_by, worker, policy);
        let job = self.jobs.get_mut(&job_id).expect("task's job exists");
        job.record.ended.add(kind, 1);
        job.record.busy_ms.add(kind, now.saturating_sub(started));
        job.record.timed.add(kind, 1);
        if is_final {
            job.results.insert(unit, output.clone());
            job.record.units_done += 1;
        }
        self.event(
            &job_id,
            now,
            policy,
            EventKind::TaskDone {
                task: task.to_string(),
                kind,
                attempt,
                worker: worker.to_string(),
                unit,
                is_final,
                output: output.clone(),
            },
        );
        if let Some(parent) = parent {
            self.deliver_input(&parent, slot, output);
        }
        for new in followups {
            self.create_task(new);
        }
        self.maybe_finish(&job_id, policy, now);
        CompleteOutcome::Accepted
    }

    /// Workers whose attempts failed at a task that `completer` then did were at fault, not the
    /// task: each such task counts against them, and `ban_after` of them keep a worker off the
    /// job. A task that fails everywhere (a poison task) bans nobody, so it cannot keep good
    /// workers from the rest of its job.
    fn blame(
        &mut self,
        job_id: &str,
        failed_by: &BTreeSet<String>,
        completer: &str,
        policy: &Policy,
    ) {
        let job = self.jobs.get_mut(job_id).expect("task's job exists");
        for culprit in failed_by.iter().filter(|w| *w != completer) {
            let count = job.worker_failures.entry(culprit.clone()).or_insert(0);
            *count += 1;
            if policy.ban_after > 0 && *count >= policy.ban_after {
                job.banned.insert(culprit.clone());
            }
        }
    }

    /// Gives a consuming task one of its inputs, queueing it when it has them all.
    fn deliver_input(&mut self, parent: &str, slot: u32, output: &ArtifactRef) {
        let Some(p) = self.tasks.get_mut(parent) else {
            return;
        };
        p.record.inputs.insert(slot, output.clone());
        p.record.waiting = p.record.waiting.saturating_sub(1);
        if p.record.waiting == 0 && p.record.state == TaskState::Blocked {
            self.enqueue(parent);
        }
    }

    /// Records a failed attempt.
    pub fn fail(
        &mut self,
        lease: LeaseRef<'_>,
        error: &str,
        retryable: bool,
        policy: &Policy,
        now: u64,
    ) -> FailOutcome {
        let LeaseRef {
            task,
            attempt,
            worker,
        } = lease;
        let outcome = |verdict, failures, banned| FailOutcome {
            verdict,
            failures,
            banned,
        };
        if let Err(verdict) = self.check_held(lease) {
            let failures = self.tasks.get(task).map_or(0, |t| t.record.failures);
            return outcome(verdict, failures, false);
        }
        let t = self.tasks.get_mut(task).expect("a held task exists");
        let r = &mut t.record;
        r.errors
            .push(format!("attempt {attempt} on {worker}: {error}"));
        r.failures += 1;
        let (job_id, failures, deadline) = (r.job.clone(), r.failures, r.deadline_ms);
        t.failed_by.insert(worker.to_string());
        self.leases.remove(&(deadline, task.to_string()));
        self.release_worker(worker, task);
        let banned = self.jobs[&job_id].banned.contains(worker);
        let verdict = if retryable && failures <= policy.max_retries {
            self.enqueue(task);
            self.job_retried(&job_id);
            self.event(
                &job_id,
                now,
                policy,
                EventKind::TaskFailed {
                    task: task.to_string(),
                    attempt,
                    worker: worker.to_string(),
                    error: error.to_string(),
                    will_retry: true,
                },
            );
            FailVerdict::Retrying
        } else {
            self.fail_for_good(task, error, worker, attempt, policy, now);
            FailVerdict::Failed
        };
        self.maybe_finish(&job_id, policy, now);
        outcome(verdict, failures, banned)
    }

    /// Whether a failure report's attempt still holds its task; if not, the verdict: stale, or
    /// cancelled with its job.
    fn check_held(&self, lease: LeaseRef<'_>) -> Result<(), FailVerdict> {
        let Some(t) = self.tasks.get(lease.task) else {
            return Err(FailVerdict::Stale);
        };
        let r = &t.record;
        match r.state {
            TaskState::Cancelled => Err(FailVerdict::Cancelled),
            TaskState::Running if r.attempt == lease.attempt && r.worker == lease.worker => Ok(()),
            _ => Err(FailVerdict::Stale),
        }
    }

    /// Answers a report that input `key` of the leased task is corrupt in the store (see
    /// [`super::StateBackend::redo_input`]).
    pub fn redo_input(
        &mut self,
        lease: LeaseRef<'_>,
        key: &str,
        producer: Option<&str>,
        policy: &Policy,
        now: u64,
    ) -> FailVerdict {
        let LeaseRef {
            task,
            attempt,
            worker,
        } = lease;
        if let Err(verdict) = self.check_held(lease) {
            return verdict;
        }
        let r = &self.tasks[task].record;
        let (job_id, deadline) = (r.job.clone(), r.deadline_ms);
        let is_checkpoint = r.checkpoint.as_ref().is_some_and(|c| c.key == key);
        let held = r.input(key).is_some();
        self.leases.remove(&(deadline, task.to_string()));
        self.release_worker(worker, task);
        let verdict = if is_checkpoint {
            let r = &mut self.tasks.get_mut(task).expect("task exists").record;
            r.checkpoint = None;
            r.checkpoint_iteration = 0;
            let reason =
                format!("checkpoint {key} is corrupt in the artifact store; starting over");
            self.requeue(task, &reason, policy, now);
            FailVerdict::Requeued
        } else if !held {
            let reason = format!("input {key} was made again meanwhile; running with the new one");
            self.requeue(task, &reason, policy, now);
            FailVerdict::Requeued
        } else if let Some(producer) = producer.filter(|p| self.made(p, &job_id, key)) {
            self.redo(producer, key, task, policy, now);
            let reason = format!(
                "input {key} is corrupt in the artifact store; waiting for {producer} to make it again"
            );
            self.note_error(task, &reason);
            self.tasks
                .get_mut(task)
                .expect("task exists")
                .record
                .waiting += 1;
            self.move_task(task, TaskState::Blocked);
            self.requeued_event(task, &reason, policy, now);
            FailVerdict::WaitingForInput
        } else {
            let reason = format!(
                "input {key} is corrupt in the artifact store and no task of this job made it \
                 (an uploaded picture): upload it again and submit a new job"
            );
            self.note_error(task, &reason);
            self.fail_for_good(task, &reason, worker, attempt, policy, now);
            FailVerdict::Failed
        };
        self.maybe_finish(&job_id, policy, now);
        verdict
    }

    /// Whether task `producer` of job `job` made artifact `key`: its accepted output, or it
    /// is being made again (its output was found corrupt and dropped).
    fn made(&self, producer: &str, job: &str, key: &str) -> bool {
        self.tasks.get(producer).is_some_and(|p| {
            let r = &p.record;
            r.job == job
                && match &r.output {
                    Some(output) => r.state == TaskState::Done && output.key == key,
                    None => matches!(r.state, TaskState::Queued | TaskState::Running),
                }
        })
    }

    /// Runs `producer` again because its output `key` is corrupt (nothing when a report
    /// before this one already did); `consumer` waits for the new output.
    fn redo(&mut self, producer: &str, key: &str, consumer: &str, policy: &Policy, now: u64) {
        let p = &mut self
            .tasks
            .get_mut(producer)
            .expect("producer exists")
            .record;
        if p.output.take().is_none() {
            return;
        }
        let (kind, job_id) = (p.kind, p.job.clone());
        let parent_slot = (p.parent.as_deref() == Some(consumer)).then_some(p.slot);
        let reason = format!(
            "its output {key} is corrupt in the artifact store (found by {consumer}); running again"
        );
        self.note_error(producer, &reason);
        self.jobs
            .get_mut(&job_id)
            .expect("job exists")
            .record
            .ended
            .remove(kind, 1);
        if let Some(slot) = parent_slot {
            let c = &mut self
                .tasks
                .get_mut(consumer)
                .expect("consumer exists")
                .record;
            c.inputs.remove(&slot);
        }
        self.enqueue(producer);
        self.requeued_event(producer, &reason, policy, now);
    }

    /// Queues a task whose lease was taken back without a failure, with the reason kept.
    fn requeue(&mut self, tid: &str, reason: &str, policy: &Policy, now: u64) {
        self.note_error(tid, reason);
        self.enqueue(tid);
        self.requeued_event(tid, reason, policy, now);
    }

    /// Adds to a task's error history, naming its latest attempt and worker.
    fn note_error(&mut self, tid: &str, reason: &str) {
        let r = &mut self.tasks.get_mut(tid).expect("task exists").record;
        r.errors
            .push(format!("attempt {} on {}: {reason}", r.attempt, r.worker));
    }

    fn requeued_event(&mut self, tid: &str, reason: &str, policy: &Policy, now: u64) {
        let r = &self.tasks[tid].record;
        let kind = EventKind::TaskRequeued {
            task: tid.to_string(),
            attempt: r.attempt,
            worker: r.worker.clone(),
            reason: reason.to_string(),
        };
        let job = r.job.clone();
        self.event(&job, now, policy, kind);
    }

    /// Queues again up to `limit` tasks whose lease ended at or before `now`.
    pub fn expire(&mut self, policy: &Policy, now: u64, limit: usize) -> Vec<String> {
        let due: Vec<(u64, String)> = self
            .leases
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .cloned()
            .collect();
        let mut requeued = Vec::new();
        for entry in due {
            self.leases.remove(&entry);
            let tid = entry.1;
            if self.tasks.get(&tid).map(|t| t.record.state) == Some(TaskState::Running) {
                self.abandon(&tid, "lease expired", policy, now);
                requeued.push(tid);
            }
        }
        requeued
    }

    /// A running task whose worker went away (its lease entry already removed): queued again,
    /// or failed for good after too many such ends.
    fn abandon(&mut self, tid: &str, reason: &str, policy: &Policy, now: u64) {
        self.note_error(tid, reason);
        let r = &mut self
            .tasks
            .get_mut(tid)
            .expect("abandoned task exists")
            .record;
        r.expiries += 1;
        let (job, worker, attempt, expiries) =
            (r.job.clone(), r.worker.clone(), r.attempt, r.expiries);
        self.release_worker(&worker, tid);
        if expiries > policy.max_expiries {
            let why = format!("{reason} {expiries} times");
            self.fail_for_good(tid, &why, &worker, attempt, policy, now);
        } else {
            self.enqueue(tid);
            self.job_retried(&job);
            self.requeued_event(tid, reason, policy, now);
        }
        self.maybe_finish(&job, policy, now);
    }

    /// Counts an attempt of the job's that failed or expired and was queued again.
    fn job_retried(&mut self, job: &str) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.record.retries += 1;
        }
    }

    /// Cancels a job.
    pub fn cancel(&mut self, id: &str, policy: &Policy, now: u64) -> CancelOutcome {
        let Some(job) = self.jobs.get(id) else {
            return CancelOutcome::NotFound;
        };
        if job.record.state != JobState::Running {
            return CancelOutcome::AlreadyEnded(job.record.state);
        }
        for tid in job.tasks.clone() {
            let r = &self.tasks[&tid].record;
            let (state, kind, deadline, worker) =
                (r.state, r.kind, r.deadline_ms, r.worker.clone());
            if !matches!(
                state,
                TaskState::Queued | TaskState::Blocked | TaskState::Running
            ) {
                continue;
            }
            if state == TaskState::Running {
                self.leases.remove(&(deadline, tid.clone()));
                self.release_worker(&worker, &tid);
            }
            self.move_task(&tid, TaskState::Cancelled);
            self.jobs
                .get_mut(id)
                .expect("job exists")
                .record
                .ended
                .add(kind, 1);
        }
        self.leave_rotation(id);
        let job = self.jobs.get_mut(id).expect("job exists");
        job.queues.clear();
        job.classes.clear();
        job.record.state = JobState::Cancelled;
        job.record.finished_ms = now;
        self.job_done_event(id, policy, now);
        CancelOutcome::Cancelled
    }

    /// The running job `id`, or why a change of it does not apply.
    fn running_job(&mut self, id: &str) -> Result<&mut Job, ControlOutcome> {
        match self.jobs.get_mut(id) {
            None => Err(ControlOutcome::NotFound),
            Some(job) if job.record.state != JobState::Running => {
                Err(ControlOutcome::AlreadyEnded(job.record.state))
            }
            Some(job) => Ok(job),
        }
    }

    /// Gives a running job another priority (mirrors `set_priority.lua`).
    pub fn set_priority(&mut self, id: &str, priority: i32) -> ControlOutcome {
        if let Err(outcome) = self.running_job(id) {
            return outcome;
        }
        self.leave_rotation(id);
        self.jobs.get_mut(id).expect("job exists").record.priority = priority;
        self.join_rotation(id);
        ControlOutcome::Applied
    }

    /// Pauses a running job (mirrors `pause.lua`).
    pub fn pause(&mut self, id: &str) -> ControlOutcome {
        if let Err(outcome) = self.running_job(id) {
            return outcome;
        }
        self.leave_rotation(id);
        self.jobs.get_mut(id).expect("job exists").record.paused = true;
        ControlOutcome::Applied
    }

    /// Resumes a paused job (mirrors `resume.lua`).
    pub fn resume(&mut self, id: &str) -> ControlOutcome {
        match self.running_job(id) {
            Ok(job) => job.record.paused = false,
            Err(outcome) => return outcome,
        }
        self.join_rotation(id);
        ControlOutcome::Applied
    }

    /// Queues again a task its holder gave back because its job was paused (mirrors
    /// `release.lua`): like a drained worker's, it counts neither an expiry nor an error.
    pub fn release(&mut self, lease: LeaseRef<'_>, policy: &Policy, now: u64) -> bool {
        if self.check_held(lease).is_err() {
            return false;
        }
        let tid = lease.task;
        let deadline = self.tasks[tid].record.deadline_ms;
        self.leases.remove(&(deadline, tid.to_string()));
        self.release_worker(lease.worker, tid);
        self.enqueue(tid);
        self.requeued_event(tid, "given back: its job was paused", policy, now);
        true
    }

    // ----- helpers -----------------------------------------------------------------------

    fn create_task(&mut self, new: &NewTask) {
        if self.tasks.contains_key(&new.id) {
            self.refresh_followup(new);
            return;
        }
        self.seq += 1;
        let record = TaskRecord {
            id: new.id.clone(),
            job: new.job.clone(),
            kind: new.kind,
            unit: new.unit,
            state: TaskState::Blocked,
            attempt: 0,
            failures: 0,
            expiries: 0,
            worker: String::new(),
            deadline_ms: 0,
            spec: new.spec.clone(),
            parent: new.parent.clone(),
            slot: new.slot,
            waiting: new.waiting,
            is_final: new.is_final,
            checkpoint: None,
            checkpoint_iteration: 0,
            started_ms: 0,
            iteration: 0,
            loss: None,
            output: None,
            errors: Vec::new(),
            inputs: BTreeMap::new(),
            trace: new.trace.clone(),
        };
        self.tasks.insert(
            new.id.clone(),
            Task {
                record,
                class: new.class.clone(),
                seq: self.seq,
                planned_tiles: new.planned_tiles,
                planned_stitches: new.planned_stitches,
                failed_by: BTreeSet::new(),
            },
        );
        let job = self.jobs.get_mut(&new.job).expect("task's job exists");
        job.tasks.push(new.id.clone());
        job.record.counts.blocked += 1;
        if new.waiting == 0 {
            self.enqueue(&new.id);
        }
    }

    /// A follow-up planned again by a task that ran again (its output was corrupt): an upscale
    /// tile that has not finished takes the new spec (the new source picture), and one that
    /// waited for it is queued. Stitches and finished tiles stay as they are.
    fn refresh_followup(&mut self, new: &NewTask) {
        let r = &mut self.tasks.get_mut(&new.id).expect("task exists").record;
        let unfinished = matches!(
            r.state,
            TaskState::Queued | TaskState::Blocked | TaskState::Running
        );
        if r.kind != TaskKind::UpscaleTile || !unfinished {
            return;
        }
        r.spec = new.spec.clone();
        if r.state == TaskState::Blocked {
            r.waiting = 0;
            self.enqueue(&new.id);
        }
    }

    /// Moves a task to another state, keeping its job's counts.
    fn move_task(&mut self, tid: &str, to: TaskState) {
        let t = self.tasks.get_mut(tid).expect("moved task exists");
        let from = t.record.state;
        t.record.state = to;
        let counts = &mut self
            .jobs
            .get_mut(&t.record.job)
            .expect("job exists")
            .record
            .counts;
        *counts.get_mut(from) -= 1;
        *counts.get_mut(to) += 1;
    }

    /// Takes a job out of the rotation of its priority, dropping the level when it empties:
    /// none of its tasks is offered until it joins again.
    fn leave_rotation(&mut self, id: &str) {
        let job = &self.jobs[id];
        let (prio, vt) = (job.record.priority, job.vt);
        if let Some(set) = self.rotation.get_mut(&prio) {
            set.remove(&(vt, id.to_string()));
            if set.is_empty() {
                self.rotation.remove(&prio);
            }
        }
    }

    /// Puts a job in the rotation of its priority at its fair-share position, when it has
    /// queued tasks and is not paused.
    fn join_rotation(&mut self, id: &str) {
        let job = &self.jobs[id];
        if job.classes.is_empty() || job.record.paused {
            return;
        }
        let entry = (job.vt, id.to_string());
        self.rotation
            .entry(job.record.priority)
            .or_default()
            .insert(entry);
        self.queued_any = true;
    }

    /// Puts a task in its job's queue and the job in the rotation of its priority (unless the
    /// job is paused).
    fn enqueue(&mut self, tid: &str) {
        self.move_task(tid, TaskState::Queued);
        let t = &self.tasks[tid];
        let (seq, class, kind, job_id) =
            (t.seq, t.class.clone(), t.record.kind, t.record.job.clone());
        let job = self.jobs.get_mut(&job_id).expect("job exists");
        job.queues
            .entry(class.clone())
            .or_default()
            .insert((seq, tid.to_string()));
        job.classes.insert((kind.rank(), class));
        self.join_rotation(&job_id);
    }

    fn release_worker(&mut self, worker: &str, tid: &str) {
        if let Some(w) = self.workers.get_mut(worker) {
            if w.current_task.as_deref() == Some(tid) {
                w.current_task = w.ahead_task.take();
            } else if w.ahead_task.as_deref() == Some(tid) {
                w.ahead_task = None;
            }
        }
    }

    /// Fails a task for good, and the task consuming its output with it.
    fn fail_for_good(
        &mut self,
        tid: &str,
        reason: &str,
        worker: &str,
        attempt: u32,
        policy: &Policy,
        now: u64,
    ) {
        self.move_task(tid, TaskState::Failed);
        let t = &self.tasks[tid];
        let (job_id, kind, unit, parent) = (
            t.record.job.clone(),
            t.record.kind,
            t.record.unit,
            t.record.parent.clone(),
        );
        let (tiles, stitches) = (u64::from(t.planned_tiles), u64::from(t.planned_stitches));
        let job = self.jobs.get_mut(&job_id).expect("job exists");
        job.record.ended.add(kind, 1);
        job.record.expected.upscale_tile -= tiles;
        job.record.expected.stitch -= stitches;
        if let std::collections::btree_map::Entry::Vacant(entry) = job.unit_errors.entry(unit) {
            entry.insert(reason.to_string());
            job.record.units_failed += 1;
        }
        self.event(
            &job_id,
            now,
            policy,
            EventKind::TaskFailed {
                task: tid.to_string(),
                attempt,
                worker: worker.to_string(),
                error: reason.to_string(),
                will_retry: false,
            },
        );
        if let Some(parent) = parent {
            if self.tasks.get(&parent).map(|p| p.record.state) == Some(TaskState::Blocked) {
                let attempt = self.tasks[&parent].record.attempt;
                let why = format!("input {tid} failed: {reason}");
                self.fail_for_good(&parent, &why, "", attempt, policy, now);
            }
        }
    }

    /// Ends a job whose tasks have all ended.
    fn maybe_finish(&mut self, id: &str, policy: &Policy, now: u64) {
        let job = self.jobs.get_mut(id).expect("job exists");
        if job.record.state != JobState::Running || job.record.counts.active() > 0 {
            return;
        }
        job.record.state = if job.record.counts.failed > 0 {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        job.record.finished_ms = now;
        self.job_done_event(id, policy, now);
    }

    fn job_done_event(&mut self, id: &str, policy: &Policy, now: u64) {
        let r = &self.jobs[id].record;
        let kind = EventKind::JobDone {
            state: r.state,
            counts: r.counts,
            units_done: r.units_done,
            units_failed: r.units_failed,
        };
        self.event(id, now, policy, kind);
    }

    fn event(&mut self, job_id: &str, now: u64, policy: &Policy, kind: EventKind) {
        if kind.is_webhook_event() {
            self.wake_webhook(job_id, now);
        }
        self.event_seq += 1;
        let job = self.jobs.get_mut(job_id).expect("job exists");
        job.events.push_back(Event {
            cursor: self.event_seq.to_string(),
            time_ms: now,
            kind,
        });
        while job.events.len() as u64 > policy.events_max.max(1) {
            job.events.pop_front();
        }
        self.evented = true;
    }
}

impl Model {
    /// Counts `sample` in its class's rate ([`RateSample`] says from when); a worker's first
    /// finished task of each class only starts its clock. A class that reaches
    /// [`tessera_core::rates::RATE_WINDOW`] samples has its sums halved.
    pub fn record_rate(&mut self, sample: &RateSample, now: u64) {
        let last = self.rate_clock.insert(sample.worker.clone(), now);
        let seen = (sample.worker.clone(), sample.class.clone());
        let (Some(last), false) = (last, self.rate_seen.insert(seen)) else {
            return;
        };
        let rate = self.rates.entry(sample.class.clone()).or_default();
        rate.ms += now.saturating_sub(sample.started_ms.max(last));
        rate.amount += sample.amount;
        rate.samples += 1;
        if rate.samples >= tessera_core::rates::RATE_WINDOW {
            rate.ms /= 2;
            rate.amount /= 2;
            rate.samples /= 2;
        }
    }
}

impl Model {
    /// Puts a job with a webhook in the outbox, due now, unless it is there already (waiting
    /// for a retry or claimed): mirrors `wake_webhook` in `common.lua`.
    fn wake_webhook(&mut self, job_id: &str, now: u64) {
        let job = self.jobs.get_mut(job_id).expect("job exists");
        if job.record.webhook.url.is_empty() {
            return;
        }
        job.record.webhook.pending = true;
        self.outbox.entry(job_id.to_string()).or_insert(now);
    }

    /// Claims up to `limit` jobs due at `now` for `lease_ms` (mirrors `webhook_claim.lua`).
    pub fn webhook_claim(&mut self, now: u64, limit: usize, lease_ms: u64) -> Vec<WebhookClaim> {
        let mut due: Vec<(u64, String)> = self
            .outbox
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(job, &at)| (at, job.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        due.into_iter()
            .map(|(_, id)| {
                self.outbox.insert(id.clone(), now + lease_ms);
                let job = &self.jobs[&id];
                WebhookClaim {
                    tenant: job.record.tenant.clone(),
                    url: job.record.webhook.url.clone(),
                    cursor: job.hook.cursor.clone(),
                    tries: job.hook.tries,
                    failing_since_ms: job.hook.since,
                    job: id,
                }
            })
            .collect()
    }

    /// The job whose webhook cursor is still `from`, or `None` (mirrors `hook_at` in the
    /// webhook scripts).
    fn hook_at(&mut self, id: &str, from: &str) -> Option<&mut Job> {
        self.jobs.get_mut(id).filter(|job| job.hook.cursor == from)
    }

    /// Moves a job's webhook cursor on (mirrors `webhook_advance.lua`).
    pub fn webhook_advance(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        step: &WebhookStep,
        now: u64,
    ) -> bool {
        let Some(job) = self.hook_at(id, from) else {
            return false;
        };
        job.hook = HookCursor {
            cursor: to.to_string(),
            ..HookCursor::default()
        };
        let more = job.events.back().is_some_and(|last| last.cursor != to);
        let status = &mut job.record.webhook;
        match step {
            WebhookStep::Skipped => {}
            WebhookStep::Delivered => status.delivered += 1,
            WebhookStep::Dropped(error) => {
                status.failures += 1;
                status.dropped += 1;
                status.last_error.clone_from(error);
            }
        }
        status.next_ms = 0;
        status.pending = more;
        if more {
            self.outbox.insert(id.to_string(), now);
        } else {
            self.outbox.remove(id);
        }
        true
    }

    /// Records a failed delivery attempt (mirrors `webhook_failed.lua`).
    pub fn webhook_failed(
        &mut self,
        id: &str,
        from: &str,
        error: &str,
        retry_at: u64,
        now: u64,
    ) -> bool {
        let Some(job) = self.hook_at(id, from) else {
            return false;
        };
        job.hook.tries += 1;
        if job.hook.since == 0 {
            job.hook.since = now;
        }
        let status = &mut job.record.webhook;
        status.failures += 1;
        status.last_error = error.to_string();
        status.next_ms = retry_at;
        status.pending = true;
        self.outbox.insert(id.to_string(), retry_at);
        true
    }
}
