//! A real PostgreSQL server for one test: a cluster made with `initdb` in a directory of its
//! own, started with `pg_ctl` on a free port of 127.0.0.1 (and restarted there when a test
//! asks), and stopped by its PID when the test ends, passed or panicked.
//!
//! The binaries are taken from the directory `MESHLESS_POSTGRES_BIN` when it is set, else from
//! `/usr/lib/postgresql/<version>/bin` (Debian's packages; the newest version), else from
//! `PATH`. Postgres refuses to run as root: as root, every command
//! runs as the user `nobody` (with `runuser`). Without the binaries a test says it is skipped,
//! unless `MESHLESS_REQUIRE_POSTGRES=1`, when it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshless::events::postgres::sqlx::postgres::{PgPool, PgPoolOptions};

/// How long starting or stopping the server may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running server, stopped when dropped.
pub(crate) struct Cluster {
    pub(crate) port: u16,
    pid: u32,
    scratch: PathBuf,
    bin: PathBuf,
    /// The server's options, to start it again with.
    options: String,
}

impl Cluster {
    /// Starts a server for `test`; `None` (after saying so) when the binaries are missing and
    /// the environment does not require them.
    pub(crate) fn start(test: &str) -> Option<Self> {
        let Some(bin) = binaries() else {
            assert!(
                std::env::var("MESHLESS_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "MESHLESS_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, pg_ctl) were found"
            );
            // Straight to the process's stderr: the test harness does not capture it, so the
            // skip shows in the output of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "skipping {test}: no PostgreSQL binaries (initdb, pg_ctl) found; install Debian's postgresql"
            );
            return None;
        };
        let scratch = std::env::temp_dir().join(format!(
            "meshless-pg-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&scratch).expect("a scratch directory");
        // From here on the directory is removed when dropped, the server stopped if it runs.
        let mut cluster = Cluster {
            port: 0,
            pid: 0,
            scratch,
            bin: bin.clone(),
            options: String::new(),
        };
        if is_root() {
            run(
                Command::new("chown").arg("nobody").arg(&cluster.scratch),
                "chown",
            );
        }
        let data = cluster.scratch.join("data");
        run(
            as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        );
        // A free port may be taken by someone else before the server binds it: then another.
        for attempt in 1..=3 {
            cluster.port = free_port();
            cluster.options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=300",
                cluster.port,
                cluster.scratch.display()
            );
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err(failure) if attempt == 3 => panic!(
                    "{failure}\n{}",
                    std::fs::read_to_string(cluster.scratch.join("server.log")).unwrap_or_default()
                ),
                Err(_) => {}
            }
        }
        cluster.pid = cluster
            .postmaster_pid()
            .expect("the server's PID in postmaster.pid");
        Some(cluster)
    }

    /// Restarts the server on the same data directory and port, with a fast shutdown: its
    /// sessions are ended (their transactions roll back), then it starts again. Returns once
    /// it accepts connections; fails the test when stopping or starting takes longer than
    /// [`PATIENCE`]. It blocks: from a test's runtime, call it in `block_in_place`.
    pub(crate) fn restart(&mut self) {
        let data = self.scratch.join("data");
        let patience = PATIENCE.as_secs().to_string();
        // The options it was started with are in the data directory (`postmaster.opts`).
        let restarted = output(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(self.scratch.join("server.log"))
                .args(["-w", "-t", &patience, "-m", "fast", "restart"]),
            "pg_ctl restart",
        );
        // A new postmaster: the old PID no longer names the server (0 if none is written yet,
        // and then `drop` reads it again).
        let before = self.pid;
        self.pid = self.postmaster_pid().unwrap_or(0);
        if let Err(failure) = restarted {
            panic!(
                "{failure}\n{}",
                std::fs::read_to_string(self.scratch.join("server.log")).unwrap_or_default()
            );
        }
        assert_ne!(self.pid, before, "a new server process after the restart");
    }

    /// Stops the server with a fast shutdown (its sessions end, their transactions roll
    /// back), until [`start_again`](Self::start_again). Blocks: from a test's runtime, call it
    /// in `block_in_place`.
    pub(crate) fn stop_for_now(&mut self) {
        let patience = PATIENCE.as_secs().to_string();
        run(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.scratch.join("data"))
                .args(["-w", "-t", &patience, "-m", "fast", "stop"]),
            "pg_ctl stop",
        );
        self.pid = 0;
    }

    /// Starts the server stopped by [`stop_for_now`](Self::stop_for_now) on the same data
    /// directory and port. Blocks, as that does.
    pub(crate) fn start_again(&mut self) {
        if let Err(failure) = self.pg_ctl_start() {
            panic!(
                "{failure}\n{}",
                std::fs::read_to_string(self.scratch.join("server.log")).unwrap_or_default()
            );
        }
        self.pid = self
            .postmaster_pid()
            .expect("the server's PID in postmaster.pid");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let patience = PATIENCE.as_secs().to_string();
        output(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.scratch.join("data"))
                .arg("-l")
                .arg(self.scratch.join("server.log"))
                .args(["-w", "-t", &patience, "-o", &self.options, "start"]),
            "pg_ctl start",
        )
    }

    /// The PID the server wrote in its data directory, if it did.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.scratch.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A pool of up to `connections` connections to the server.
    pub(crate) async fn pool(&self, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(PATIENCE)
            .connect(&self.url())
            .await
            .expect("connecting to the test's PostgreSQL")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.pid == 0 {
            // A start that failed, or timed out with the server still starting.
            self.pid = self.postmaster_pid().unwrap_or(0);
        }
        if self.pid != 0 {
            // SIGINT: the fast shutdown (sessions ended, no waiting for clients).
            signal("-INT", self.pid);
            let deadline = Instant::now() + PATIENCE;
            while alive(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(self.pid) {
                signal("-KILL", self.pid);
            }
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Where `initdb` and `pg_ctl` are.
fn binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("MESHLESS_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return has_both(&dir).then_some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_both(dir))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program`, run as an unprivileged user when the test runs as root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) {
    if let Err(failure) = output(command, what) {
        panic!("{failure}");
    }
}

/// Runs `command`; what it printed when it failed.
fn output(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{what}: {error}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` runs (a zombie has ended).
fn alive(pid: u32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        return !stat.contains(") Z ");
    }
    if Path::new("/proc/self/stat").exists() {
        return false;
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
