//! The store's tables, and the steps that bring a store made by an earlier
//! version up to date.

use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    groups TEXT NOT NULL DEFAULT '',
    created_unix INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS machines (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    fingerprint BLOB NOT NULL,
    approved_unix INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, fingerprint)
);
CREATE TABLE IF NOT EXISTS machine_agents (
    user TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    agent_id INTEGER NOT NULL,
    PRIMARY KEY (user, fingerprint, agent_id)
);
CREATE TABLE IF NOT EXISTS potential (
    user TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    install_serial TEXT NOT NULL,
    agent_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    service TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_unix INTEGER NOT NULL,
    last_unix INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (user, fingerprint)
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id INTEGER PRIMARY KEY,
    hostname TEXT NOT NULL,
    install_serial TEXT NOT NULL,
    mac_key BLOB NOT NULL,
    cert_sha256 BLOB,
    enrolled_unix INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS agents_by_certificate ON agents (cert_sha256);
CREATE TABLE IF NOT EXISTS agent_certs (
    cert_sha256 BLOB PRIMARY KEY,
    agent_id INTEGER NOT NULL,
    replaced_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    invite_id INTEGER PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    note TEXT NOT NULL,
    expires_unix INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS claims (
    claim_id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    agent_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    first_unix INTEGER NOT NULL,
    last_unix INTEGER NOT NULL,
    -- 1: approved; its password became the user's.
    approved INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user, agent_id)
);
CREATE TABLE IF NOT EXISTS claim_machines (
    claim_id INTEGER NOT NULL REFERENCES claims(claim_id) ON DELETE CASCADE,
    fingerprint BLOB NOT NULL,
    agent_id INTEGER NOT NULL,
    service TEXT NOT NULL,
    first_unix INTEGER NOT NULL,
    last_unix INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (claim_id, fingerprint, agent_id)
);
CREATE TABLE IF NOT EXISTS key_misuse (
    agent_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    service TEXT NOT NULL,
    first_unix INTEGER NOT NULL,
    last_unix INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (agent_id, source)
);
CREATE TABLE IF NOT EXISTS login_locks (
    user TEXT PRIMARY KEY,
    locked_unix INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS opaque_setup (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    setup BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    at_unix INTEGER NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Brings a store made by an earlier version up to date (SQLite's
/// `user_version` counts the steps applied).
pub(super) fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        // Whether an attempt carried a valid proof of the user's password:
        // only proven attempts bind a machine.
        conn.execute_batch(
            "ALTER TABLE potential ADD COLUMN proven INTEGER NOT NULL DEFAULT 0;
             PRAGMA user_version = 1;",
        )?;
    }
    if version < 2 {
        // Logins became OPAQUE exchanges: records replace password hashes.
        // Users keep their old hash column (unused) until `users passwd`;
        // claims not yet approved go (their agents claim again at the next
        // login).
        conn.execute_batch(
            "ALTER TABLE users ADD COLUMN opaque_record BLOB;
             ALTER TABLE users ADD COLUMN credential_id BLOB;
             ALTER TABLE claims ADD COLUMN opaque_record BLOB;
             ALTER TABLE claims ADD COLUMN credential_id BLOB;
             DELETE FROM claims WHERE approved = 0;
             PRAGMA user_version = 2;",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ackgate_common::proto::LoginGrant;

    use crate::store::tests::{attempt, login, logins};
    use crate::store::{Store, StoreError};

    use super::*;

    #[test]
    fn a_store_from_before_opaque_keeps_its_users_until_their_passwords_are_set_again() {
        let path = std::env::temp_dir().join(format!("ackgate-store-opaque-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).expect("old store");
            conn.execute_batch(
                "CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, groups TEXT NOT NULL DEFAULT '',
                 created_unix INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO users (name, password_hash, created_unix) VALUES ('dave', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', 1);
                 CREATE TABLE claims (claim_id INTEGER PRIMARY KEY, user TEXT NOT NULL, password_hash TEXT NOT NULL,
                 agent_id INTEGER NOT NULL, source TEXT NOT NULL, first_unix INTEGER NOT NULL, last_unix INTEGER NOT NULL,
                 approved INTEGER NOT NULL DEFAULT 0, UNIQUE (user, agent_id));
                 INSERT INTO claims (user, password_hash, agent_id, source, first_unix, last_unix) VALUES ('eve', 'h', 1, 'x', 1, 1);",
            )
            .expect("old schema");
        }
        let s = Arc::new(Store::open(&path).expect("the old store opens"));
        let l = logins(&s);
        assert!(s.users().expect("users")[0].password_outdated, "users list says the password must be set again");
        assert_eq!(login(&l, "dave", "anything", 1), LoginGrant::Refused, "an argon2 hash cannot run an OPAQUE login");
        assert!(s.pending().expect("pending").is_empty(), "unapproved claims from before are gone");
        s.set_password("dave", "new").expect("passwd");
        assert!(!s.users().expect("users")[0].password_outdated);
        assert_eq!(login(&l, "dave", "new", 1), LoginGrant::User);
        assert!(matches!(s.set_password("nobody", "x"), Err(StoreError::NoSuchUser(_))));
        drop((l, s));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_store_from_before_claims_is_migrated() {
        let path = std::env::temp_dir().join(format!("ackgate-store-migrate-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).expect("old store");
            conn.execute_batch(
                "CREATE TABLE potential (user TEXT NOT NULL, fingerprint BLOB NOT NULL, password_hash TEXT,
                 install_serial TEXT NOT NULL, agent_id INTEGER NOT NULL, source TEXT NOT NULL, service TEXT NOT NULL,
                 reason TEXT NOT NULL, first_unix INTEGER NOT NULL, last_unix INTEGER NOT NULL, count INTEGER NOT NULL,
                 PRIMARY KEY (user, fingerprint));",
            )
            .expect("old schema");
        }
        let s = Store::open(&path).expect("the old store opens");
        s.record_attempt(&attempt("alice", [1; 32], true)).expect("the migrated table takes proven attempts");
        assert!(s.pending().expect("pending")[0].proven);
        drop(s);
        Store::open(&path).expect("and opens again, migrated once");
        let _ = std::fs::remove_file(&path);
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
