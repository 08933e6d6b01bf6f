//! What a delivery says: one JSON object per webhook event, made from the job's stored event
//! (and, for a result, the result's record), so every attempt at one event sends the same body.

use crate::state::{Event, EventKind, JobRecord, ResultRecord};
use serde_json::{json, Value};

/// The delivery id of `event` of `job`: the same on every attempt and after any restart,
/// since the event's cursor is stored with it.
pub fn delivery_id(job: &str, event: &Event) -> String {
    format!("{job}:{}", event.cursor)
}

/// The event's type as sent (`X-Tessera-Event` and `type`), for webhook events.
pub fn event_type(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::JobDone { .. } => "job_done",
        _ => "result",
    }
}

/// The body of the delivery of `event`, a webhook event of `job`; `result` is the record of
/// the result a `TaskDone` finished.
pub fn body(job: &JobRecord, event: &Event, result: Option<&ResultRecord>) -> Value {
    let mut body = json!({
        "id": delivery_id(&job.id, event),
        "type": event_type(&event.kind),
        "job": job.id,
        "name": job.name,
        "time_ms": event.time_ms,
    });
    let detail = match &event.kind {
        EventKind::TaskDone { unit, output, .. } => json!({
            "result": {
                "index": unit,
                "prompt": result.and_then(|r| r.unit.prompt.clone()),
                "seed": result.and_then(|r| r.unit.seed),
                "input_name": result.and_then(|r| r.unit.input_name.clone()),
                "sha256": output.sha256,
                "size": output.size,
                "width": output.width,
                "height": output.height,
            },
            "state": "done",
            "fetch": fetch(&job.id, Some(*unit)),
        }),
        EventKind::JobDone {
            state,
            counts,
            units_done,
            units_failed,
        } => json!({
            "state": state.as_str(),
            "results": {
                "total": job.units_total,
                "done": units_done,
                "failed": units_failed,
            },
            "tasks": counts,
            "fetch": fetch(&job.id, None),
        }),
        _ => Value::Null,
    };
    if let (Value::Object(body), Value::Object(detail)) = (&mut body, detail) {
        body.extend(detail);
    }
    body
}

/// How to fetch what the event announces: the `tessera` command, and the RPC with its
/// arguments (the checksum in the body checks what arrives).
fn fetch(job: &str, index: Option<u32>) -> Value {
    json!({
        "command": format!("tessera fetch {job} -o DIR"),
        "rpc": "tessera.v1.Jobs/FetchResult",
        "job_id": job,
        "index": index,
    })
}
