//! The exclusive claim of one coordinator on a state directory.
//!
//! Two coordinators journaling into one directory corrupt it: each truncates the journal when it
//! snapshots while the other goes on writing at its own offset, which leaves runs of NUL bytes
//! and loses operations already answered. So the embedded store takes an advisory `flock` on
//! `DIR/lock` for as long as it is open, and writes who holds it into the file, for the
//! message a second start gets. The kernel releases the lock when the holder exits, however it
//! exits, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::StateError;

/// Held for the life of the store that owns the directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Claims `dir`, describing this process as `owner` (what it serves, for the message another
    /// start gets), or says who holds it already.
    pub fn acquire(dir: &Path, owner: &str) -> Result<DirLock, StateError> {
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| unavailable(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; it has no memory effects.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(unavailable(&path, error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(StateError::InUse {
                dir: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = format!(
            "{owner}, pid {} on host {}, since unix time {started}\n",
            std::process::id(),
            host_name()
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .map_err(|e| unavailable(&path, e))?;
        Ok(DirLock { _file: file })
    }
}

/// This machine's name, for telling the holder's host apart from ours.
fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match status {
        0 => String::from_utf8_lossy(&buffer[..end]).into_owned(),
        _ => "an unknown host".to_string(),
    }
}

fn unavailable(path: &Path, e: std::io::Error) -> StateError {
    StateError::Unavailable(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = DirLock::acquire(dir.path(), "coordinator on 127.0.0.1:7").unwrap();
        let refused = DirLock::acquire(dir.path(), "another").unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("coordinator on 127.0.0.1:7"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        DirLock::acquire(dir.path(), "another").unwrap();
    }
}
