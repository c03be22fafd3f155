//! The epoch file of a publisher's directory: `[epoch: u64][CRC-32C: u32]`, little-endian. A
//! publisher that reopens its directory keeps its epoch, so observers' cursors stay valid.

use std::io::Write;
use std::path::Path;

use super::crc;

const FILE: &str = "epoch";

/// The epoch kept in `dir`; `None` when there is none (or it is unreadable: a new epoch is
/// then drawn, and reported to observers as one).
pub(crate) fn load(dir: &Path) -> std::io::Result<Option<u64>> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(data) => data,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let (Some(epoch), Some(checksum)) = (data.get(..8), data.get(8..12)) else {
        tracing::warn!(dir = %dir.display(), "the epoch file is cut short; a new epoch starts");
        return Ok(None);
    };
    if crc::update(0, epoch).to_le_bytes() != checksum {
        tracing::warn!(dir = %dir.display(), "the epoch file is corrupt; a new epoch starts");
        return Ok(None);
    }
    let epoch = u64::from_le_bytes(epoch.try_into().unwrap_or_default());
    Ok((epoch != 0).then_some(epoch))
}

/// Keeps `epoch` in `dir`, replacing the file whole (written aside, synced, renamed).
pub(crate) fn store(dir: &Path, epoch: u64) -> std::io::Result<()> {
    let bytes = epoch.to_le_bytes();
    let mut data = bytes.to_vec();
    data.extend_from_slice(&crc::update(0, &bytes).to_le_bytes());
    let aside = dir.join(format!("{FILE}.new"));
    let mut file = std::fs::File::create(&aside)?;
    file.write_all(&data)?;
    file.sync_all()?;
    std::fs::rename(&aside, dir.join(FILE))?;
    sync_dir(dir)
}

/// Makes a directory's entries (files created, renamed, removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
