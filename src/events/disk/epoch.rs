//! The epoch file of a publisher's directory: the epoch, and the epochs it continues.
//!
//! `[epoch: u64][ancestors: u8][ancestor]*[CRC-32C of all before: u32]`, little-endian, where
//! an ancestor is `[epoch: u64][event RPCs: u32]` then per event RPC `[name length: u16][name]
//! [through: u64]`. A publisher that reopens its directory keeps its epoch, so observers'
//! cursors stay valid. When a recovery starts a new epoch because events observers may have
//! seen are gone, the new epoch continues the old one: its events up to `through` (per event
//! RPC) are the old epoch's, under the same sequences, so a cursor of the old epoch up to there
//! names the same event in the new one. A file of the earlier format (the epoch and its CRC)
//! reads as an epoch without ancestors.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::crc;

const FILE: &str = "epoch";

/// How many epochs back a cursor is still recognised.
const MAX_ANCESTORS: usize = 8;

/// The epoch kept in a directory and the epochs it continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) epoch: u64,
    /// The nearest first.
    pub(crate) ancestors: Vec<Ancestor>,
}

/// An epoch that a later one continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ancestor {
    pub(crate) epoch: u64,
    /// Per event RPC (its folder's name): its events up to this sequence are the later
    /// epoch's events under the same sequences.
    pub(crate) through: BTreeMap<String, u64>,
}

impl Kept {
    /// An epoch of its own, continuing nothing.
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch,
            ancestors: Vec::new(),
        }
    }

    /// The epoch `epoch` that continues this one, whose event RPCs kept their events up to
    /// `through`.
    pub(crate) fn continued_by(self, epoch: u64, through: &BTreeMap<String, u64>) -> Self {
        let mut ancestors = vec![Ancestor {
            epoch: self.epoch,
            through: through.clone(),
        }];
        for mut ancestor in self.ancestors {
            for (rpc, kept) in &mut ancestor.through {
                if let Some(now) = through.get(rpc) {
                    *kept = (*kept).min(*now);
                }
            }
            ancestors.push(ancestor);
        }
        ancestors.truncate(MAX_ANCESTORS);
        Self { epoch, ancestors }
    }

    /// The epochs the event RPC in folder `rpc` continues, each with how far.
    pub(crate) fn lineage_of(&self, rpc: &str) -> Vec<(u64, u64)> {
        self.ancestors
            .iter()
            .filter_map(|a| Some((a.epoch, *a.through.get(rpc)?)))
            .collect()
    }
}

/// The epoch kept in `dir`; `None` when there is none (or it is unreadable: a new epoch is
/// then drawn, and reported to observers as one).
pub(crate) fn load(dir: &Path) -> std::io::Result<Option<Kept>> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(data) => data,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(body_length) = data.len().checked_sub(4).filter(|n| *n >= 8) else {
        tracing::warn!(dir = %dir.display(), "the epoch file is cut short; a new epoch starts");
        return Ok(None);
    };
    let (body, checksum) = data.split_at(body_length);
    if crc::update(0, body).to_le_bytes() != checksum {
        tracing::warn!(dir = %dir.display(), "the epoch file is corrupt; a new epoch starts");
        return Ok(None);
    }
    let kept = decode(body);
    if kept.is_none() {
        tracing::warn!(dir = %dir.display(), "the epoch file is unreadable; a new epoch starts");
    }
    Ok(kept.filter(|kept| kept.epoch != 0))
}

/// Keeps `kept` in `dir`, replacing the file whole (written aside, synced, renamed).
pub(crate) fn store(dir: &Path, kept: &Kept) -> std::io::Result<()> {
    let mut data = encode(kept);
    let checksum = crc::update(0, &data);
    data.extend_from_slice(&checksum.to_le_bytes());
    replace(dir, FILE, &data)
}

/// Replaces file `name` of `dir` whole with `data`: written aside, synced, renamed, and the
/// directory synced.
pub(crate) fn replace(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let aside = dir.join(format!("{name}.new"));
    let mut file = std::fs::File::create(&aside)?;
    file.write_all(data)?;
    super::sync::counted();
    file.sync_all()?;
    std::fs::rename(&aside, dir.join(name))?;
    sync_dir(dir)
}

/// Makes a directory's entries (files created, renamed, removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    super::sync::counted();
    std::fs::File::open(dir)?.sync_all()
}

fn encode(kept: &Kept) -> Vec<u8> {
    let mut out = kept.epoch.to_le_bytes().to_vec();
    if kept.ancestors.is_empty() {
        return out;
    }
    out.push(kept.ancestors.len().min(MAX_ANCESTORS) as u8);
    for ancestor in kept.ancestors.iter().take(MAX_ANCESTORS) {
        out.extend_from_slice(&ancestor.epoch.to_le_bytes());
        out.extend_from_slice(&(ancestor.through.len() as u32).to_le_bytes());
        for (rpc, through) in &ancestor.through {
            let name = &rpc.as_bytes()[..rpc.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&through.to_le_bytes());
        }
    }
    out
}

fn decode(body: &[u8]) -> Option<Kept> {
    let mut reader = Reader(body);
    let epoch = reader.u64()?;
    let mut kept = Kept::new(epoch);
    if reader.0.is_empty() {
        return Some(kept);
    }
    let count = reader.take(1)?[0];
    for _ in 0..count {
        let epoch = reader.u64()?;
        let rpcs = u32::from_le_bytes(reader.take(4)?.try_into().ok()?);
        let mut through = BTreeMap::new();
        for _ in 0..rpcs {
            let length = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
            let name = String::from_utf8(reader.take(length.into())?.to_vec()).ok()?;
            through.insert(name, reader.u64()?);
        }
        kept.ancestors.push(Ancestor { epoch, through });
    }
    reader.0.is_empty().then_some(kept)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn an_epoch_and_its_ancestors_read_back() {
        let dir = std::env::temp_dir().join(format!("meshless-epoch-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        store(&dir, &Kept::new(7)).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(Kept::new(7)));
        assert_eq!(
            std::fs::read(dir.join(FILE)).unwrap().len(),
            12,
            "an epoch without ancestors keeps the earlier format"
        );

        let first: BTreeMap<String, u64> = [("A".to_owned(), 10), ("B".to_owned(), 4)].into();
        let second: BTreeMap<String, u64> = [("A".to_owned(), 6), ("B".to_owned(), 9)].into();
        let kept = Kept::new(7)
            .continued_by(8, &first)
            .continued_by(9, &second);
        store(&dir, &kept).unwrap();
        let read = load(&dir).unwrap().unwrap();
        assert_eq!(read, kept);
        assert_eq!(read.lineage_of("A"), [(8, 6), (7, 6)]);
        assert_eq!(read.lineage_of("B"), [(8, 9), (7, 4)]);
        assert!(read.lineage_of("C").is_empty());

        let mut data = std::fs::read(dir.join(FILE)).unwrap();
        data[9] ^= 1;
        std::fs::write(dir.join(FILE), data).unwrap();
        assert_eq!(load(&dir).unwrap(), None, "a corrupt file is no epoch");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
