//! Enrolled agents and the invites that enroll them: their MAC keys and
//! certificates, revocation, and where their keys were used without them.

use std::time::Duration;

use ackgate_common::host::unix_secs;
use ackgate_common::mac::MacKey;
use ackgate_common::proto::{Invite, invite_secret_digest};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError, hex};
use crate::agents::{AgentRecord, Directory, EnrollRefusal, KeyMisuse, LoginFailure, NewAgent};

/// An enrolled agent, as `ackgate agents` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentEntry {
    pub agent_id: u32,
    pub hostname: String,
    pub install_serial: String,
    pub enrolled_unix: u64,
    pub revoked: bool,
    /// SHA-256 of its client certificate (hex), once issued.
    pub certificate: Option<String>,
    /// Where its key was used without it (suspected copies).
    pub key_misuse: Vec<KeyMisuse>,
}

impl Store {
    pub fn create_invite(
        &self,
        gateway: &str,
        ca_sha256: [u8; 32],
        valid_for: Duration,
        note: &str,
    ) -> Result<Invite, StoreError> {
        let secret: [u8; 32] = rand::random();
        let expires_unix = unix_secs() + valid_for.as_secs();
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO invites (secret_sha256, note, expires_unix) VALUES (?1, ?2, ?3)",
            params![&invite_secret_digest(&secret)[..], note, expires_unix],
        )?;
        let invite_id = tx.last_insert_rowid() as u64;
        Self::audit(&tx, "invite", note)?;
        tx.commit()?;
        Ok(Invite { gateway: gateway.to_owned(), ca_sha256, invite_id, secret, expires_unix })
    }

    /// Counts a flow stamped with `agent_id`'s key that the agent never
    /// stamped, per agent and source address.
    pub fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO key_misuse VALUES (?1, ?2, ?3, ?4, ?4, 1)
             ON CONFLICT (agent_id, source) DO UPDATE SET
                service = excluded.service, last_unix = excluded.last_unix, count = count + 1",
            params![agent_id, source, service, unix_secs()],
        )?;
        Ok(())
    }

    /// Where the keys of agents (of `agent_id`, if given) were used without
    /// the agent, most recent first.
    pub fn key_misuse(&self, agent_id: Option<u32>) -> Result<Vec<KeyMisuse>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT agent_id, source, service, first_unix, last_unix, count FROM key_misuse
             WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY last_unix DESC",
        )?;
        let rows = stmt.query_map([agent_id], |r| {
            Ok(KeyMisuse {
                agent_id: r.get(0)?,
                source: r.get(1)?,
                service: r.get(2)?,
                first_unix: r.get(3)?,
                last_unix: r.get(4)?,
                count: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every enrolled agent (revoked ones too), with where its key was
    /// misused.
    pub fn agents(&self) -> Result<Vec<AgentEntry>, StoreError> {
        let mut agents = {
            let db = self.db();
            let mut stmt = db.prepare(
                "SELECT agent_id, hostname, install_serial, enrolled_unix, revoked, cert_sha256 FROM agents ORDER BY enrolled_unix, agent_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AgentEntry {
                    agent_id: r.get(0)?,
                    hostname: r.get(1)?,
                    install_serial: r.get(2)?,
                    enrolled_unix: r.get(3)?,
                    revoked: r.get::<_, i64>(4)? != 0,
                    certificate: r.get::<_, Option<Vec<u8>>>(5)?.map(|c| hex(&c)),
                    key_misuse: Vec::new(),
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut misuse = self.key_misuse(None)?;
        for a in &mut agents {
            a.key_misuse = misuse.extract_if(.., |m| m.agent_id == a.agent_id).collect();
        }
        Ok(agents)
    }

    pub fn agent(&self, agent_id: u32) -> Result<AgentEntry, StoreError> {
        self.agents()?.into_iter().find(|a| a.agent_id == agent_id).ok_or(StoreError::NoSuchAgent(agent_id))
    }

    /// Marks the agent revoked: its key leaves the gate's map at the next
    /// sync, and its certificate no longer opens a session.
    pub fn revoke_agent(&self, agent_id: u32) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx.execute("UPDATE agents SET revoked = 1 WHERE agent_id = ?1", [agent_id])? == 0 {
            return Err(StoreError::NoSuchAgent(agent_id));
        }
        Self::audit(&tx, "revoke agent", &agent_id.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// Binds a renewed certificate to `agent_id`; the one it replaces moves
    /// to `agent_certs` and stays valid until it expires.
    pub fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR IGNORE INTO agent_certs SELECT cert_sha256, agent_id, ?2 FROM agents
             WHERE agent_id = ?1 AND cert_sha256 IS NOT NULL",
            params![agent_id, unix_secs()],
        )?;
        if tx.execute("UPDATE agents SET cert_sha256 = ?2 WHERE agent_id = ?1", params![agent_id, &cert_sha256[..]])?
            == 0
        {
            return Err(StoreError::NoSuchAgent(agent_id));
        }
        Self::audit(&tx, "renew certificate", &agent_id.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// Whether `agent_id` was revoked; none for an agent the store does not
    /// know (a static agent from the config).
    pub fn agent_revoked(&self, agent_id: u32) -> Result<Option<bool>, StoreError> {
        let revoked: Option<i64> = self
            .db()
            .query_row("SELECT revoked FROM agents WHERE agent_id = ?1", [agent_id], |r| r.get(0))
            .optional()?;
        Ok(revoked.map(|r| r != 0))
    }

    /// Every enrolled, unrevoked agent and its MAC key (for the gate's map).
    pub fn agent_keys(&self) -> Result<Vec<(u32, MacKey)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT agent_id, mac_key FROM agents WHERE revoked = 0")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, key) = row?;
            if let Ok(k) = <[u8; 16]>::try_from(key.as_slice()) {
                out.push((id, MacKey::from_bytes(k)));
            }
        }
        Ok(out)
    }
}

fn key_bytes(k: &MacKey) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&k.k0.to_le_bytes());
    b[8..].copy_from_slice(&k.k1.to_le_bytes());
    b
}

impl Directory for Store {
    fn enroll(&self, invite_id: u64, secret: &[u8; 32], agent: NewAgent) -> Result<u32, EnrollRefusal> {
        let result = (|| -> Result<Result<u32, EnrollRefusal>, rusqlite::Error> {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(Vec<u8>, u64, i64)> = tx
                .query_row(
                    "SELECT secret_sha256, expires_unix, used FROM invites WHERE invite_id = ?1",
                    [invite_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((digest, expires, used)) = row else {
                return Ok(Err(EnrollRefusal::BadInvite));
            };
            if digest != invite_secret_digest(secret) {
                return Ok(Err(EnrollRefusal::BadInvite));
            }
            if used != 0 {
                return Ok(Err(EnrollRefusal::Used));
            }
            if expires < unix_secs() {
                return Ok(Err(EnrollRefusal::Expired));
            }
            tx.execute("UPDATE invites SET used = 1 WHERE invite_id = ?1", [invite_id])?;
            // A random id, not the next row: the id travels in clear in every
            // stamped handshake, and sequential ids would tell an observer
            // how many machines are enrolled.
            let id = loop {
                let id = crate::agents::random_agent_id();
                let taken =
                    tx.query_row("SELECT 1 FROM agents WHERE agent_id = ?1", [id], |_| Ok(())).optional()?.is_some();
                if !taken {
                    break id;
                }
            };
            tx.execute(
                "INSERT INTO agents (agent_id, hostname, install_serial, mac_key, enrolled_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, agent.hostname, agent.install_serial, &key_bytes(&agent.mac_key)[..], unix_secs()],
            )?;
            tx.execute(
                "INSERT INTO audit VALUES (?1, 'enroll', ?2)",
                params![unix_secs(), format!("agent {id} ({})", agent.hostname)],
            )?;
            tx.commit()?;
            Ok(Ok(id))
        })();
        result.unwrap_or_else(|e| {
            tracing::error!("user store: enrollment: {e}");
            Err(EnrollRefusal::BadInvite)
        })
    }

    fn bind_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) {
        if let Err(e) = self
            .db()
            .execute("UPDATE agents SET cert_sha256 = ?2 WHERE agent_id = ?1", params![agent_id, &cert_sha256[..]])
        {
            tracing::error!("user store: binding agent {agent_id}'s certificate: {e}");
        }
    }

    fn agent_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<AgentRecord> {
        let row = self
            .db()
            .query_row(
                "SELECT agent_id, hostname, install_serial, mac_key FROM agents a WHERE revoked = 0 AND (cert_sha256 = ?1
                 OR agent_id = (SELECT c.agent_id FROM agent_certs c WHERE c.cert_sha256 = ?1))",
                [&cert_sha256[..]],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Vec<u8>>(3)?)),
            )
            .optional()
            .ok()
            .flatten()?;
        let key = <[u8; 16]>::try_from(row.3.as_slice()).ok()?;
        Some(AgentRecord {
            agent_id: row.0,
            hostname: row.1,
            install_serial: row.2,
            mac_key: MacKey::from_bytes(key),
            cert_sha256: Some(*cert_sha256),
        })
    }

    fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), String> {
        Store::record_key_misuse(self, agent_id, source, service).map_err(|e| e.to_string())
    }

    fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), String> {
        Store::renew_certificate(self, agent_id, cert_sha256).map_err(|e| e.to_string())
    }

    fn login_locked(&self, user: &str) -> bool {
        let locked = self.db().query_row("SELECT 1 FROM login_locks WHERE user = ?1", [user], |_| Ok(())).optional();
        // A store that cannot answer locks nobody out, but says so.
        locked
            .unwrap_or_else(|e| {
                tracing::error!("user store: reading {user}'s lock: {e}");
                None
            })
            .is_some()
    }

    fn record_login_failure(&self, f: &LoginFailure<'_>, lock: bool) {
        let result = (|| -> Result<(), StoreError> {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let detail = format!("user {:?} agent {} from {}", f.user, f.agent_id, f.source);
            Self::audit(&tx, "login failed", &detail)?;
            if lock {
                tx.execute(
                    "INSERT INTO login_locks VALUES (?1, ?2) ON CONFLICT (user) DO NOTHING",
                    params![f.user, unix_secs()],
                )?;
                Self::audit(&tx, "user locked", f.user)?;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!("user store: recording a failed login of {}: {e}", f.user);
        }
    }
}
