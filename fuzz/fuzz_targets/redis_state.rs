//! Decoding of state read back from Redis (`state::redis::decode_record`) on arbitrary text:
//! the first line names the record (`job`, `task`, `worker`, `event` or `stats`), the second is
//! its id (or an event's cursor), then one string per line in up to three lists separated by
//! `--` lines: the hash's fields and values, then the task's errors or the stats' queue
//! entries, then the task's inputs. Corrupt state must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_coordinator::state::redis::{decode_record, RecordKind};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = input.split('\n');
    let Some(kind) = lines.next().and_then(RecordKind::parse) else {
        return;
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
    if let Err(e) = decode_record(kind, id, fields, extra, inputs) {
        drop(e.to_string());
    }
});
