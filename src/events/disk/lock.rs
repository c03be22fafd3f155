//! [`DirectoryLock`]: one publisher at a time on an event directory. Two publishers appending
//! to the same segments would interleave their records and reuse each other's sequences; the
//! second is refused instead, by an advisory lock on a file in the directory, held as long as
//! the first publisher (and whatever serves its events) lives, and released by the system if
//! its process dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

const LOCK_FILE: &str = "publisher.lock";

/// Held while a publisher has the directory open.
#[derive(Debug)]
pub(crate) struct DirectoryLock {
    _file: File,
}

impl DirectoryLock {
    /// Takes the lock of `dir`, or says who holds it.
    pub(crate) fn take(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another publisher has it open, in this process or another; one publisher at a \
                 time may open an event directory",
            )),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("meshless-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DirectoryLock::take(&dir).unwrap();
        let refused = DirectoryLock::take(&dir).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(
            refused.to_string().contains("another publisher"),
            "{refused}"
        );
        drop(first);
        DirectoryLock::take(&dir).expect("free again once the holder is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
