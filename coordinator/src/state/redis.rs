//! The state store for farms: Redis, with every transition a Lua script (`lua/`), so that
//! several coordinators on one Redis never hand out a task twice and a coordinator killed
//! between two commands leaves nothing half-done. Job events are Redis Streams; scripts that
//! queue tasks publish on a channel that every coordinator listens to, so waiting lease
//! requests are woken at once wherever the task appeared. Every key and field name is in
//! `keys.rs`, which documents them.

use super::keys::{
    self, event, job as job_field, rate as rate_field, task as task_field, worker as worker_field,
};
use super::redis_link::Link;
use super::{
    CancelOutcome, CompleteOutcome, ControlOutcome, CreateOutcome, Event, EventKind, FailOutcome,
    FailVerdict, FarmStats, HeartbeatOutcome, JobRecord, JobState, LeaseRef, NewJob, Policy,
    Progress, Rate, RateSample, Rates, ResultRecord, ResultState, StateBackend, StateCounts,
    StateError, StateResult, TaskRecord, TaskState, WebhookClaim, WebhookStatus, WebhookStep,
    WorkerRecord,
};
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, Script, TlsCertificates, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_core::rates::RATE_WINDOW;
use tessera_core::task::{ArtifactRef, Capabilities, KindCounts, NewTask, TaskKind};
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

const COMMON: &str = include_str!("lua/common.lua");
const FOOTER: &str = include_str!("lua/footer.lua");

/// The transitions and reads, each one script named after the method of `model.rs` (and of
/// [`StateBackend`]) it mirrors.
struct Scripts {
    create_job: Script,
    lease: Script,
    heartbeat: Script,
    complete: Script,
    fail: Script,
    redo_input: Script,
    expire: Script,
    deregister_worker: Script,
    cancel: Script,
    set_priority: Script,
    pause: Script,
    resume: Script,
    release: Script,
    job: Script,
    task: Script,
    results: Script,
    stats: Script,
    record_rate: Script,
    webhook_claim: Script,
    webhook_advance: Script,
    webhook_failed: Script,
}

impl Scripts {
    fn new() -> Self {
        let prelude = keys::lua_prelude();
        let script = |body: &str| Script::new(&format!("{prelude}{COMMON}\n{body}\n{FOOTER}"));
        Scripts {
            create_job: script(include_str!("lua/create_job.lua")),
            lease: script(include_str!("lua/lease.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            complete: script(include_str!("lua/complete.lua")),
            fail: script(include_str!("lua/fail.lua")),
            redo_input: script(include_str!("lua/redo_input.lua")),
            expire: script(include_str!("lua/expire.lua")),
            deregister_worker: script(include_str!("lua/deregister_worker.lua")),
            cancel: script(include_str!("lua/cancel.lua")),
            set_priority: script(include_str!("lua/set_priority.lua")),
            pause: script(include_str!("lua/pause.lua")),
            resume: script(include_str!("lua/resume.lua")),
            release: script(include_str!("lua/release.lua")),
            job: script(include_str!("lua/job.lua")),
            task: script(include_str!("lua/task.lua")),
            results: script(include_str!("lua/results.lua")),
            stats: script(include_str!("lua/stats.lua")),
            record_rate: script(include_str!("lua/record_rate.lua")),
            webhook_claim: script(include_str!("lua/webhook_claim.lua")),
            webhook_advance: script(include_str!("lua/webhook_advance.lua")),
            webhook_failed: script(include_str!("lua/webhook_failed.lua")),
        }
    }
}

/// The Redis state store.
pub struct RedisBackend {
    /// `host:port` (or the master name and its Sentinels), for errors.
    address: String,
    /// The server the state lives on, followed through Sentinel failovers.
    link: Link,
    prefix: String,
    scripts: Scripts,
    work: Arc<Notify>,
    /// Connections for blocking stream reads, which would stall a shared connection.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    stop: CancellationToken,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Turns a Redis error into an unavailable state store, naming the server (`host:port`, never
/// the URL, which may hold a password).
fn unavailable(address: &str) -> impl Fn(redis::RedisError) -> StateError + '_ {
    move |e| StateError::Unavailable(format!("Redis at {address}: {e}"))
}

fn corrupt(what: impl Into<String>, detail: impl ToString) -> StateError {
    StateError::Corrupt {
        what: what.into(),
        detail: detail.to_string(),
    }
}

impl RedisBackend {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`); every key starts with `prefix`, so
    /// several farms may share one Redis.
    pub async fn connect(url: &str, prefix: &str) -> StateResult<Self> {
        Self::with_client(Client::open(url).map_err(unavailable("its URL"))?, prefix).await
    }

    /// Connects to a TLS Redis (`rediss://`) whose certificate `ca_pem` (a PEM CA certificate)
    /// signed, rather than one of the system's roots.
    pub async fn connect_with_ca(url: &str, prefix: &str, ca_pem: Vec<u8>) -> StateResult<Self> {
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem),
        };
        let client = Client::build_with_tls(url, certificates).map_err(unavailable("its URL"))?;
        Self::with_client(client, prefix).await
    }

    /// Connects to the primary that the Sentinels at `sentinels` (`host:port` each) name for
    /// `master` (database `db`), and follows it when Sentinel promotes a replica; each
    /// transition is answered once `wait_replicas` replicas have it.
    pub async fn connect_sentinel(
        sentinels: &[String],
        master: &str,
        db: i64,
        wait_replicas: u32,
        prefix: &str,
    ) -> StateResult<Self> {
        let address = format!("master {master} via Sentinel {}", sentinels.join(","));
        let link = Link::sentinel(sentinels, master, db, wait_replicas, Self::manager_config())
            .await
            .map_err(unavailable(&address))?;
        Ok(Self::with_link(link, address, prefix))
    }

    async fn with_client(client: Client, prefix: &str) -> StateResult<Self> {
        let address = client.get_connection_info().addr().to_string();
        let link = Link::fixed(client, Self::manager_config())
            .await
            .map_err(unavailable(&address))?;
        Ok(Self::with_link(link, address, prefix))
    }

    fn manager_config() -> ConnectionManagerConfig {
        // Submitting a large job is one script over many tasks; give it time. A Redis that is
        // down fails a request after two quick reconnection attempts (the client's default
        // backs off for about eight seconds), so callers hear at once that the store is down
        // and retry on their side, and the first request after Redis returns reconnects.
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(250))
    }

    fn with_link(link: Link, address: String, prefix: &str) -> Self {
        let backend = RedisBackend {
            address,
            link,
            prefix: prefix.to_string(),
            scripts: Scripts::new(),
            work: Arc::new(Notify::new()),
            blocking: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        };
        backend.listen_for_work();
        backend
    }

    /// Forwards the wake-up channel to [`StateBackend::work_signal`], reconnecting as needed.
    fn listen_for_work(&self) {
        let link = self.link.clone();
        let channel = keys::WAKE.of(&self.prefix, &[]);
        let work = self.work.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let listen = async {
                    let mut pubsub = link.client().get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    // Tasks queued while we were not subscribed are found by the next poll.
                    work.notify_waiters();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        work.notify_waiters();
                    }
                    Ok::<_, redis::RedisError>(())
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = listen => {
                        if let Err(e) = result {
                            tracing::warn!("redis wake-up channel: {e}; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// Runs a script with the prefix as its key (`KEYS[1]`), the common arguments (now, events
    /// kept) and `args`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        now: u64,
        events_max: u64,
        args: Vec<String>,
    ) -> StateResult<T> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.prefix).arg(now).arg(events_max);
        for a in args {
            invocation.arg(a);
        }
        let mut conn = self.link.conn();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable(&self.address))
    }

    /// Runs a script that changes a running job, reading its answer.
    async fn control(
        &self,
        script: &Script,
        args: Vec<String>,
        policy: &Policy,
        now: u64,
    ) -> StateResult<ControlOutcome> {
        let reply: Vec<String> = self.run(script, now, policy.events_max, args).await?;
        match reply.first().map(String::as_str) {
            Some("applied") => Ok(ControlOutcome::Applied),
            Some("missing") => Ok(ControlOutcome::NotFound),
            Some("ended") => reply
                .get(1)
                .and_then(|s| JobState::parse(s))
                .map(ControlOutcome::AlreadyEnded)
                .ok_or_else(|| corrupt("job change reply", format!("{reply:?}"))),
            _ => Err(corrupt("job change reply", format!("{reply:?}"))),
        }
    }

    async fn read_task(&self, id: &str) -> StateResult<Option<TaskRecord>> {
        let value: Value = self
            .run(&self.scripts.task, 0, 0, vec![id.to_string()])
            .await?;
        parse_task_reply(value)
    }

    /// Runs a blocking read on a connection of its own (a blocking XREAD would hold up the
    /// shared one), kept in a pool for the next. A pooled connection may have died with the
    /// server it was made to (a Redis restart, a failover), which only its next command finds:
    /// the read then goes once more on a new connection, so a watcher hears of an outage only
    /// while Redis is really down.
    async fn blocking_read(&self, cmd: &redis::Cmd) -> StateResult<Option<StreamReadReply>> {
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.blocking_connection().await?,
        };
        let mut reply = cmd.query_async(&mut conn).await;
        if reply.is_err() && was_pooled {
            conn = self.blocking_connection().await?;
            reply = cmd.query_async(&mut conn).await;
        }
        let reply = reply.map_err(unavailable(&self.address))?;
        self.blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(reply)
    }

    /// A new connection for blocking reads: no response timeout, since a read may block.
    async fn blocking_connection(&self) -> StateResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        self.link
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable(&self.address))
    }

    async fn read_stream(
        &self,
        job: &str,
        after: &str,
        max: usize,
        block: Option<Duration>,
    ) -> StateResult<Vec<Event>> {
        let start = if is_stream_id(after) { after } else { "0-0" };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS")
            .arg(keys::EVENTS.of(&self.prefix, &[job]))
            .arg(start);
        let reply: Option<StreamReadReply> = match block {
            None => {
                let mut conn = self.link.conn();
                cmd.query_async(&mut conn)
                    .await
                    .map_err(unavailable(&self.address))?
            }
            Some(_) => self.blocking_read(&cmd).await?,
        };
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        entries
            .map(|entry| {
                let fields: HashMap<String, String> = entry
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        redis::from_redis_value_ref::<String>(v)
                            .ok()
                            .map(|s| (k.clone(), s))
                    })
                    .collect();
                parse_event(&entry.id, &Fields(fields))
                    .map_err(|detail| corrupt(format!("event {} of job {job}", entry.id), detail))
            })
            .collect()
    }
}

/// Whether `s` is a Redis stream entry id (`ms-seq`).
fn is_stream_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// The arguments `create_tasks` in `common.lua` reads for each task.
fn task_args(tasks: &[NewTask], args: &mut Vec<String>) {
    args.push(tasks.len().to_string());
    for t in tasks {
        args.extend([
            t.id.clone(),
            t.job.clone(),
            t.kind.as_str().to_string(),
            t.unit.to_string(),
            t.class.clone(),
            serde_json::to_string(&t.spec).expect("specs serialise"),
            t.parent.clone().unwrap_or_default(),
            t.slot.to_string(),
            t.waiting.to_string(),
            flag(t.is_final),
            t.planned_tiles.to_string(),
            t.planned_stitches.to_string(),
            t.trace.clone(),
        ]);
    }
}

/// The lease deadline in a heartbeat's reply ({verdict, deadline}).
fn deadline(reply: &[String]) -> StateResult<u64> {
    reply
        .get(1)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| corrupt("heartbeat reply", format!("{reply:?}")))
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("state records serialise")
}

/// A hash read back from Redis.
struct Fields(HashMap<String, String>);

impl Fields {
    fn from_flat(flat: Vec<String>) -> Self {
        let mut map = HashMap::new();
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.insert(k, v);
        }
        Fields(map)
    }

    fn str(&self, name: &str) -> Result<&str, String> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing field `{name}`"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let s = self.str(name)?;
        s.parse()
            .map_err(|_| format!("field `{name}` = '{s}' is not a number"))
    }

    fn opt_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, String> {
        match self.0.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| format!("field `{name}`: {e}")),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, String> {
        self.opt_json(name)?
            .ok_or_else(|| format!("missing field `{name}`"))
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>, String> {
        match self.0.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(_) => self.num(name).map(Some),
        }
    }

    fn kind(&self, name: &str) -> Result<TaskKind, String> {
        let s = self.str(name)?;
        TaskKind::parse(s).ok_or_else(|| format!("unknown task kind '{s}'"))
    }

    fn kinds(&self, prefix: &str) -> Result<KindCounts, String> {
        let mut counts = KindCounts::default();
        for kind in TaskKind::ALL {
            counts.add(kind, self.num(&format!("{prefix}{}", kind.as_str()))?);
        }
        Ok(counts)
    }

    fn counts(&self, prefix: &str) -> Result<StateCounts, String> {
        Ok(StateCounts {
            queued: self.num(&format!("{prefix}queued"))?,
            blocked: self.num(&format!("{prefix}blocked"))?,
            running: self.num(&format!("{prefix}running"))?,
            done: self.num(&format!("{prefix}done"))?,
            failed: self.num(&format!("{prefix}failed"))?,
            cancelled: self.num(&format!("{prefix}cancelled"))?,
        })
    }
}

fn parse_job(id: &str, f: &Fields, queue_position: u64) -> Result<JobRecord, String> {
    let state = f.str(job_field::STATE)?;
    Ok(JobRecord {
        id: id.to_string(),
        name: f.str(job_field::NAME)?.to_string(),
        // Jobs stored before tenants existed have none.
        tenant: f.str(job_field::TENANT).unwrap_or_default().to_string(),
        priority: f.num(job_field::PRIORITY)?,
        state: JobState::parse(state).ok_or_else(|| format!("unknown job state '{state}'"))?,
        upscale_only: f.str(job_field::UPSCALE_ONLY)? == "1",
        settings: f.json(job_field::SETTINGS)?,
        submitted_ms: f.num(job_field::SUBMITTED_MS)?,
        finished_ms: f.num(job_field::FINISHED_MS)?,
        counts: f.counts(job_field::COUNT)?,
        expected: f.kinds(job_field::EXPECTED)?,
        ended: f.kinds(job_field::ENDED)?,
        busy_ms: f.kinds(job_field::BUSY)?,
        timed: f.kinds(job_field::TIMED)?,
        units_total: f.num(job_field::UNITS_TOTAL)?,
        units_done: f.num(job_field::UNITS_DONE)?,
        units_failed: f.num(job_field::UNITS_FAILED)?,
        // Jobs stored before these counts existed have neither.
        attempts: f.num(job_field::ATTEMPTS).unwrap_or(0),
        retries: f.num(job_field::RETRIES).unwrap_or(0),
        paused: f.str(job_field::PAUSED).is_ok_and(|p| p == "1"),
        queue_position,
        webhook: parse_webhook(f)?,
    })
}

/// A job's webhook status from its hash; jobs without a webhook (or from before webhooks)
/// have none of its fields.
fn parse_webhook(f: &Fields) -> Result<WebhookStatus, String> {
    let count = |name: &str| match f.str(name) {
        Ok(_) => f.num::<u64>(name),
        Err(_) => Ok(0),
    };
    Ok(WebhookStatus {
        url: f.str(job_field::WEBHOOK).unwrap_or_default().to_string(),
        delivered: count(job_field::WH_DELIVERED)?,
        failures: count(job_field::WH_FAILURES)?,
        dropped: count(job_field::WH_DROPPED)?,
        last_error: f.str(job_field::WH_ERROR).unwrap_or_default().to_string(),
        pending: f.str(job_field::WH_PENDING).is_ok_and(|p| p == "1"),
        next_ms: count(job_field::WH_NEXT)?,
    })
}

/// A claimed job as `webhook_claim.lua` lists it.
fn parse_claim(fields: Vec<String>) -> Result<WebhookClaim, String> {
    let [job, tenant, url, cursor, tries, since]: [String; 6] = fields
        .try_into()
        .map_err(|f: Vec<String>| format!("a claim of {} fields, not 6", f.len()))?;
    let number = |what: &str, text: &str| {
        text.parse::<u64>()
            .map_err(|e| format!("{what} '{text}' of job {job}: {e}"))
    };
    Ok(WebhookClaim {
        tries: number("tries", &tries)? as u32,
        failing_since_ms: number("failing since", &since)?,
        job,
        tenant,
        url,
        cursor,
    })
}

fn parse_stats(counts: Fields, queued: &[String]) -> Result<FarmStats, String> {
    let mut stats = FarmStats::default();
    for state in TaskState::ALL {
        // A farm that never had a task in a state has no count for it.
        if counts.0.contains_key(state.as_str()) {
            *stats.tasks.get_mut(state) = counts.num(state.as_str())?;
        }
    }
    for entry in queued.chunks(3) {
        let [prio, kind, n] = entry else {
            return Err(format!(
                "queue entry {entry:?} is not priority, kind, count"
            ));
        };
        let prio: i32 = prio.parse().map_err(|_| format!("priority '{prio}'"))?;
        let kind = TaskKind::parse(kind).ok_or_else(|| format!("unknown task kind '{kind}'"))?;
        let n: u64 = n.parse().map_err(|_| format!("queued count '{n}'"))?;
        *stats.queued.entry((prio, kind)).or_default() += n;
    }
    Ok(stats)
}

fn parse_task_reply(value: Value) -> StateResult<Option<TaskRecord>> {
    let parsed: Option<(Vec<String>, Vec<String>, Vec<String>)> =
        redis::from_redis_value(value).map_err(|e| corrupt("task reply", e))?;
    let Some((fields, errors, inputs)) = parsed else {
        return Ok(None);
    };
    let f = Fields::from_flat(fields);
    parse_task(&f, errors, Fields::from_flat(inputs))
        .map(Some)
        .map_err(|detail| {
            corrupt(
                format!("task {}", f.0.get("id").cloned().unwrap_or_default()),
                detail,
            )
        })
}

fn parse_task(f: &Fields, errors: Vec<String>, inputs: Fields) -> Result<TaskRecord, String> {
    let state = f.str(task_field::STATE)?;
    let mut slots = BTreeMap::new();
    for (slot, value) in inputs.0 {
        let slot: u32 = slot.parse().map_err(|_| format!("input slot '{slot}'"))?;
        let artifact: ArtifactRef =
            serde_json::from_str(&value).map_err(|e| format!("input {slot}: {e}"))?;
        slots.insert(slot, artifact);
    }
    let spec: tessera_core::task::TaskSpec = f.json(task_field::SPEC)?;
    let parent = f.str(task_field::PARENT)?;
    Ok(TaskRecord {
        id: f.str(task_field::ID)?.to_string(),
        job: f.str(task_field::JOB)?.to_string(),
        kind: f.kind(task_field::KIND)?,
        unit: f.num(task_field::UNIT)?,
        state: TaskState::parse(state).ok_or_else(|| format!("unknown task state '{state}'"))?,
        attempt: f.num(task_field::ATTEMPT)?,
        failures: f.num(task_field::FAILURES)?,
        expiries: f.num(task_field::EXPIRIES)?,
        worker: f.str(task_field::WORKER)?.to_string(),
        deadline_ms: f.num(task_field::DEADLINE)?,
        spec,
        parent: (!parent.is_empty()).then(|| parent.to_string()),
        slot: f.num(task_field::SLOT)?,
        waiting: f.num(task_field::WAITING)?,
        is_final: f.str(task_field::FINAL)? == "1",
        checkpoint: f.opt_json(task_field::CHECKPOINT)?,
        checkpoint_iteration: f.num(task_field::CHECKPOINT_ITERATION)?,
        started_ms: f.num(task_field::STARTED)?,
        iteration: f.num(task_field::ITERATION)?,
        loss: f.opt_f64(task_field::LOSS)?,
        output: f.opt_json(task_field::OUTPUT)?,
        errors,
        inputs: slots,
        // Tasks stored before traces were kept have none.
        trace: f.0.get(task_field::TRACE).cloned().unwrap_or_default(),
    })
}

fn parse_event(cursor: &str, f: &Fields) -> Result<Event, String> {
    let task = || f.str(event::TASK).map(str::to_string);
    let worker = || f.str(event::WORKER).map(str::to_string);
    let kind = match f.str(event::KIND)? {
        "task_started" => EventKind::TaskStarted {
            task: task()?,
            kind: f.kind(event::TASK_KIND)?,
            attempt: f.num(event::ATTEMPT)?,
            worker: worker()?,
            unit: f.num(event::UNIT)?,
        },
        "progress" => EventKind::Progress {
            task: task()?,
            attempt: f.num(event::ATTEMPT)?,
            iteration: f.num(event::ITERATION)?,
            iterations: f.num(event::ITERATIONS)?,
            loss: f.opt_f64(event::LOSS)?,
            checkpoint_iteration: f.num(event::CHECKPOINT_ITERATION)?,
        },
        "preview" => EventKind::Preview {
            task: task()?,
            attempt: f.num(event::ATTEMPT)?,
            iteration: f.num(event::ITERATION)?,
        },
        "task_done" => EventKind::TaskDone {
            task: task()?,
            kind: f.kind(event::TASK_KIND)?,
            attempt: f.num(event::ATTEMPT)?,
            worker: worker()?,
            unit: f.num(event::UNIT)?,
            is_final: f.str(event::FINAL)? == "1",
            output: f.json(event::OUTPUT)?,
        },
        "task_failed" => EventKind::TaskFailed {
            task: task()?,
            attempt: f.num(event::ATTEMPT)?,
            worker: worker()?,
            error: f.str(event::ERROR)?.to_string(),
            will_retry: f.str(event::RETRY)? == "1",
        },
        "task_requeued" => EventKind::TaskRequeued {
            task: task()?,
            attempt: f.num(event::ATTEMPT)?,
            worker: worker()?,
            reason: f.str(event::REASON)?.to_string(),
        },
        "job_done" => {
            let state = f.str(event::STATE)?;
            EventKind::JobDone {
                state: JobState::parse(state).ok_or_else(|| format!("job state '{state}'"))?,
                counts: f.counts("")?,
                units_done: f.num(event::UNITS_DONE)?,
                units_failed: f.num(event::UNITS_FAILED)?,
            }
        }
        other => return Err(format!("unknown event '{other}'")),
    };
    Ok(Event {
        cursor: cursor.to_string(),
        time_ms: f.num(event::TIME)?,
        kind,
    })
}

fn parse_worker(f: &Fields) -> Result<WorkerRecord, String> {
    let mut record: WorkerRecord = f.json(worker_field::RECORD)?;
    record.last_seen_ms = f.num(worker_field::LAST_SEEN)?;
    let current = f.str(worker_field::CURRENT)?;
    record.current_task = (!current.is_empty()).then(|| current.to_string());
    // Workers registered before lease-ahead was tracked have no such field.
    let ahead = f.str(worker_field::AHEAD).unwrap_or_default();
    record.ahead_task = (!ahead.is_empty()).then(|| ahead.to_string());
    record.tasks_done = f.num(worker_field::DONE)?;
    Ok(record)
}

/// Which record [`decode_record`] reads.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A job's hash.
    Job,
    /// A task's hash, its errors and its inputs' hash.
    Task,
    /// A worker's hash.
    Worker,
    /// An entry of a job's event stream.
    Event,
    /// The farm's task counts and queue entries.
    Stats,
}

impl RecordKind {
    const NAMES: [(RecordKind, &'static str); 5] = [
        (RecordKind::Job, "job"),
        (RecordKind::Task, "task"),
        (RecordKind::Worker, "worker"),
        (RecordKind::Event, "event"),
        (RecordKind::Stats, "stats"),
    ];

    /// The kind named `name` (`job`, `task`, `worker`, `event` or `stats`).
    pub fn parse(name: &str) -> Option<RecordKind> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k)
    }

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("record", |(_, n)| n)
    }
}

/// Decodes the `redis_state` fuzz target's input format with [`decode_record`]: the first
/// line names the record, the second is its id, then one string per line in up to three lists
/// separated by `--` lines (fields, extra, inputs). Input that names no record is `Ok`. Shared
/// by the fuzz target and the replay of its corpus.
#[doc(hidden)]
pub fn decode_fuzz_input(input: &str) -> StateResult<()> {
    let mut lines = input.split('\n');
    let Some(kind) = lines.next().and_then(RecordKind::parse) else {
        return Ok(());
    };
    let id = lines.next().unwrap_or_default();
    let mut lists: [Vec<String>; 3] = Default::default();
    let mut list = 0;
    for line in lines {
        if line == "--" {
            list = (list + 1).min(2);
        } else {
            lists[list].push(line.to_string());
        }
    }
    let [fields, extra, inputs] = lists;
    decode_record(kind, id, fields, extra, inputs)
}

/// Decodes one record as this backend does when it reads it back from Redis, so a test can show
/// that corrupt state gives [`StateError::Corrupt`] and never a panic. It exists for the
/// `redis_state` fuzz target (`fuzz/`) and the replay of its corpus; the backend itself does
/// not call it. `fields` is the flat field/value list of the hash (or stream entry), `extra`
/// the task's errors or the stats' queue entries (priority, kind, count), `inputs` the flat
/// list of the task's input hash; `id` is the job's id or the event's cursor.
#[doc(hidden)]
pub fn decode_record(
    kind: RecordKind,
    id: &str,
    fields: Vec<String>,
    extra: Vec<String>,
    inputs: Vec<String>,
) -> StateResult<()> {
    let f = Fields::from_flat(fields);
    match kind {
        RecordKind::Job => parse_job(id, &f, 0).map(drop),
        RecordKind::Task => parse_task(&f, extra, Fields::from_flat(inputs)).map(drop),
        RecordKind::Worker => parse_worker(&f).map(drop),
        RecordKind::Event => parse_event(id, &f).map(drop),
        RecordKind::Stats => parse_stats(f, &extra).map(drop),
    }
    .map_err(|detail| corrupt(format!("{} {id}", kind.name()), detail))
}

#[async_trait::async_trait]
impl StateBackend for RedisBackend {
    async fn create_job(&self, job: &NewJob, now: u64) -> StateResult<()> {
        let mut args = vec![
            job.id.clone(),
            job.name.clone(),
            job.priority.to_string(),
            flag(job.upscale_only),
            json(&job.settings),
            job.expected.generate.to_string(),
            job.expected.upscale_tile.to_string(),
            job.expected.stitch.to_string(),
            job.units.len().to_string(),
            job.tenant.clone(),
            job.quota.jobs_in_flight.unwrap_or(0).to_string(),
            job.quota.submissions_per_minute.unwrap_or(0).to_string(),
        ];
        for unit in &job.units {
            args.push(unit.index.to_string());
            args.push(json(unit));
        }
        task_args(&job.tasks, &mut args);
        args.push(job.webhook.clone());
        let created: i64 = self.run(&self.scripts.create_job, now, 0, args).await?;
        let quota = &job.quota;
        match created {
            1 => CreateOutcome::Created,
            -1 => CreateOutcome::JobsInFlight(quota.jobs_in_flight.unwrap_or(0)),
            -2 => CreateOutcome::SubmissionsPerMinute(quota.submissions_per_minute.unwrap_or(0)),
            _ => CreateOutcome::Exists,
        }
        .into_result(job)
    }

    async fn job(&self, id: &str) -> StateResult<Option<JobRecord>> {
        let reply: Option<(Vec<String>, u64)> = self
            .run(&self.scripts.job, 0, 0, vec![id.to_string()])
            .await?;
        reply
            .map(|(fields, ahead)| {
                parse_job(id, &Fields::from_flat(fields), ahead)
                    .map_err(|d| corrupt(format!("job {id}"), d))
            })
            .transpose()
    }

    async fn jobs(
        &self,
        tenant: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> StateResult<(Vec<JobRecord>, u64)> {
        let mut conn = self.link.conn();
        let key = match tenant {
            Some(tenant) => keys::TENANT_JOBS.of(&self.prefix, &[tenant]),
            None => keys::JOBS.of(&self.prefix, &[]),
        };
        let (ids, total): (Vec<String>, u64) = redis::pipe()
            .cmd("ZREVRANGE")
            .arg(&key)
            .arg(offset)
            .arg((offset + limit) as i64 - 1)
            .cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable(&self.address))?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids.iter().take(limit) {
            if let Some(job) = self.job(id).await? {
                jobs.push(job);
            }
        }
        Ok((jobs, total))
    }

    async fn results(
        &self,
        job: &str,
        offset: usize,
        limit: usize,
    ) -> StateResult<Option<(Vec<ResultRecord>, u64)>> {
        type Reply = Option<(
            String,
            u64,
            Vec<Option<String>>,
            Vec<Option<String>>,
            Vec<Option<String>>,
        )>;
        let reply: Reply = self
            .run(
                &self.scripts.results,
                0,
                0,
                vec![job.to_string(), offset.to_string(), limit.to_string()],
            )
            .await?;
        let Some((state, total, units, outputs, errors)) = reply else {
            return Ok(None);
        };
        let cancelled = state == JobState::Cancelled.as_str();
        let bad = |d: String| corrupt(format!("results of job {job}"), d);
        let mut page = Vec::with_capacity(units.len());
        for ((unit, output), error) in units.into_iter().zip(outputs).zip(errors) {
            let unit = unit.ok_or_else(|| bad("a result without its unit".into()))?;
            let unit = serde_json::from_str(&unit).map_err(|e| bad(e.to_string()))?;
            let output: Option<ArtifactRef> = output
                .map(|o| serde_json::from_str(&o))
                .transpose()
                .map_err(|e| bad(e.to_string()))?;
            let state = match (&output, &error) {
                (Some(_), _) => ResultState::Done,
                (None, Some(_)) => ResultState::Failed,
                _ if cancelled => ResultState::Cancelled,
                _ => ResultState::Pending,
            };
            page.push(ResultRecord {
                unit,
                state,
                output,
                error,
            });
        }
        Ok(Some((page, total)))
    }

    async fn task(&self, id: &str) -> StateResult<Option<TaskRecord>> {
        self.read_task(id).await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> StateResult<()> {
        let mut conn = self.link.conn();
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(keys::WORKER.of(&self.prefix, &[&worker.id]))
            .arg(worker_field::RECORD)
            .arg(json(worker))
            .arg(worker_field::LAST_SEEN)
            .arg(worker.last_seen_ms)
            .arg(worker_field::CURRENT)
            .arg(worker.current_task.clone().unwrap_or_default())
            .arg(worker_field::AHEAD)
            .arg(worker.ahead_task.clone().unwrap_or_default())
            .arg(worker_field::DONE)
            .arg(worker.tasks_done)
            .ignore()
            .cmd("SADD")
            .arg(keys::WORKERS.of(&self.prefix, &[]))
            .arg(&worker.id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable(&self.address))
    }

    async fn worker(&self, id: &str) -> StateResult<Option<WorkerRecord>> {
        let mut conn = self.link.conn();
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(keys::WORKER.of(&self.prefix, &[id]))
            .query_async(&mut conn)
            .await
            .map_err(unavailable(&self.address))?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_worker(&Fields::from_flat(fields))
            .map(Some)
            .map_err(|d| corrupt(format!("worker {id}"), d))
    }

    async fn workers(&self) -> StateResult<Vec<WorkerRecord>> {
        let mut conn = self.link.conn();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::WORKERS.of(&self.prefix, &[]))
            .query_async(&mut conn)
            .await
            .map_err(unavailable(&self.address))?;
        ids.sort();
        let mut workers = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(w) = self.worker(&id).await? {
                workers.push(w);
            }
        }
        Ok(workers)
    }

    async fn deregister_worker(
        &self,
        id: &str,
        policy: &Policy,
        now: u64,
    ) -> StateResult<Vec<String>> {
        let args = vec![id.to_string()];
        self.run(
            &self.scripts.deregister_worker,
            now,
            policy.events_max,
            args,
        )
        .await
    }

    async fn lease(
        &self,
        worker: &str,
        caps: &Capabilities,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<Option<TaskRecord>> {
        let kinds: Vec<&str> = caps.kinds.iter().map(|k| k.as_str()).collect();
        let args = vec![
            worker.to_string(),
            lease_ms.to_string(),
            kinds.join(","),
            caps.models.join(","),
            caps.device.clone(),
            caps.max_pixels.to_string(),
            caps.max_side.to_string(),
            caps.max_iterations.to_string(),
        ];
        let reply: Value = self
            .run(&self.scripts.lease, now, policy.events_max, args)
            .await?;
        parse_task_reply(reply)
    }

    async fn heartbeat(
        &self,
        lease: LeaseRef<'_>,
        progress: &Progress,
        policy: &Policy,
        now: u64,
        lease_ms: u64,
    ) -> StateResult<HeartbeatOutcome> {
        let (checkpoint, checkpoint_iteration) = match &progress.checkpoint {
            Some((a, i)) => (json(a), *i),
            None => (String::new(), 0),
        };
        let args = vec![
            lease.task.to_string(),
            lease.attempt.to_string(),
            lease.worker.to_string(),
            lease_ms.to_string(),
            progress.iteration.to_string(),
            progress.iterations.to_string(),
            progress.loss.map(|l| l.to_string()).unwrap_or_default(),
            checkpoint,
            checkpoint_iteration.to_string(),
            flag(progress.preview),
        ];
        let reply: Vec<String> = self
            .run(&self.scripts.heartbeat, now, policy.events_max, args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(HeartbeatOutcome::Continue {
                deadline_ms: deadline(&reply)?,
            }),
            Some("paused") => Ok(HeartbeatOutcome::Paused {
                deadline_ms: deadline(&reply)?,
            }),
            Some("cancelled") => Ok(HeartbeatOutcome::Cancelled),
            Some("lost") => Ok(HeartbeatOutcome::Lost),
            _ => Err(corrupt("heartbeat reply", format!("{reply:?}"))),
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
        let mut args = vec![
            lease.task.to_string(),
            lease.attempt.to_string(),
            lease.worker.to_string(),
            json(output),
            policy.ban_after.to_string(),
        ];
        task_args(followups, &mut args);
        let reply: String = self
            .run(&self.scripts.complete, now, policy.events_max, args)
            .await?;
        match reply.as_str() {
            "accepted" => Ok(CompleteOutcome::Accepted),
            "duplicate" => Ok(CompleteOutcome::Duplicate),
            "stale" => Ok(CompleteOutcome::Stale),
            "cancelled" => Ok(CompleteOutcome::Cancelled),
            other => Err(corrupt("complete reply", other)),
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
        let args = vec![
            lease.task.to_string(),
            lease.attempt.to_string(),
            lease.worker.to_string(),
            error.to_string(),
            flag(retryable),
            policy.max_retries.to_string(),
        ];
        let (verdict, failures, banned): (String, u32, u32) = self
            .run(&self.scripts.fail, now, policy.events_max, args)
            .await?;
        let verdict = match verdict.as_str() {
            "retrying" => FailVerdict::Retrying,
            "failed" => FailVerdict::Failed,
            "stale" => FailVerdict::Stale,
            "cancelled" => FailVerdict::Cancelled,
            other => return Err(corrupt("fail reply", other)),
        };
        Ok(FailOutcome {
            verdict,
            failures,
            banned: banned == 1,
        })
    }

    async fn redo_input(
        &self,
        lease: LeaseRef<'_>,
        key: &str,
        producer: Option<&str>,
        policy: &Policy,
        now: u64,
    ) -> StateResult<FailVerdict> {
        let args = vec![
            lease.task.to_string(),
            lease.attempt.to_string(),
            lease.worker.to_string(),
            key.to_string(),
            producer.unwrap_or_default().to_string(),
        ];
        let verdict: String = self
            .run(&self.scripts.redo_input, now, policy.events_max, args)
            .await?;
        match verdict.as_str() {
            "waiting_for_input" => Ok(FailVerdict::WaitingForInput),
            "requeued" => Ok(FailVerdict::Requeued),
            "failed" => Ok(FailVerdict::Failed),
            "stale" => Ok(FailVerdict::Stale),
            "cancelled" => Ok(FailVerdict::Cancelled),
            other => Err(corrupt("redo_input reply", other)),
        }
    }

    async fn expire(&self, policy: &Policy, now: u64, limit: usize) -> StateResult<Vec<String>> {
        let args = vec![limit.to_string(), policy.max_expiries.to_string()];
        self.run(&self.scripts.expire, now, policy.events_max, args)
            .await
    }

    async fn cancel(&self, job: &str, policy: &Policy, now: u64) -> StateResult<CancelOutcome> {
        let reply: Vec<String> = self
            .run(
                &self.scripts.cancel,
                now,
                policy.events_max,
                vec![job.to_string()],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("cancelled") => Ok(CancelOutcome::Cancelled),
            Some("missing") => Ok(CancelOutcome::NotFound),
            Some("ended") => reply
                .get(1)
                .and_then(|s| JobState::parse(s))
                .map(CancelOutcome::AlreadyEnded)
                .ok_or_else(|| corrupt("cancel reply", format!("{reply:?}"))),
            _ => Err(corrupt("cancel reply", format!("{reply:?}"))),
        }
    }

    async fn set_priority(
        &self,
        job: &str,
        priority: i32,
        policy: &Policy,
        now: u64,
    ) -> StateResult<ControlOutcome> {
        let args = vec![job.to_string(), priority.to_string()];
        self.control(&self.scripts.set_priority, args, policy, now)
            .await
    }

    async fn pause(&self, job: &str, policy: &Policy, now: u64) -> StateResult<ControlOutcome> {
        self.control(&self.scripts.pause, vec![job.to_string()], policy, now)
            .await
    }

    async fn resume(&self, job: &str, policy: &Policy, now: u64) -> StateResult<ControlOutcome> {
        self.control(&self.scripts.resume, vec![job.to_string()], policy, now)
            .await
    }

    async fn release(&self, lease: LeaseRef<'_>, policy: &Policy, now: u64) -> StateResult<bool> {
        let args = vec![
            lease.task.to_string(),
            lease.attempt.to_string(),
            lease.worker.to_string(),
        ];
        let released: i64 = self
            .run(&self.scripts.release, now, policy.events_max, args)
            .await?;
        Ok(released == 1)
    }

    async fn events(
        &self,
        job: &str,
        after: &str,
        max: usize,
        wait: Duration,
    ) -> StateResult<Vec<Event>> {
        let found = self.read_stream(job, after, max, None).await?;
        if !found.is_empty() || wait.is_zero() {
            return Ok(found);
        }
        self.read_stream(job, after, max, Some(wait)).await
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }

    async fn stats(&self) -> StateResult<FarmStats> {
        let (counts, queued): (Vec<String>, Vec<String>) =
            self.run(&self.scripts.stats, 0, 0, Vec::new()).await?;
        parse_stats(Fields::from_flat(counts), &queued).map_err(|detail| corrupt("stats", detail))
    }

    async fn ping(&self) -> StateResult<()> {
        let mut conn = self.link.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable(&self.address))
    }

    async fn record_rate(&self, sample: &RateSample, now: u64) -> StateResult<()> {
        let args = vec![
            sample.worker.clone(),
            sample.class.clone(),
            sample.amount.to_string(),
            sample.started_ms.to_string(),
            RATE_WINDOW.to_string(),
        ];
        let _: String = self.run(&self.scripts.record_rate, now, 0, args).await?;
        Ok(())
    }

    async fn webhook_claim(
        &self,
        now: u64,
        limit: usize,
        lease_ms: u64,
    ) -> StateResult<Vec<WebhookClaim>> {
        let args = vec![limit.to_string(), lease_ms.to_string()];
        let reply: Vec<Vec<String>> = self.run(&self.scripts.webhook_claim, now, 0, args).await?;
        reply
            .into_iter()
            .map(|fields| parse_claim(fields).map_err(|d| corrupt("webhook claim", d)))
            .collect()
    }

    async fn webhook_advance(
        &self,
        job: &str,
        from: &str,
        to: &str,
        step: &WebhookStep,
        now: u64,
    ) -> StateResult<bool> {
        let (name, error) = match step {
            WebhookStep::Skipped => ("skipped", ""),
            WebhookStep::Delivered => ("delivered", ""),
            WebhookStep::Dropped(error) => ("dropped", error.as_str()),
        };
        let args = [job, from, to, name, error].map(str::to_string).to_vec();
        let moved: i64 = self
            .run(&self.scripts.webhook_advance, now, 0, args)
            .await?;
        Ok(moved == 1)
    }

    async fn webhook_failed(
        &self,
        job: &str,
        from: &str,
        error: &str,
        retry_at: u64,
        now: u64,
    ) -> StateResult<bool> {
        let args = vec![
            job.to_string(),
            from.to_string(),
            error.to_string(),
            retry_at.to_string(),
        ];
        let moved: i64 = self.run(&self.scripts.webhook_failed, now, 0, args).await?;
        Ok(moved == 1)
    }

    async fn rates(&self) -> StateResult<Rates> {
        let mut conn = self.link.conn();
        let flat: Vec<String> = redis::cmd("HGETALL")
            .arg(keys::RATES.of(&self.prefix, &[]))
            .query_async(&mut conn)
            .await
            .map_err(unavailable(&self.address))?;
        parse_rates(flat).map_err(|detail| corrupt("rates", detail))
    }
}

/// The farm's rates from the flat `rates` hash: each class's `RATE` fields.
fn parse_rates(flat: Vec<String>) -> Result<Rates, String> {
    let mut rates = Rates::new();
    for pair in flat.chunks(2) {
        let [field, value] = pair else {
            return Err("an odd number of hash entries".into());
        };
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("field {field} is {value:?}, not a count"))
        };
        let (part, class): (fn(&mut Rate) -> &mut u64, _) =
            if let Some(class) = field.strip_prefix(rate_field::MS) {
                (|r| &mut r.ms, class)
            } else if let Some(class) = field.strip_prefix(rate_field::AMOUNT) {
                (|r| &mut r.amount, class)
            } else if let Some(class) = field.strip_prefix(rate_field::SAMPLES) {
                (|r| &mut r.samples, class)
            } else {
                return Err(format!("unknown field {field}"));
            };
        *part(rates.entry(class.to_string()).or_default()) = number()?;
    }
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Replays every committed input of the `redis_state` fuzz target (`fuzz/corpus/`), read as
    /// the target reads it, so CI on the stable toolchain catches a decoder that panics again.
    #[test]
    fn redis_state_corpus_decodes_or_is_corrupt() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/redis_state");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let Ok(input) = String::from_utf8(std::fs::read(entry.unwrap().path()).unwrap()) else {
                continue;
            };
            match decode_fuzz_input(&input) {
                Ok(()) | Err(StateError::Corrupt { .. }) => replayed += 1,
                Err(other) => panic!("{other:?} is not a corrupt-state error"),
            }
        }
        assert!(replayed > 0, "corpus {} is empty", dir.display());
    }

    #[test]
    fn corrupt_records_are_corrupt_errors() {
        let err = decode_record(
            RecordKind::Worker,
            "w1",
            strings(&["record", "{"]),
            vec![],
            vec![],
        )
        .unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        let err = decode_record(
            RecordKind::Stats,
            "",
            vec![],
            strings(&["1", "generate"]),
            vec![],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("is not priority, kind, count"),
            "{err}"
        );
    }
}
