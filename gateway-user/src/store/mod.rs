//! The user store (docs/design.md §6): an SQLite database an administrator can
//! open with the `sqlite3` shell. WAL journal with `synchronous = FULL`:
//! a committed approval survives a crash or power loss at any point.
//!
//! Tables: `users` (valid users: OPAQUE record, groups, revoked flag),
//! `machines` (machine fingerprints approved for a user), `potential`
//! (every failed first attempt: user, machine, source, service, reason,
//! first/last seen, count), `claims` (per agent, on unknown names: the
//! OPAQUE record of the password the agent logged in with, which becomes
//! the user's if approved), `opaque_setup` (the OPAQUE server keys the
//! records need), `agents`
//! (enrolled agents and their MAC keys), `key_misuse` (where an agent's key
//! was used without the agent: suspected stolen keys), `invites` (SHA-256 of
//! each one-time secret), `audit` (every administrative change).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub use ackgate_common::host::hex;
use ackgate_common::host::unix_secs;
use rusqlite::{Connection, params};

use crate::logins::{LoginError, new_setup};

mod agents;
mod schema;
mod users;

pub use agents::AgentEntry;
pub use users::{ATTEMPTS_PER_AGENT, ATTEMPTS_TOTAL, Attempt, PotentialRecord, Standing, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user store {path} (run `ackgate init` to create it): {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("user store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("nothing is waiting for approval for {0:?}")]
    NothingPending(String),
    #[error("no agent with id {0}")]
    NoSuchAgent(u32),
    #[error("{0:?} is a valid user: approve their machines without --claim")]
    ClaimOnValidUser(String),
    #[error("{user:?} has no claim {claim} (see `ackgate users pending`)")]
    NoSuchClaim { user: String, claim: u64 },
    #[error("{user:?} is claimed {} times ({claims:?}): pick one with --claim ID", claims.len())]
    ManyClaims { user: String, claims: Vec<u64> },
    #[error(
        "{path} has mode {mode:o}: others can read the gateway's secrets (CA key, password records, \
         agent keys); `chmod go-rwx {path}`"
    )]
    Exposed { path: String, mode: u32 },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Login(#[from] LoginError),
}

/// Refuses a state directory, store or store journal that anyone but the
/// owner can read or write: they hold the CA key, the password records and
/// every agent's MAC key.
pub fn check_private(state_dir: Option<&Path>, store: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let wal = store.with_extension("db-wal");
    let shm = store.with_extension("db-shm");
    let files = [state_dir, Some(store), Some(wal.as_path()), Some(shm.as_path())];
    for path in files.into_iter().flatten() {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            // The journal files exist only while the store is open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != store && Some(path) != state_dir => {
                continue;
            }
            Err(source) => return Err(StoreError::Io { path: path.display().to_string(), source }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Exposed { path: path.display().to_string(), mode });
        }
    }
    Ok(())
}

pub struct Store {
    conn: Mutex<Connection>,
    attempts_not_recorded: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens the store, creating it (mode 0600: SQLite gives its journal
    /// files the database file's mode) if it does not exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        if path != Path::new(":memory:") {
            use std::os::unix::fs::OpenOptionsExt as _;
            let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StoreError::Io { path: path.display().to_string(), source }),
            }
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        conn.execute_batch(schema::SCHEMA).map_err(open_err)?;
        schema::migrate(&conn).map_err(open_err)?;
        conn.execute("INSERT OR IGNORE INTO opaque_setup (id, setup) VALUES (1, ?1)", [new_setup()])
            .map_err(open_err)?;
        Ok(Self { conn: Mutex::new(conn), attempts_not_recorded: std::sync::atomic::AtomicU64::new(0) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn audit(conn: &Connection, action: &str, detail: &str) -> Result<(), StoreError> {
        conn.execute("INSERT INTO audit VALUES (?1, ?2, ?3)", params![unix_secs(), action, detail])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ackgate_common::proto::LoginGrant;

    use super::*;
    use crate::logins::{Logins, login_here};

    // The helpers below serve the tests of the submodules too.

    pub(super) fn store() -> Store {
        Store::open(Path::new(":memory:")).expect("in-memory store")
    }

    /// The CLI and the daemon write one store at once, each with its own
    /// connection. Every writing transaction takes the write lock when it
    /// begins (IMMEDIATE), so one waits for the other within the busy
    /// timeout; a deferred one that read first could only fail with
    /// SQLITE_BUSY when the other had written since its read.
    #[test]
    fn two_writers_share_the_store() {
        let path = std::env::temp_dir().join(format!("ackgate-store-writers-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (daemon, cli) = (Store::open(&path).expect("store"), Store::open(&path).expect("second connection"));
        std::thread::scope(|scope| {
            for (who, store) in [("daemon", &daemon), ("cli", &cli)] {
                scope.spawn(move || {
                    for i in 0..200 {
                        // A read, then writes, in one transaction.
                        store
                            .revoke_machine("alice", "ff")
                            .unwrap_or_else(|e| panic!("{who}'s write {i} failed beside the other writer: {e}"));
                    }
                });
            }
        });
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// Logins against `s`'s records, as the validator runs them.
    pub(super) fn logins(s: &Arc<Store>) -> Logins<Store> {
        Logins::new(s.login_setup().expect("setup"), s.clone())
    }

    pub(super) fn login(l: &Logins<Store>, user: &str, password: &str, agent_id: u32) -> LoginGrant {
        login_here(l, user, password, agent_id).grant
    }

    pub(super) fn attempt<'a>(user: &'a str, machine: [u8; 32], proven: bool) -> Attempt<'a> {
        let (install_serial, source, service, reason) = ("s", "10.0.0.2:1", "web", "r");
        Attempt { user, machine, install_serial, agent_id: 1, source, service, reason, proven }
    }
}
