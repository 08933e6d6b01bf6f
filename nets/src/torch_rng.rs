//! torch's global random generator, which the whole process shares.
//!
//! A render reseeds that generator for each of its large draws (`generate::rng`), so that its
//! picture depends only on its seed and settings. Any other code that draws from the generator
//! (random initialisation while a network is built, random inputs in benchmarks and tests) could
//! land between a render's reseed and its draw, on another thread, and silently change the
//! render. Every draw therefore goes through [`exclusive`].

use std::sync::Mutex;

static GENERATOR: Mutex<()> = Mutex::new(());

/// Runs `draw` while no other code in the process draws from torch's global generator.
///
/// Not reentrant: `draw` must not call `exclusive` itself.
pub fn exclusive<T>(draw: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    draw()
}
