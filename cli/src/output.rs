//! How the API's messages read to people (tables, short state names) and to scripts (JSON
//! objects with the same field names as the protobuf messages), in one place so every command
//! prints a job, a result or an event the same way.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tessera_core::job::SettingsPatch;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;

/// A job state as users write it: "running", "succeeded", "failed", "cancelled".
pub fn job_state(state: v1::JobState) -> &'static str {
    match state {
        v1::JobState::Unspecified => "unknown",
        v1::JobState::Running => "running",
        v1::JobState::Succeeded => "succeeded",
        v1::JobState::Failed => "failed",
        v1::JobState::Cancelled => "cancelled",
    }
}

/// A result state: "pending", "done", "failed", "cancelled".
pub fn result_state(state: v1::ResultState) -> &'static str {
    match state {
        v1::ResultState::Unspecified => "unknown",
        v1::ResultState::Pending => "pending",
        v1::ResultState::Done => "done",
        v1::ResultState::Failed => "failed",
        v1::ResultState::Cancelled => "cancelled",
    }
}

/// A task kind: "generate", "upscale_tile", "stitch".
pub fn task_kind(kind: v1::TaskKind) -> &'static str {
    match kind {
        v1::TaskKind::Unspecified => "unknown",
        v1::TaskKind::Generate => "generate",
        v1::TaskKind::UpscaleTile => "upscale_tile",
        v1::TaskKind::Stitch => "stitch",
    }
}

/// Settings as JSON, unset fields as null.
pub fn settings_json(settings: Option<&v1::Settings>) -> Value {
    let patch = SettingsPatch::from(settings.cloned().unwrap_or_default());
    serde_json::to_value(patch).expect("settings are plain data")
}

/// A stored file as JSON.
pub fn artifact_json(artifact: Option<&v1::ArtifactRef>) -> Value {
    artifact.map_or(Value::Null, |a| {
        json!({"key": a.key, "size": a.size, "sha256": a.sha256,
               "width": a.width, "height": a.height})
    })
}

fn counts_json(counts: Option<&v1::TaskCounts>) -> Value {
    let c = counts.cloned().unwrap_or_default();
    json!({"queued": c.queued, "blocked": c.blocked, "running": c.running, "done": c.done,
           "failed": c.failed, "cancelled": c.cancelled, "planned": c.planned})
}

/// A job's state as JSON.
pub fn job_json(job: &v1::JobStatus) -> Value {
    json!({
        "job_id": job.job_id,
        "name": job.name,
        "priority": job.priority,
        "state": job_state(job.state()),
        "upscale_only": job.upscale_only,
        "tasks": counts_json(job.tasks.as_ref()),
        "results_total": job.results_total,
        "results_done": job.results_done,
        "results_failed": job.results_failed,
        "queue_position": job.queue_position,
        "eta_ms": job.eta_ms,
        "submitted_at_ms": job.submitted_at_ms,
        "finished_at_ms": job.finished_at_ms,
        "settings": settings_json(job.settings.as_ref()),
        "waiting_for": job.waiting_for,
        "attempts": job.attempts,
        "retries": job.retries,
        "paused": job.paused,
        "webhook": job.webhook.as_ref().map(|w| json!({
            "url": w.url,
            "delivered": w.delivered,
            "failures": w.failures,
            "dropped": w.dropped,
            "last_error": w.last_error,
            "pending": w.pending,
            "next_attempt_ms": w.next_attempt_ms,
        })),
    })
}

/// A worker as JSON.
pub fn worker_json(worker: &v1::WorkerInfo) -> Value {
    let caps = worker.capabilities.clone().unwrap_or_default();
    let kinds: Vec<&str> = caps.kinds().map(task_kind).collect();
    json!({
        "worker_id": worker.worker_id,
        "name": worker.name,
        "version": worker.version,
        "kinds": kinds,
        "models": caps.models,
        "device": caps.device,
        "max_pixels": caps.max_pixels,
        "max_side": caps.max_side,
        "max_iterations": caps.max_iterations,
        "registered_at_ms": worker.registered_at_ms,
        "last_seen_ms": worker.last_seen_ms,
        "alive": worker.alive,
        "current_task": worker.current_task,
        "leased_ahead": worker.leased_ahead,
        "tasks_done": worker.tasks_done,
    })
}

/// A job event as JSON: the envelope's fields and `type` with the event's own fields.
pub fn event_json(event: &v1::JobEvent) -> Value {
    let (kind, body) = match &event.event {
        Some(Event::TaskStarted(e)) => (
            "task_started",
            json!({"task_id": e.task_id, "kind": task_kind(e.kind()), "attempt": e.attempt,
                   "worker_id": e.worker_id, "result_index": e.result_index}),
        ),
        Some(Event::Progress(e)) => (
            "progress",
            json!({"task_id": e.task_id, "attempt": e.attempt, "iteration": e.iteration,
                   "iterations": e.iterations, "loss": e.loss,
                   "checkpoint_iteration": e.checkpoint_iteration}),
        ),
        Some(Event::Preview(e)) => (
            "preview",
            json!({"task_id": e.task_id, "attempt": e.attempt, "iteration": e.iteration}),
        ),
        Some(Event::TaskDone(e)) => (
            "task_done",
            json!({"task_id": e.task_id, "kind": task_kind(e.kind()), "attempt": e.attempt,
                   "worker_id": e.worker_id, "result_index": e.result_index,
                   "is_result": e.is_result, "output": artifact_json(e.output.as_ref())}),
        ),
        Some(Event::TaskFailed(e)) => (
            "task_failed",
            json!({"task_id": e.task_id, "attempt": e.attempt, "worker_id": e.worker_id,
                   "error": e.error, "will_retry": e.will_retry}),
        ),
        Some(Event::TaskRequeued(e)) => (
            "task_requeued",
            json!({"task_id": e.task_id, "attempt": e.attempt, "worker_id": e.worker_id,
                   "reason": e.reason}),
        ),
        Some(Event::JobDone(e)) => (
            "job_done",
            json!({"state": job_state(e.state()), "tasks": counts_json(e.tasks.as_ref()),
                   "results_done": e.results_done, "results_failed": e.results_failed}),
        ),
        None => ("unknown", json!({})),
    };
    let mut object = json!({"cursor": event.cursor, "time_ms": event.time_ms,
                            "job_id": event.job_id, "type": kind});
    if let (Value::Object(out), Value::Object(fields)) = (&mut object, body) {
        out.extend(fields);
    }
    object
}

/// Prints one JSON value on its own line.
pub fn print_json(value: &Value) {
    println!("{value}");
}

/// Characters a table cell shows at most; longer ones end in `…` (`status` shows them whole).
const MAX_CELL_CHARS: usize = 48;

/// `text` safe to print to a terminal: control characters other than line breaks and tabs
/// (escape sequences, carriage returns, NULs) written as `\u{1b}` and the like. Names,
/// prompts and errors come from other users and workers, and printed raw an escape sequence
/// would take over the reader's terminal.
pub fn shown(text: &str) -> String {
    escaped(text, &['\n', '\t'])
}

/// `text` with every control character but those in `keep` escaped.
fn escaped(text: &str, keep: &[char]) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_control() && !keep.contains(&c) => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A table cell: on one line, every control character escaped, and cut to
/// [`MAX_CELL_CHARS`].
fn cell(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = escaped(text, &[]).chars().collect();
    if chars.len() > MAX_CELL_CHARS {
        chars.truncate(MAX_CELL_CHARS - 1);
        chars.push('…');
    }
    chars
}

/// Columns padded to their widest cell, the way `ps` and `kubectl get` print; cells are made
/// safe and short with [`cell`], so stored data of any length or content prints.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers: Vec<Vec<char>> = headers.iter().map(|h| cell(h)).collect();
    let rows: Vec<Vec<Vec<char>>> = rows
        .iter()
        .map(|row| row.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(Vec::len).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[Vec<char>]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            text.extend(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.len() + 2));
        }
        text.trim_end().to_string()
    };
    let mut out = line(&headers);
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

/// How long ago a coordinator timestamp was, e.g. "42s ago"; "-" for none.
pub fn ago(time_ms: u64) -> String {
    if time_ms == 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{} ago", duration(now.saturating_sub(time_ms)))
}

/// A duration in milliseconds as people read it: "850ms", "42s", "3m05s", "2h10m".
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_of_any_length_or_content_prints_as_a_bounded_safe_table() {
        let hostile = format!("\u{1b}[2J\u{1b}[31m{}\r\n", "n".repeat(65_536));
        let rows = vec![vec!["job1".to_string(), hostile, "running".into()]];
        let printed = table(&["JOB", "NAME", "STATE"], &rows);
        assert!(
            !printed.contains('\u{1b}') && !printed.contains('\r'),
            "{printed}"
        );
        let line = printed.lines().nth(1).unwrap();
        assert!(line.starts_with("job1  \\u{1b}[2J\\u{1b}[31mnnn"), "{line}");
        assert!(line.contains("…  running"), "{line}");
        assert!(line.chars().count() < 80, "{line}");
        assert_eq!(printed.lines().count(), 2);
    }

    #[test]
    fn shown_text_keeps_its_lines_and_escapes_the_rest() {
        assert_eq!(
            shown("line one\n\tline two\u{1b}]0;owned\u{7}\0"),
            "line one\n\tline two\\u{1b}]0;owned\\u{7}\\u{0}"
        );
    }
}
