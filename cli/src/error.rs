//! Failures that end the program with their own exit code, so scripts can tell "the farm is
//! down" and "the job failed" from a mistake on the command line (exit code 1).

use std::error::Error;
use std::fmt;

use tessera_proto::v1;

/// Exit code when the coordinator cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 2;
/// Exit code when a watched job ended with failed results.
pub const EXIT_JOB_FAILED: u8 = 3;
/// Exit code when a watched job was cancelled.
pub const EXIT_JOB_CANCELLED: u8 = 4;

/// The coordinator did not answer: nothing listens there, or it went away.
#[derive(Debug)]
pub struct Unreachable {
    /// The address tried.
    pub url: String,
    /// What the transport said, with its causes.
    pub detail: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach the coordinator at {}: {} (is it running? start one with `tessera up`, \
             or point --coordinator / TESSERA_COORDINATOR at it)",
            self.url, self.detail
        )
    }
}

impl Error for Unreachable {}

/// The coordinator answers, but its state store (Redis) does not: the farm is down as much as
/// when the coordinator is, so it exits the same way, but the message points at the store, not
/// at a coordinator that is running.
#[derive(Debug)]
pub struct StoreDown {
    /// The coordinator's address.
    pub url: String,
    /// What the coordinator said of its store.
    pub detail: String,
}

impl fmt::Display for StoreDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the coordinator at {} answers, but its state store does not ({}); the farm's jobs \
             wait there until it is back",
            self.url, self.detail
        )
    }
}

impl Error for StoreDown {}

/// Something answers at the address, but not as a coordinator (a metrics port, a web server):
/// as much a wrong address as nothing listening, so it exits like [`Unreachable`].
#[derive(Debug)]
pub struct NotACoordinator {
    /// The address tried.
    pub url: String,
    /// What came back.
    pub detail: String,
}

impl fmt::Display for NotACoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a Tessera coordinator: it did not answer in gRPC ({}); is this its \
             metrics or another port? The coordinator prints the address it serves gRPC on",
            self.url, self.detail
        )
    }
}

impl Error for NotACoordinator {}

/// A watched job ended without every result done.
#[derive(Debug)]
pub struct JobEnded {
    /// The job's id.
    pub job: String,
    /// Failed or cancelled.
    pub state: v1::JobState,
    /// Results that failed.
    pub failed: u64,
}

impl fmt::Display for JobEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            v1::JobState::Cancelled => write!(f, "job {} was cancelled", self.job),
            _ => write!(
                f,
                "job {} failed: {} result(s) failed (see `tessera status {}`; finished ones can \
                 still be fetched)",
                self.job, self.failed, self.job
            ),
        }
    }
}

impl Error for JobEnded {}

/// The exit code an error ends the program with.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Unreachable>().is_some()
        || error.downcast_ref::<StoreDown>().is_some()
        || error.downcast_ref::<NotACoordinator>().is_some()
    {
        EXIT_UNREACHABLE
    } else if let Some(ended) = error.downcast_ref::<JobEnded>() {
        match ended.state {
            v1::JobState::Cancelled => EXIT_JOB_CANCELLED,
            _ => EXIT_JOB_FAILED,
        }
    } else {
        1
    }
}

/// An error and its causes on one line, e.g. "transport error: tcp connect error: Connection
/// refused"; transport errors say little at the top level.
pub fn with_causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
