//! What the CLI tests share: a real coordinator process, the real `tessera` binary run as a
//! user runs it, and protocol-only workers playing the farm.
//!
//! The coordinator binary must already be built: `cargo test --workspace` builds every binary;
//! to run these tests alone, `cargo build -p tessera-coordinator` first.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_proto::access::Access;
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::Service;
use tokio::task::JoinHandle;

/// Longest a CLI command may run before the test calls it hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a coordinator listening on `listen` (e.g. "127.0.0.1:0") with artifacts in `store`
/// and state flags `state` (`--embedded`, or `--redis URL`).
pub fn coordinator(store: &Path, state: &[&str], listen: &str) -> Service {
    let binary = tessera_tests::binary("tessera-coordinator").unwrap();
    let mut command = Command::new(binary);
    command
        .args(["--listen", listen, "--store"])
        .arg(store)
        .args(state)
        .env("RUST_LOG", "warn");
    Service::start(command).expect("the coordinator starts")
}

/// How a `tessera` command ended.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything it printed on standard output.
    pub stdout: String,
    /// Everything it printed on standard error.
    pub stderr: String,
}

impl Run {
    /// Its standard output's lines parsed as JSON values, one per line.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Its standard output as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }

    /// Asserts it succeeded and returns it.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "the command failed: {self:#?}");
        self
    }
}

/// The `tessera` binary talking to `url`, with `args`, output captured.
pub fn command(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .env_remove("TESSERA_COORDINATOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for a started `tessera` command to end.
pub async fn finish(child: tokio::process::Child) -> Run {
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the command ends in time")
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `tessera ARGS` against `url` to its end.
pub async fn tessera(url: &str, args: &[&str]) -> Run {
    finish(command(url, args).spawn().unwrap()).await
}

/// A worker that finishes every task it is offered until dropped.
pub struct Workers(JoinHandle<()>);

impl Workers {
    /// Starts one protocol-only worker on `service`.
    pub async fn start(service: &Service) -> Workers {
        Self::start_at(&service.url(), &Access::default()).await
    }

    /// Starts one protocol-only worker on the coordinator at `url`, reached through `access`.
    pub async fn start_at(url: &str, access: &Access) -> Workers {
        let mut worker = ProtocolWorker::register_at(url, access, "cli-test").await;
        Workers(tokio::spawn(async move {
            loop {
                if let Some(task) = worker.lease(200).await {
                    worker.finish(&task).await;
                }
            }
        }))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Submit flags of a small, fast job: 64x64 pictures, 20 iterations, no upscale.
pub const SMALL: [&str; 6] = ["--size", "64x64", "--iterations", "20", "--upscale", "none"];
