//! Decoding of state read back from Redis (`state::redis::decode_record`) on arbitrary text:
//! the first line names the record (`job`, `task`, `worker`, `event` or `stats`), the second is
//! its id (or an event's cursor), then one string per line in up to three lists separated by
//! `--` lines: the hash's fields and values, then the task's errors or the stats' queue
//! entries, then the task's inputs. Corrupt state must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_coordinator::state::redis::decode_fuzz_input;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = std::str::from_utf8(data) {
        if let Err(e) = decode_fuzz_input(input) {
            drop(e.to_string());
        }
    }
});
