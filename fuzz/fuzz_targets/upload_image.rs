//! How the coordinator examines an uploaded picture (`store::check_upload`) on arbitrary bytes,
//! with the default pixel limit. A picture it accepts must be one that `describe` (what the
//! job's plan reads) sees with the same, non-zero size within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_coordinator::store::{check_upload, describe};
use tessera_core::job::Limits;

fuzz_target!(|data: &[u8]| {
    let max = Limits::default().max_input_pixels;
    match check_upload("fuzz.png", data, max) {
        Ok(()) => {
            let a = describe("uploads/fuzz/fuzz.png", data);
            let pixels = u64::from(a.width) * u64::from(a.height);
            assert!(
                (1..=max).contains(&pixels),
                "accepted a {}x{} picture",
                a.width,
                a.height
            );
        }
        Err(e) => drop(e.to_string()),
    }
});
