//! The vocabulary of the Redis state: every key and hash field that `redis.rs` and the Lua
//! scripts (`lua/`) use is named here once. The scripts get the names as Lua tables from
//! [`lua_prelude`] (`KEY`, `JOB`, `TASK`, `WORKER`, `EVENT`), so no name is spelled twice,
//! and this table is their documentation. Changing a name here changes what is stored: state
//! written before would no longer load.
//!
//! Every key starts with the farm's prefix `P` (`--redis-prefix`), which scripts receive as
//! `KEYS[1]`. For Redis Cluster the prefix holds a hash tag (`{tessera}:`, say), so that all
//! keys of one farm hash to one slot and a script may touch any of them. The prefix is used as
//! given rather than wrapped in a tag, because wrapping would rename every stored key and
//! state written before would no longer load.
//!
//! | Key (below `P`) | Type | Lua | Holds |
//! |---|---|---|---|
//! | `job:{job}` | hash | `KEY.job` | a job: the `JOB` fields below |
//! | `task:{task}` | hash | `KEY.task` | a task: the `TASK` fields below |
//! | `worker:{worker}` | hash | `KEY.worker` | a registered worker: the `WORKER` fields below |
//! | `workers` | set | `KEY.workers` | ids of the registered workers |
//! | `jobs` | sorted set | `KEY.jobs` | every job id, scored by submission order |
//! | `tenant_jobs:{tenant}` | sorted set | `KEY.tenant_jobs` | a tenant's job ids, scored by submission order |
//! | `running:{tenant}` | set | `KEY.running` | a tenant's jobs still running (its jobs-in-flight quota) |
//! | `submissions:{tenant}:{minute}` | string | `KEY.submissions` | jobs a tenant submitted in a clock minute (expires after two) |
//! | `jobseq` | string | `KEY.jobseq` | the last job's submission number |
//! | `seq` | string | `KEY.seq` | the last task's creation number (its place in its queue) |
//! | `tick` | string | `KEY.tick` | leases so far: the fair-share clock of jobs of one priority |
//! | `units:{job}` | hash | `KEY.units` | a job's results: index to `Unit` JSON |
//! | `results:{job}` | hash | `KEY.results` | a job's finished results: index to output `ArtifactRef` JSON |
//! | `uerr:{job}` | hash | `KEY.unit_errors` | a job's failed results: index to the error |
//! | `tasks:{job}` | list | `KEY.tasks` | a job's task ids in creation order |
//! | `q:{job}:{class}` | sorted set | `KEY.queue` | a job's queued tasks of one class (requirements key), scored by creation number |
//! | `classes:{job}` | sorted set | `KEY.classes` | a job's classes with queued tasks, scored by kind rank |
//! | `rr:{priority}` | sorted set | `KEY.rotation` | jobs of one priority with queued tasks, scored by fair-share position (`JOB.vt`) |
//! | `prios` | sorted set | `KEY.priorities` | priorities with queued tasks |
//! | `leases` | sorted set | `KEY.leases` | running tasks, scored by lease deadline |
//! | `counts` | hash | `KEY.counts` | tasks per state over every job (task state names as fields) |
//! | `errors:{task}` | list | `KEY.errors` | a task's errors, oldest first |
//! | `inputs:{task}` | hash | `KEY.inputs` | a task's consumed outputs: slot to `ArtifactRef` JSON |
//! | `tfail:{task}` | set | `KEY.failed_by` | workers whose attempts at a task failed |
//! | `wfail:{job}` | hash | `KEY.worker_failures` | per worker, tasks of a job it failed and another did |
//! | `banned:{job}` | set | `KEY.banned` | workers kept off a job |
//! | `events:{job}` | stream | `KEY.events` | a job's events: the `EVENT` fields below |
//! | `wake` | channel | `KEY.wake` | published on when tasks were queued, to wake waiting leases |
//! | `rates` | hash | `KEY.rates` | the farm's measured speed per class of work: the `RATE` fields below |
//! | `rate_clock` | hash | `KEY.rate_clock` | per worker id, when it last finished a task (where its next rate sample starts) |
//! | `rate_seen` | set | `KEY.rate_seen` | a worker id and a class joined by a vertical bar, for each class the worker finished a task of (its first of a class is no rate sample) |
//! | `webhooks` | sorted set | `KEY.webhooks` | the webhook outbox: jobs with events to deliver, scored by when they are due (a claim pushes the score to the claim's end) |
//!
//! | Hash | Field | Lua | Holds |
//! |---|---|---|---|
//! | job | `name` | `JOB.name` | the name its submitter gave it |
//! | job | `tenant` | `JOB.tenant` | its tenant ("" for none; absent in jobs from before tenants) |
//! | job | `priority` | `JOB.priority` | its priority |
//! | job | `state` | `JOB.state` | `running`, `succeeded`, `failed` or `cancelled` |
//! | job | `upscale_only` | `JOB.upscale_only` | `1` when it upscales users' pictures, else `0` |
//! | job | `settings` | `JOB.settings` | its `Settings` JSON |
//! | job | `submitted_ms` | `JOB.submitted_ms` | submission time |
//! | job | `finished_ms` | `JOB.finished_ms` | end time (0 while running) |
//! | job | `vt` | `JOB.vt` | fair-share position among jobs of its priority |
//! | job | `n_{state}` | `JOB.count` | its tasks in each task state |
//! | job | `e_{kind}` | `JOB.expected` | tasks of each kind it will have in all |
//! | job | `x_{kind}` | `JOB.ended` | tasks of each kind that ended |
//! | job | `b_{kind}` | `JOB.busy` | milliseconds the finished tasks of each kind ran |
//! | job | `m_{kind}` | `JOB.timed` | finished tasks of each kind counted in `b_` |
//! | job | `units_total` | `JOB.units_total` | its results |
//! | job | `units_done` | `JOB.units_done` | results done |
//! | job | `units_failed` | `JOB.units_failed` | results failed |
//! | job | `attempts` | `JOB.attempts` | leases granted to its tasks (absent in older jobs: 0) |
//! | job | `retries` | `JOB.retries` | attempts that failed or expired and were queued again (absent in older jobs: 0) |
//! | job | `paused` | `JOB.paused` | `1` while a user has it paused (absent or `0` otherwise) |
//! | job | `webhook` | `JOB.webhook` | the URL its events are POSTed to (absent or "" for none) |
//! | job | `wh_cursor` | `JOB.wh_cursor` | the last of its events delivered or passed over (absent: none) |
//! | job | `wh_tries` | `JOB.wh_tries` | failed attempts at the event after `wh_cursor` |
//! | job | `wh_since` | `JOB.wh_since` | when the first of those failed (0: none did) |
//! | job | `wh_delivered` | `JOB.wh_delivered` | events its receiver accepted |
//! | job | `wh_failures` | `JOB.wh_failures` | delivery attempts that failed |
//! | job | `wh_dropped` | `JOB.wh_dropped` | events given up after the retry time |
//! | job | `wh_error` | `JOB.wh_error` | why the latest failed attempt failed |
//! | job | `wh_pending` | `JOB.wh_pending` | `1` while it is in the outbox |
//! | job | `wh_next` | `JOB.wh_next` | when the next attempt after a failure is due (0: none waits) |
//! | task | `id` | `TASK.id` | task id |
//! | task | `job` | `TASK.job` | its job |
//! | task | `kind` | `TASK.kind` | `generate`, `upscale_tile` or `stitch` |
//! | task | `unit` | `TASK.unit` | the result it contributes to |
//! | task | `state` | `TASK.state` | its task state |
//! | task | `attempt` | `TASK.attempt` | leases so far (the fencing token) |
//! | task | `failures` | `TASK.failures` | attempts reported failed |
//! | task | `expiries` | `TASK.expiries` | leases that ended without a report |
//! | task | `worker` | `TASK.worker` | worker of the latest lease ("" before the first) |
//! | task | `deadline` | `TASK.deadline` | end of the current lease |
//! | task | `spec` | `TASK.spec` | its `TaskSpec` JSON |
//! | task | `parent` | `TASK.parent` | the task consuming its output ("" for none) |
//! | task | `slot` | `TASK.slot` | which input of the parent it fills |
//! | task | `waiting` | `TASK.waiting` | inputs still missing |
//! | task | `final` | `TASK.final` | `1` when its output is a result |
//! | task | `checkpoint` | `TASK.checkpoint` | latest checkpoint's `ArtifactRef` JSON ("" for none) |
//! | task | `ckpt_iter` | `TASK.checkpoint_iteration` | that checkpoint's step |
//! | task | `iteration` | `TASK.iteration` | latest reported step |
//! | task | `loss` | `TASK.loss` | latest reported loss ("" for none) |
//! | task | `output` | `TASK.output` | accepted output's `ArtifactRef` JSON ("" for none) |
//! | task | `class` | `TASK.class` | its requirements key, the queue it waits in |
//! | task | `seq` | `TASK.seq` | creation number, its place in its queue |
//! | task | `ptiles` | `TASK.planned_tiles` | upscale tiles its output will plan (dropped from `e_` if it fails) |
//! | task | `pstitches` | `TASK.planned_stitches` | stitches its output will plan (likewise) |
//! | task | `started` | `TASK.started` | start of the latest lease (0 before the first) |
//! | task | `trace` | `TASK.trace` | the submission's W3C `traceparent` (absent in older tasks) |
//! | worker | `record` | `WORKER.record` | its `WorkerRecord` JSON as registered |
//! | worker | `last_seen` | `WORKER.last_seen` | last lease or heartbeat |
//! | worker | `current` | `WORKER.current` | the task it works on ("" for none) |
//! | worker | `ahead` | `WORKER.ahead` | a task it leased ahead while working on `current` ("" for none; absent in older workers) |
//! | worker | `done` | `WORKER.done` | tasks it finished |
//! | event | `e` | `EVENT.kind` | `task_started`, `progress`, `preview`, `task_done`, `task_failed`, `task_requeued` or `job_done` |
//! | event | `t` | `EVENT.time` | when, in coordinator time |
//! | event | `task` | `EVENT.task` | the task it concerns |
//! | event | `kind` | `EVENT.task_kind` | that task's kind |
//! | event | `attempt` | `EVENT.attempt` | the attempt it concerns |
//! | event | `worker` | `EVENT.worker` | the worker of that attempt |
//! | event | `unit` | `EVENT.unit` | the result the task contributes to |
//! | event | `final` | `EVENT.final` | `1` when the output is a result |
//! | event | `output` | `EVENT.output` | the accepted output's `ArtifactRef` JSON |
//! | event | `iteration` | `EVENT.iteration` | steps done |
//! | event | `iterations` | `EVENT.iterations` | steps in all |
//! | event | `loss` | `EVENT.loss` | the reported loss ("" for none) |
//! | event | `ckpt_iter` | `EVENT.checkpoint_iteration` | step of the latest checkpoint |
//! | event | `error` | `EVENT.error` | what went wrong |
//! | event | `retry` | `EVENT.retry` | `1` when the task was queued again |
//! | event | `reason` | `EVENT.reason` | why a lease ended |
//! | event | `state` | `EVENT.state` | the job's final state |
//! | event | `units_done` | `EVENT.units_done` | results done |
//! | event | `units_failed` | `EVENT.units_failed` | results failed |
//! | event | `{state}` | (task state names) | the job's tasks in each task state, in `job_done` |
//! | rate | `ms:{class}` | `RATE.ms` | milliseconds the samples of a class of work took |
//! | rate | `amount:{class}` | `RATE.amount` | the work they did (iterations, pixels) |
//! | rate | `n:{class}` | `RATE.samples` | samples counted (all three halved at `RATE_WINDOW`) |

/// A family of keys: a pattern below the prefix whose `{...}` parts are filled in order.
pub(super) struct Key {
    /// Its name in the Lua `KEY` table.
    lua: &'static str,
    /// The key below the prefix, with `{...}` for each part a caller fills in.
    pattern: &'static str,
}

impl Key {
    const fn new(lua: &'static str, pattern: &'static str) -> Key {
        Key { lua, pattern }
    }

    /// The pattern split at its `{...}` parts: the literal pieces between them.
    fn pieces(&self) -> Vec<&'static str> {
        let mut pieces = Vec::new();
        let mut rest = self.pattern;
        while let Some(open) = rest.find('{') {
            pieces.push(&rest[..open]);
            let close = rest[open..].find('}').expect("patterns close their parts") + open;
            rest = &rest[close + 1..];
        }
        pieces.push(rest);
        pieces
    }

    /// The key of this family under `prefix` with its parts filled by `parts`, in order.
    pub(super) fn of(&self, prefix: &str, parts: &[&str]) -> String {
        let pieces = self.pieces();
        assert_eq!(
            pieces.len(),
            parts.len() + 1,
            "parts of key {}",
            self.pattern
        );
        let mut key = prefix.to_string();
        for (piece, part) in pieces.iter().zip(parts.iter().chain([&""])) {
            key.push_str(piece);
            key.push_str(part);
        }
        key
    }

    /// The Lua table entry: the key itself when it has no parts, else a function of them.
    fn lua_entry(&self) -> String {
        let pieces = self.pieces();
        if pieces.len() == 1 {
            return format!("  {} = P .. '{}',\n", self.lua, self.pattern);
        }
        let args: Vec<String> = (1..pieces.len()).map(|i| format!("a{i}")).collect();
        let mut body = String::from("P");
        for (i, piece) in pieces.iter().enumerate() {
            if !piece.is_empty() {
                body.push_str(&format!(" .. '{piece}'"));
            }
            if i + 1 < pieces.len() {
                body.push_str(&format!(" .. a{}", i + 1));
            }
        }
        format!(
            "  {} = function({}) return {body} end,\n",
            self.lua,
            args.join(", ")
        )
    }
}

pub(super) const JOB: Key = Key::new("job", "job:{job}");
pub(super) const TASK: Key = Key::new("task", "task:{task}");
pub(super) const WORKER: Key = Key::new("worker", "worker:{worker}");
pub(super) const WORKERS: Key = Key::new("workers", "workers");
pub(super) const JOBS: Key = Key::new("jobs", "jobs");
pub(super) const TENANT_JOBS: Key = Key::new("tenant_jobs", "tenant_jobs:{tenant}");
pub(super) const EVENTS: Key = Key::new("events", "events:{job}");
pub(super) const WAKE: Key = Key::new("wake", "wake");
pub(super) const RATES: Key = Key::new("rates", "rates");
pub(super) const RATE_CLOCK: Key = Key::new("rate_clock", "rate_clock");
pub(super) const RATE_SEEN: Key = Key::new("rate_seen", "rate_seen");
pub(super) const WEBHOOKS: Key = Key::new("webhooks", "webhooks");

/// Every key family, in the order of the table above.
const KEYS: [Key; 32] = [
    JOB,
    TASK,
    WORKER,
    WORKERS,
    JOBS,
    TENANT_JOBS,
    Key::new("running", "running:{tenant}"),
    Key::new("submissions", "submissions:{tenant}:{minute}"),
    Key::new("jobseq", "jobseq"),
    Key::new("seq", "seq"),
    Key::new("tick", "tick"),
    Key::new("units", "units:{job}"),
    Key::new("results", "results:{job}"),
    Key::new("unit_errors", "uerr:{job}"),
    Key::new("tasks", "tasks:{job}"),
    Key::new("queue", "q:{job}:{class}"),
    Key::new("classes", "classes:{job}"),
    Key::new("rotation", "rr:{priority}"),
    Key::new("priorities", "prios"),
    Key::new("leases", "leases"),
    Key::new("counts", "counts"),
    Key::new("errors", "errors:{task}"),
    Key::new("inputs", "inputs:{task}"),
    Key::new("failed_by", "tfail:{task}"),
    Key::new("worker_failures", "wfail:{job}"),
    Key::new("banned", "banned:{job}"),
    EVENTS,
    WAKE,
    RATES,
    RATE_CLOCK,
    RATE_SEEN,
    WEBHOOKS,
];

/// Names the hash fields of one record: a Rust constant per field, and the same names as a
/// Lua table for the scripts.
macro_rules! fields {
    ($module:ident, $lua:literal { $($name:ident = $value:literal,)* }) => {
        /// Field names of one record (see the table in the module's doc).
        pub(super) mod $module {
            $(pub(in crate::state) const $name: &str = $value;)*

            /// The Lua table of these names, keyed by the constants' names in lower case.
            pub(in crate::state) fn lua() -> String {
                let mut table = format!("local {} = {{\n", $lua);
                $(table.push_str(&format!(
                    "  {} = '{}',\n",
                    stringify!($name).to_lowercase(),
                    $name
                ));)*
                table.push_str("}\n");
                table
            }

            /// Every stored name, for the test that the module's table documents them.
            #[cfg(test)]
            pub(in crate::state) const ALL: &[&str] = &[$($name),*];
        }
    };
}

fields!(job, "JOB" {
    NAME = "name",
    TENANT = "tenant",
    PRIORITY = "priority",
    STATE = "state",
    UPSCALE_ONLY = "upscale_only",
    SETTINGS = "settings",
    SUBMITTED_MS = "submitted_ms",
    FINISHED_MS = "finished_ms",
    VT = "vt",
    COUNT = "n_",
    EXPECTED = "e_",
    ENDED = "x_",
    BUSY = "b_",
    TIMED = "m_",
    UNITS_TOTAL = "units_total",
    UNITS_DONE = "units_done",
    UNITS_FAILED = "units_failed",
    ATTEMPTS = "attempts",
    RETRIES = "retries",
    PAUSED = "paused",
    WEBHOOK = "webhook",
    WH_CURSOR = "wh_cursor",
    WH_TRIES = "wh_tries",
    WH_SINCE = "wh_since",
    WH_DELIVERED = "wh_delivered",
    WH_FAILURES = "wh_failures",
    WH_DROPPED = "wh_dropped",
    WH_ERROR = "wh_error",
    WH_PENDING = "wh_pending",
    WH_NEXT = "wh_next",
});

fields!(task, "TASK" {
    ID = "id",
    JOB = "job",
    KIND = "kind",
    UNIT = "unit",
    STATE = "state",
    ATTEMPT = "attempt",
    FAILURES = "failures",
    EXPIRIES = "expiries",
    WORKER = "worker",
    DEADLINE = "deadline",
    SPEC = "spec",
    PARENT = "parent",
    SLOT = "slot",
    WAITING = "waiting",
    FINAL = "final",
    CHECKPOINT = "checkpoint",
    CHECKPOINT_ITERATION = "ckpt_iter",
    ITERATION = "iteration",
    LOSS = "loss",
    OUTPUT = "output",
    CLASS = "class",
    SEQ = "seq",
    PLANNED_TILES = "ptiles",
    PLANNED_STITCHES = "pstitches",
    STARTED = "started",
    TRACE = "trace",
});

fields!(worker, "WORKER" {
    RECORD = "record",
    LAST_SEEN = "last_seen",
    CURRENT = "current",
    AHEAD = "ahead",
    DONE = "done",
});

fields!(event, "EVENT" {
    KIND = "e",
    TIME = "t",
    TASK = "task",
    TASK_KIND = "kind",
    ATTEMPT = "attempt",
    WORKER = "worker",
    UNIT = "unit",
    FINAL = "final",
    OUTPUT = "output",
    ITERATION = "iteration",
    ITERATIONS = "iterations",
    LOSS = "loss",
    CHECKPOINT_ITERATION = "ckpt_iter",
    ERROR = "error",
    RETRY = "retry",
    REASON = "reason",
    STATE = "state",
    UNITS_DONE = "units_done",
    UNITS_FAILED = "units_failed",
});

fields!(rate, "RATE" {
    MS = "ms:",
    AMOUNT = "amount:",
    SAMPLES = "n:",
});

/// The Lua that every script starts with: `P` from `KEYS[1]`, and the `KEY`, `JOB`, `TASK`,
/// `WORKER`, `EVENT` and `RATE` tables of the names above, so scripts never spell a name
/// themselves.
pub(super) fn lua_prelude() -> String {
    let mut lua = String::from("local P = KEYS[1]\nlocal KEY = {\n");
    for key in &KEYS {
        lua.push_str(&key.lua_entry());
    }
    lua.push_str("}\n");
    for table in [
        job::lua(),
        task::lua(),
        worker::lua(),
        event::lua(),
        rate::lua(),
    ] {
        lua.push_str(&table);
    }
    lua
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's doc table is the documentation of the names: it must list every one.
    #[test]
    fn the_doc_table_lists_every_key_and_field() {
        let doc = include_str!("keys.rs");
        for key in &KEYS {
            let row = format!("| `{}` |", key.pattern);
            assert!(doc.contains(&row), "no row for key {}", key.pattern);
            assert!(doc.contains(&format!("`KEY.{}`", key.lua)), "{}", key.lua);
        }
        let hashes = [
            ("job", job::ALL),
            ("task", task::ALL),
            ("worker", worker::ALL),
            ("event", event::ALL),
            ("rate", rate::ALL),
        ];
        for (hash, fields) in hashes {
            for field in fields {
                let plain = format!("//! | {hash} | `{field}` |");
                let prefixed = format!("//! | {hash} | `{field}{{");
                assert!(
                    doc.contains(&plain) || doc.contains(&prefixed),
                    "no row for {hash} field {field}"
                );
            }
        }
    }

    #[test]
    fn keys_fill_their_parts_in_order() {
        let queue = &KEYS[15];
        assert_eq!(queue.of("{t}", &["j", "c|1"]), "{t}q:j:c|1");
        assert_eq!(
            queue.lua_entry(),
            "  queue = function(a1, a2) return P .. 'q:' .. a1 .. ':' .. a2 end,\n"
        );
        assert_eq!(WORKERS.of("{t}", &[]), "{t}workers");
        assert_eq!(WORKERS.lua_entry(), "  workers = P .. 'workers',\n");
    }
}
