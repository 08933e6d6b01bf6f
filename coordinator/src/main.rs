//! `tessera-coordinator`: serves the `tessera.v1` API (see `tessera-coordinator --help`).

use std::process::ExitCode;

use clap::Parser;
use tessera_coordinator::config::Config;
use tessera_coordinator::server::serve;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let result = match tessera_telemetry::init("tessera-coordinator", config.log_format) {
        Ok(_telemetry) => {
            serve(
                config,
                tessera_telemetry::shutdown::on_signals("shutting down"),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes on one line, the last thing in the log: what a
            // wrapper such as `tessera up` shows. (Returning the error from `main` would print
            // a backtrace after it whenever RUST_BACKTRACE is set.)
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
