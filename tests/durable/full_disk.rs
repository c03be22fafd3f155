//! A real full disk: a small tmpfs (mounted where the test may mount; skipped elsewhere).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use meshless::events::PublishError;

use crate::{echoed, support};

/// A tmpfs of `size` mounted on a directory of its own, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where mounting is not permitted (not root, or no such capability).
    fn mount(size: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("meshless-tmpfs-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .is_ok_and(|output| output.status.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `path` up, but for about `room` bytes.
fn fill(path: &std::path::Path, room: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 << 10];
    while file.write_all(&chunk).is_ok() {}
    let written = file.metadata().unwrap().len();
    file.set_len(written.saturating_sub(room)).unwrap();
}

#[tokio::test]
async fn a_full_disk_fails_a_publish_and_publishing_works_again_once_there_is_room() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("skipped: mounting a tmpfs is not permitted here");
        return;
    };
    let dir = fs.0.join("events");
    let publisher = support::EchoPublisher::open(&dir).unwrap();
    for n in 1..=5 {
        publisher
            .publish_echoed(echoed(&format!("before {n}")))
            .unwrap();
    }
    let filler = fs.0.join("filler");
    fill(&filler, 64 << 10);

    // Written part way, then refused: the partial record is cut off.
    let large = echoed(&"x".repeat(200 << 10));
    let error = publisher.publish_echoed(large.clone()).unwrap_err();
    assert!(matches!(error, PublishError::Io { .. }), "{error}");

    std::fs::remove_file(&filler).unwrap();
    let after = publisher.publish_echoed(large).unwrap();
    assert_eq!(
        after.sequence, 6,
        "publishing works again, without a restart"
    );
    drop(publisher);

    let reopened = support::EchoPublisher::open(&dir).unwrap();
    assert_eq!(reopened.as_publisher().epoch(), after.epoch, "nothing torn");
    let next = reopened.publish_echoed(echoed("next")).unwrap();
    assert_eq!(next.sequence, 7, "all six events kept");
}
