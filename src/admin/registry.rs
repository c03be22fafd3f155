//! The servers, connections and channels of the process, as channelz and the admin service
//! list them. Each is registered when it is made, with an id unique in the process (channelz
//! ids: positive, shared by every kind), and leaves the registry when it is dropped: servers
//! and channels are held weakly, connections by a guard.
//!
//! Everything is registered whether or not a server serves channelz or the admin service:
//! one server of the process may serve them for all, and the bookkeeping per call is a few
//! relaxed atomic additions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::balance::InstanceSet;

/// A new id, unique in the process.
pub(crate) fn next_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Calls (or streams) started and ended, with or without an OK status, and when the last
/// started.
#[derive(Debug, Default)]
pub(crate) struct CallCounts {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Nanoseconds since the Unix epoch; 0: none yet.
    last_started: AtomicU64,
}

/// A reading of [`CallCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Calls {
    pub(crate) started: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    /// When the last call started, if one did.
    pub(crate) last_started: Option<SystemTime>,
}

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

impl CallCounts {
    /// A call started now.
    pub(crate) fn started(&self) {
        self.started_at(wall_nanos());
    }

    /// A call started at `wall` ([`wall_nanos`]).
    pub(crate) fn started_at(&self, wall: u64) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.last_started.store(wall, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, ok: bool) {
        let count = if ok { &self.succeeded } else { &self.failed };
        count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Calls {
        let last = self.last_started.load(Ordering::Relaxed);
        Calls {
            started: self.started.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_started: (last != 0).then(|| UNIX_EPOCH + std::time::Duration::from_nanos(last)),
        }
    }
}

/// A server of the process, while it serves.
#[derive(Debug)]
pub(crate) struct ServerEntry {
    pub(crate) id: i64,
    /// The id of its listening socket.
    pub(crate) listen_socket_id: i64,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) started: Instant,
    /// The calls it served: counted where its call metrics are.
    pub(crate) calls: Arc<CallCounts>,
    /// Its open connections, by the client's address, in shards by port: every call looks
    /// its connection up, and calls on different connections rarely meet on one lock.
    sockets: [Mutex<HashMap<SocketAddr, Arc<SocketEntry>>>; SHARDS],
}

/// How many shards a server's connections are kept in.
const SHARDS: usize = 16;

fn shard(remote: &SocketAddr) -> usize {
    usize::from(remote.port()) % SHARDS
}

/// A connection a server accepted.
#[derive(Debug)]
pub(crate) struct SocketEntry {
    pub(crate) id: i64,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) remote: SocketAddr,
    /// The calls (HTTP/2 streams) made on it.
    pub(crate) streams: CallCounts,
}

/// Keeps a connection in its server's list until dropped.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    server: Weak<ServerEntry>,
    remote: SocketAddr,
    id: i64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            let mut sockets = lock(&server.sockets[shard(&self.remote)]);
            // A new connection from the same address may have taken the place already.
            if sockets
                .get(&self.remote)
                .is_some_and(|socket| socket.id == self.id)
            {
                sockets.remove(&self.remote);
            }
        }
    }
}

impl ServerEntry {
    /// A server listening on `listen`, registered until dropped.
    pub(crate) fn register(listen: Option<SocketAddr>, calls: Arc<CallCounts>) -> Arc<Self> {
        let server = Arc::new(Self {
            id: next_id(),
            listen_socket_id: next_id(),
            listen,
            started: Instant::now(),
            calls,
            sockets: Default::default(),
        });
        let mut servers = lock(&registry().servers);
        servers.retain(|_, server| server.strong_count() > 0);
        servers.insert(server.id, Arc::downgrade(&server));
        server
    }

    /// A connection accepted from `remote`, listed until the guard is dropped.
    pub(crate) fn add_socket(
        self: &Arc<Self>,
        local: Option<SocketAddr>,
        remote: SocketAddr,
    ) -> SocketGuard {
        let id = next_id();
        let socket = Arc::new(SocketEntry {
            id,
            local,
            remote,
            streams: CallCounts::default(),
        });
        lock(&self.sockets[shard(&remote)]).insert(remote, socket);
        SocketGuard {
            server: Arc::downgrade(self),
            remote,
            id,
        }
    }

    /// The open connection from `remote`.
    pub(crate) fn socket(&self, remote: &SocketAddr) -> Option<Arc<SocketEntry>> {
        lock(&self.sockets[shard(remote)]).get(remote).cloned()
    }

    /// Its open connections, by id.
    pub(crate) fn sockets(&self) -> Vec<Arc<SocketEntry>> {
        let mut sockets: Vec<_> = (self.sockets.iter())
            .flat_map(|shard| lock(shard).values().cloned().collect::<Vec<_>>())
            .collect();
        sockets.sort_by_key(|socket| socket.id);
        sockets
    }
}

/// An id of this process drawn at random once, so that servers of one process can be told
/// from those of another with the same host name and PID (containers).
pub(crate) fn process_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| format!("{:016x}", fastrand::u64(..)))
}

/// A channel of the process.
#[derive(Debug)]
pub(crate) struct ChannelEntry {
    pub(crate) id: i64,
    pub(crate) instances: Weak<InstanceSet>,
    /// The calls made through it: counted where its call metrics are.
    pub(crate) calls: Arc<CallCounts>,
}

/// Lists `instances` (a channel's) as a channel of the process while it lives.
pub(crate) fn register_channel(instances: &Arc<InstanceSet>, calls: Arc<CallCounts>) {
    let mut channels = lock(&registry().channels);
    channels.retain(|_, channel| channel.instances.strong_count() > 0);
    let id = next_id();
    channels.insert(
        id,
        ChannelEntry {
            id,
            instances: Arc::downgrade(instances),
            calls,
        },
    );
}

#[derive(Debug, Default)]
struct Registry {
    servers: Mutex<BTreeMap<i64, Weak<ServerEntry>>>,
    channels: Mutex<BTreeMap<i64, ChannelEntry>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The servers serving now, by id.
pub(crate) fn servers() -> Vec<Arc<ServerEntry>> {
    lock(&registry().servers)
        .values()
        .filter_map(Weak::upgrade)
        .collect()
}

/// The channels open now, by id, with their instances.
pub(crate) fn channels() -> Vec<(i64, Arc<InstanceSet>, Arc<CallCounts>)> {
    lock(&registry().channels)
        .values()
        .filter_map(|channel| {
            let instances = channel.instances.upgrade()?;
            Some((channel.id, instances, channel.calls.clone()))
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_connection_closing_after_another_took_its_address_leaves_the_new_one_listed() {
        let server = ServerEntry::register(None, Arc::default());
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let old = server.add_socket(None, remote);
        let new = server.add_socket(None, remote);
        let new_id = server.socket(&remote).expect("listed").id;
        drop(old);
        assert_eq!(server.socket(&remote).map(|socket| socket.id), Some(new_id));
        drop(new);
        assert!(server.socket(&remote).is_none());
        assert!(server.sockets().is_empty());
    }

    #[test]
    fn servers_leave_the_registry_when_dropped_and_ids_are_never_reused() {
        let first = ServerEntry::register(None, Arc::default());
        let second = ServerEntry::register(None, Arc::default());
        let ids = [
            first.id,
            first.listen_socket_id,
            second.id,
            second.listen_socket_id,
        ];
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert!(servers().iter().any(|server| server.id == first.id));
        drop(first);
        assert!(servers().iter().all(|server| server.id != ids[0]));
        assert!(servers().iter().any(|server| server.id == second.id));
    }
}
