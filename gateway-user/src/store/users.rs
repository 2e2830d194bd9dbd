//! Valid users and their approved machines; what waits for an
//! administrator: failed first attempts and the agents' claims on unknown
//! names; login locks.

use ackgate_common::host::unix_secs;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError, hex};
use crate::agents::CLAIMS_PER_AGENT;
use crate::logins::{Credentials, Found, PasswordRecord, Setup, load_setup, register, user_credential_id};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserRecord {
    pub name: String,
    pub groups: Vec<String>,
    pub created_unix: u64,
    pub revoked: bool,
    /// Locked after too many failed logins (`users unlock`).
    pub locked: bool,
    /// The password was set before logins were OPAQUE exchanges: no login
    /// works until `users passwd` sets it again.
    pub password_outdated: bool,
    /// Approved machine fingerprints (hex).
    pub machines: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PotentialRecord {
    pub user: String,
    /// Machine fingerprint (hex).
    pub machine: String,
    /// The name is no valid user's.
    pub new_user: bool,
    /// The claim on the unknown name this entry belongs to (`users approve
    /// NAME --claim ID`).
    pub claim: Option<u64>,
    /// The attempt proved the password: approving binds this machine.
    pub proven: bool,
    pub install_serial: String,
    pub agent_id: u32,
    pub source: String,
    pub service: String,
    pub reason: String,
    pub first_unix: u64,
    pub last_unix: u64,
    pub count: u64,
}

/// A failed first attempt, as the validator reports it.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub user: &'a str,
    pub machine: [u8; 32],
    pub install_serial: &'a str,
    pub agent_id: u32,
    pub source: &'a str,
    pub service: &'a str,
    pub reason: &'a str,
    /// The profile carried a valid proof of the user's own password.
    pub proven: bool,
}

/// What the validator needs to know about one user and machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub known: bool,
    pub revoked: bool,
    pub machine_approved: bool,
    pub groups: Vec<String>,
}

/// Attempts (user and machine pairs waiting for an administrator) one
/// agent may have recorded.
pub const ATTEMPTS_PER_AGENT: usize = 64;
/// Attempts the store keeps in all.
pub const ATTEMPTS_TOTAL: usize = 65_536;

fn groups_of(text: &str) -> Vec<String> {
    text.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect()
}

impl Store {
    /// The OPAQUE server keys of this store's records.
    pub fn login_setup(&self) -> Result<Setup, StoreError> {
        let bytes: Vec<u8> = self.db().query_row("SELECT setup FROM opaque_setup WHERE id = 1", [], |r| r.get(0))?;
        Ok(load_setup(&bytes)?)
    }

    /// The OPAQUE record of `password` for a valid user `name`: both halves
    /// of the registration run here, as the administrator typed the
    /// password (argon2id, once).
    fn user_record(&self, name: &str, password: &str) -> Result<PasswordRecord, StoreError> {
        Ok(register(&self.login_setup()?, password, &user_credential_id(name))?)
    }

    pub fn add_user(&self, name: &str, password: &str, groups: &[String]) -> Result<(), StoreError> {
        let record = self.user_record(name, password)?;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool =
            tx.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(true)).optional()?.is_some();
        if exists {
            return Err(StoreError::UserExists(name.to_owned()));
        }
        tx.execute(
            "INSERT INTO users (name, password_hash, opaque_record, credential_id, groups, created_unix)
             VALUES (?1, '', ?2, ?3, ?4, ?5)",
            params![name, record.record, record.credential_id, groups.join(","), unix_secs()],
        )?;
        // Claims on the name are void once it is a valid user's.
        tx.execute("DELETE FROM claims WHERE user = ?1", [name])?;
        Self::audit(&tx, "user add", name)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets a valid user's password (a new OPAQUE record). Sessions logged
    /// in with the old one keep their proof keys until they end.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), StoreError> {
        let record = self.user_record(name, password)?;
        let db = self.db();
        let changed = db.execute(
            "UPDATE users SET password_hash = '', opaque_record = ?2, credential_id = ?3 WHERE name = ?1",
            params![name, record.record, record.credential_id],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Self::audit(&db, "user passwd", name)?;
        Ok(())
    }

    /// Imports users who share one OPAQUE record (benchmarks), each with
    /// one approved machine, in one transaction.
    pub fn import_users(
        &self,
        users: &[(String, [u8; 32])],
        record: &PasswordRecord,
        groups: &[String],
    ) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut user = tx.prepare(
                "INSERT INTO users (name, password_hash, opaque_record, credential_id, groups, created_unix)
                 VALUES (?1, '', ?2, ?3, ?4, ?5)",
            )?;
            let mut machine =
                tx.prepare("INSERT INTO machines (user, fingerprint, approved_unix) VALUES (?1, ?2, ?3)")?;
            let now = unix_secs();
            for (name, fp) in users {
                user.execute(params![name, record.record, record.credential_id, groups.join(","), now])?;
                machine.execute(params![name, &fp[..], now])?;
            }
        }
        Self::audit(&tx, "import", &format!("{} users", users.len()))?;
        tx.commit()?;
        Ok(())
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT name, groups, created_unix, revoked, EXISTS (SELECT 1 FROM login_locks l WHERE l.user = name),
                    opaque_record IS NULL
             FROM users ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UserRecord {
                name: r.get(0)?,
                groups: groups_of(&r.get::<_, String>(1)?),
                created_unix: r.get(2)?,
                revoked: r.get::<_, i64>(3)? != 0,
                locked: r.get(4)?,
                password_outdated: r.get(5)?,
                machines: Vec::new(),
            })
        })?;
        let mut users = rows.collect::<Result<Vec<_>, _>>()?;
        let mut machines = db.prepare("SELECT fingerprint FROM machines WHERE user = ?1 AND revoked = 0")?;
        for u in &mut users {
            u.machines = machines
                .query_map([&u.name], |r| r.get::<_, Vec<u8>>(0))?
                .map(|m| m.map(|b| hex(&b)))
                .collect::<Result<_, _>>()?;
        }
        Ok(users)
    }

    /// The approved machines of `user`, none if the user is unknown or
    /// revoked: what a flow authorized for them still needs.
    pub fn approved_machines(&self, user: &str) -> Result<Vec<[u8; 32]>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT m.fingerprint FROM machines m JOIN users u ON u.name = m.user \
             WHERE m.user = ?1 AND m.revoked = 0 AND u.revoked = 0",
        )?;
        let machines = stmt
            .query_map([user], |r| r.get::<_, Vec<u8>>(0))?
            .filter_map(|m| m.map(|b| <[u8; 32]>::try_from(b.as_slice()).ok()).transpose())
            .collect::<Result<_, _>>()?;
        Ok(machines)
    }

    /// Every user's name, revoked or not.
    pub fn user_names(&self) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name FROM users")?;
        let names = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(names)
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users()?.into_iter().find(|u| u.name == name))
    }

    /// Where `user` stands on `machine` as enrolled agent `agent_id`: the
    /// machine is approved only with an agent the approval bound (a
    /// machine imported without one accepts any agent).
    pub fn standing(&self, user: &str, machine: &[u8; 32], agent_id: u32) -> Result<Standing, StoreError> {
        let db = self.db();
        let row: Option<(String, i64)> = db
            .query_row("SELECT groups, revoked FROM users WHERE name = ?1", [user], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((groups, revoked)) = row else {
            return Ok(Standing { known: false, revoked: false, machine_approved: false, groups: Vec::new() });
        };
        let machine_approved = db
            .query_row(
                "SELECT 1 FROM machines m WHERE m.user = ?1 AND m.fingerprint = ?2 AND m.revoked = 0 AND (
                    EXISTS (SELECT 1 FROM machine_agents a
                            WHERE a.user = m.user AND a.fingerprint = m.fingerprint AND a.agent_id = ?3)
                    OR NOT EXISTS (SELECT 1 FROM machine_agents a
                                   WHERE a.user = m.user AND a.fingerprint = m.fingerprint))",
                params![user, &machine[..], agent_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        Ok(Standing { known: true, revoked: revoked != 0, machine_approved, groups: groups_of(&groups) })
    }

    /// Records (or counts again) a failed first attempt; whether it was
    /// recorded. Once an attempt from a machine was proven, the machine
    /// stays proven. An enrolled agent could vary the user name or the
    /// fingerprint without end, so a new (user, machine) pair is recorded
    /// only while its agent has fewer than [`ATTEMPTS_PER_AGENT`] and the
    /// store fewer than [`ATTEMPTS_TOTAL`]; beyond, it is counted
    /// ([`Store::attempts_not_recorded`]) and not kept.
    pub fn record_attempt(&self, a: &Attempt<'_>) -> Result<bool, StoreError> {
        let now = unix_secs();
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = tx
            .query_row(
                "SELECT 1 FROM potential WHERE user = ?1 AND fingerprint = ?2",
                params![a.user, &a.machine[..]],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !known {
            let (of_agent, total): (usize, usize) = tx.query_row(
                "SELECT count(*) FILTER (WHERE agent_id = ?1), count(*) FROM potential",
                [a.agent_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if of_agent >= ATTEMPTS_PER_AGENT || total >= ATTEMPTS_TOTAL {
                self.attempts_not_recorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO potential (user, fingerprint, install_serial, agent_id, source, service, reason, first_unix, last_unix, count, proven)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, 1, ?9)
             ON CONFLICT (user, fingerprint) DO UPDATE SET
                install_serial = excluded.install_serial, agent_id = excluded.agent_id, source = excluded.source,
                service = excluded.service, reason = excluded.reason, last_unix = excluded.last_unix, count = count + 1,
                proven = max(proven, excluded.proven)",
            params![a.user, &a.machine[..], a.install_serial, a.agent_id, a.source, a.service, a.reason, now, a.proven],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// New attempts not recorded since start: their agent, or the store,
    /// held as many as it may.
    pub fn attempts_not_recorded(&self) -> u64 {
        self.attempts_not_recorded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `claim` was approved as `user`: its password is the user's.
    pub fn claim_approved_as(&self, claim: u64, user: &str) -> Result<bool, StoreError> {
        let found = self
            .db()
            .query_row(
                "SELECT 1 FROM claims WHERE claim_id = ?1 AND user = ?2 AND approved = 1",
                params![claim, user],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Records that `machine`, through `agent_id`, proved the password of
    /// `claim` (a profile with a valid proof under the claim's login).
    pub fn record_claim_machine(
        &self,
        claim: u64,
        machine: &[u8; 32],
        agent_id: u32,
        service: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO claim_machines VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)
             ON CONFLICT (claim_id, fingerprint, agent_id) DO UPDATE SET
                service = excluded.service, last_unix = excluded.last_unix, count = count + 1",
            params![claim, &machine[..], agent_id, service, unix_secs()],
        )?;
        Ok(())
    }

    /// What waits for an administrator: attempts of valid users from
    /// machines not approved for them, attempts under unknown names, and
    /// claims on unknown names with the machines that proved them.
    pub fn pending(&self) -> Result<Vec<PotentialRecord>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT p.user, p.fingerprint, u.name IS NULL, NULL, p.proven, p.install_serial, p.agent_id, p.source,
                    p.service, p.reason, p.first_unix, p.last_unix, p.count
             FROM potential p LEFT JOIN users u ON u.name = p.user
             WHERE length(p.fingerprint) > 0
             UNION ALL
             SELECT c.user, coalesce(m.fingerprint, x''), 1, c.claim_id, m.fingerprint IS NOT NULL, '', c.agent_id,
                    c.source, coalesce(m.service, ''),
                    CASE WHEN m.fingerprint IS NULL THEN 'claimed; no machine has proven it yet'
                         ELSE 'claimed; this machine proved the password' END,
                    c.first_unix, max(c.last_unix, coalesce(m.last_unix, 0)), coalesce(m.count, 0)
             FROM claims c LEFT JOIN claim_machines m ON m.claim_id = c.claim_id
             WHERE c.approved = 0
             ORDER BY 12 DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PotentialRecord {
                user: r.get(0)?,
                machine: hex(&r.get::<_, Vec<u8>>(1)?),
                new_user: r.get(2)?,
                claim: r.get(3)?,
                proven: r.get(4)?,
                install_serial: r.get(5)?,
                agent_id: r.get(6)?,
                source: r.get(7)?,
                service: r.get(8)?,
                reason: r.get(9)?,
                first_unix: r.get(10)?,
                last_unix: r.get(11)?,
                count: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Approves what is pending for `user`, in one transaction; returns the
    /// number of machines bound. A valid user: the machines whose attempts
    /// proved their password are bound to them. An unknown name: one claim
    /// (`claim`, or the only one) makes it a valid user with that claim's
    /// password and `groups`, bound to the machines that proved that claim
    /// only; the name's other claims are void. Machines are bound together
    /// with the agent they were seen through.
    pub fn approve(&self, user: &str, claim: Option<u64>, groups: &[String]) -> Result<usize, StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = tx.query_row("SELECT 1 FROM users WHERE name = ?1", [user], |_| Ok(())).optional()?.is_some();
        let machines: Vec<(Vec<u8>, u32)> = if known {
            if claim.is_some() {
                return Err(StoreError::ClaimOnValidUser(user.to_owned()));
            }
            let mut stmt = tx.prepare(
                "SELECT fingerprint, agent_id FROM potential WHERE user = ?1 AND length(fingerprint) > 0 AND proven = 1",
            )?;
            let machines = stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            if machines.is_empty() {
                return Err(StoreError::NothingPending(user.to_owned()));
            }
            if !groups.is_empty() {
                tx.execute("UPDATE users SET groups = ?2 WHERE name = ?1", params![user, groups.join(",")])?;
            }
            machines
        } else {
            let claims: Vec<u64> = {
                let mut stmt =
                    tx.prepare("SELECT claim_id FROM claims WHERE user = ?1 AND approved = 0 ORDER BY claim_id")?;
                stmt.query_map([user], |r| r.get(0))?.collect::<Result<_, _>>()?
            };
            let chosen = match (claim, claims.as_slice()) {
                (Some(c), _) if claims.contains(&c) => c,
                (Some(c), _) => return Err(StoreError::NoSuchClaim { user: user.to_owned(), claim: c }),
                (None, []) => return Err(StoreError::NothingPending(user.to_owned())),
                (None, [only]) => *only,
                (None, many) => return Err(StoreError::ManyClaims { user: user.to_owned(), claims: many.to_vec() }),
            };
            // The claim's record becomes the user's, with the identifier
            // its OPRF key was derived for.
            let (record, credential_id): (Vec<u8>, Vec<u8>) =
                tx.query_row("SELECT opaque_record, credential_id FROM claims WHERE claim_id = ?1", [chosen], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            tx.execute(
                "INSERT INTO users (name, password_hash, opaque_record, credential_id, groups, created_unix)
                 VALUES (?1, '', ?2, ?3, ?4, ?5)",
                params![user, record, credential_id, groups.join(","), unix_secs()],
            )?;
            let mut stmt = tx.prepare("SELECT fingerprint, agent_id FROM claim_machines WHERE claim_id = ?1")?;
            let machines = stmt.query_map([chosen], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            // The chosen claim stays, marked approved: sessions logged in
            // under it hold the user's password now. The others are void.
            tx.execute("DELETE FROM claims WHERE user = ?1 AND claim_id != ?2", params![user, chosen])?;
            tx.execute("DELETE FROM claim_machines WHERE claim_id = ?1", [chosen])?;
            tx.execute("UPDATE claims SET approved = 1 WHERE claim_id = ?1", [chosen])?;
            machines
        };
        for (m, agent_id) in &machines {
            tx.execute(
                "INSERT INTO machines (user, fingerprint, approved_unix) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, fingerprint) DO UPDATE SET revoked = 0, approved_unix = excluded.approved_unix",
                params![user, m, unix_secs()],
            )?;
            // The approval binds the enrolled agent the attempt came from,
            // not only the fingerprint, which a root user can forge and
            // cloned machines share.
            tx.execute(
                "INSERT OR IGNORE INTO machine_agents (user, fingerprint, agent_id) VALUES (?1, ?2, ?3)",
                params![user, m, agent_id],
            )?;
        }
        tx.execute("DELETE FROM potential WHERE user = ?1", [user])?;
        let detail = match claim {
            Some(c) => format!("{user} claim {c} ({} machine(s))", machines.len()),
            None => format!("{user} ({} machine(s))", machines.len()),
        };
        Self::audit(&tx, "approve", &detail)?;
        tx.commit()?;
        Ok(machines.len())
    }

    /// Unlocks a user locked after failed logins; whether it was locked.
    pub fn unlock_user(&self, user: &str) -> Result<bool, StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let was = tx.execute("DELETE FROM login_locks WHERE user = ?1", [user])? > 0;
        Self::audit(&tx, "unlock", user)?;
        tx.commit()?;
        Ok(was)
    }

    /// Failed logins recorded in the audit log since `since_unix`, newest
    /// first, as their detail text.
    pub fn login_failures(&self, since_unix: u64) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT detail FROM audit WHERE action = 'login failed' AND at_unix >= ?1 ORDER BY rowid DESC")?;
        let rows = stmt.query_map([since_unix], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn revoke_user(&self, user: &str) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx.execute("UPDATE users SET revoked = 1 WHERE name = ?1", [user])? == 0 {
            return Err(StoreError::NoSuchUser(user.to_owned()));
        }
        Self::audit(&tx, "revoke", user)?;
        tx.commit()?;
        Ok(())
    }

    /// Revokes the machines of `user` whose fingerprint starts with
    /// `prefix` (hex); returns how many.
    pub fn revoke_machine(&self, user: &str, prefix: &str) -> Result<usize, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let machines: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare("SELECT fingerprint FROM machines WHERE user = ?1 AND revoked = 0")?;
            stmt.query_map([user], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let mut n = 0;
        for m in machines.iter().filter(|m| hex(m).starts_with(&prefix)) {
            n +=
                tx.execute("UPDATE machines SET revoked = 1 WHERE user = ?1 AND fingerprint = ?2", params![user, m])?;
        }
        Self::audit(&tx, "revoke machine", &format!("{user} {prefix} ({n})"))?;
        tx.commit()?;
        Ok(n)
    }

    fn find_record(&self, user: &str, agent_id: u32) -> Result<Found, StoreError> {
        let db = self.db();
        // A user from before OPAQUE logins has no record (NULL columns).
        let stored: Option<Option<PasswordRecord>> = db
            .query_row("SELECT opaque_record, credential_id FROM users WHERE name = ?1", [user], |r| {
                let (record, credential_id): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(0)?, r.get(1)?);
                Ok(record.zip(credential_id).map(|(record, credential_id)| PasswordRecord { record, credential_id }))
            })
            .optional()?;
        match stored {
            Some(Some(record)) => return Ok(Found::User(record)),
            Some(None) => return Ok(Found::UserWithoutRecord),
            None => {}
        }
        let claim: Option<(u64, Vec<u8>, Vec<u8>)> = db
            .query_row(
                "SELECT claim_id, opaque_record, credential_id FROM claims WHERE user = ?1 AND agent_id = ?2",
                params![user, agent_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match claim {
            Some((id, record, credential_id)) => {
                db.execute("UPDATE claims SET last_unix = ?2 WHERE claim_id = ?1", params![id, unix_secs()])?;
                Found::Claim(id, PasswordRecord { record, credential_id })
            }
            None => Found::Unknown,
        })
    }

    fn insert_claim(
        &self,
        user: &str,
        agent_id: u32,
        source: &str,
        record: &PasswordRecord,
    ) -> Result<Option<u64>, StoreError> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: usize =
            tx.query_row("SELECT count(*) FROM claims WHERE agent_id = ?1 AND approved = 0", [agent_id], |r| r.get(0))?;
        if held >= CLAIMS_PER_AGENT {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO claims (user, password_hash, opaque_record, credential_id, agent_id, source, first_unix, last_unix)
             VALUES (?1, '', ?2, ?3, ?4, ?5, ?6, ?6)",
            params![user, record.record, record.credential_id, agent_id, source, unix_secs()],
        )?;
        let id = tx.last_insert_rowid() as u64;
        Self::audit(&tx, "claim", &format!("{user:?} claim {id} by agent {agent_id} from {source}"))?;
        tx.commit()?;
        Ok(Some(id))
    }
}

/// A valid user's record, or the agent's claim on an unknown name, which
/// the agent's first login under the name makes (docs/design.md §6); a claim
/// never replaces another agent's.
impl Credentials for Store {
    fn find(&self, user: &str, agent_id: u32) -> Result<Found, String> {
        self.find_record(user, agent_id).map_err(|e| e.to_string())
    }

    fn add_claim(
        &self,
        user: &str,
        agent_id: u32,
        source: &str,
        record: &PasswordRecord,
    ) -> Result<Option<u64>, String> {
        self.insert_claim(user, agent_id, source, record).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ackgate_common::proto::LoginGrant;

    use super::*;
    use crate::agents::{Directory as _, LoginFailure};
    use crate::store::tests::{attempt, login, logins, store};

    /// An agent varying user names (or fingerprints) fills only its own
    /// share of the pending attempts: beyond it, new pairs are counted and
    /// not kept, while known pairs and other agents still count.
    #[test]
    fn attempts_are_bounded_per_agent() {
        let s = store();
        fn attempt_of(user: &str, agent_id: u32) -> Attempt<'_> {
            Attempt {
                user,
                machine: [7; 32],
                install_serial: "s",
                agent_id,
                source: "10.0.0.2",
                service: "web",
                reason: "unknown user",
                proven: false,
            }
        }
        let names: Vec<String> = (0..=ATTEMPTS_PER_AGENT).map(|i| format!("user{i}")).collect();
        for name in &names[..ATTEMPTS_PER_AGENT] {
            assert!(s.record_attempt(&attempt_of(name, 1)).expect("record"), "{name} within the agent's share");
        }
        assert!(!s.record_attempt(&attempt_of(&names[ATTEMPTS_PER_AGENT], 1)).expect("record"), "one too many");
        assert_eq!(s.attempts_not_recorded(), 1, "the attempt not kept is counted");
        assert!(s.record_attempt(&attempt_of(&names[0], 1)).expect("record"), "a known pair still counts again");
        assert!(s.record_attempt(&attempt_of("other", 2)).expect("record"), "another agent has its own share");
        assert_eq!(s.pending().expect("pending").len(), ATTEMPTS_PER_AGENT + 1, "what users pending shows");
    }

    #[test]
    fn a_known_user_on_a_new_machine_is_approved_with_that_machine() {
        let s = store();
        s.add_user("alice", "pw", &["staff".into()]).expect("add");
        assert!(matches!(s.add_user("alice", "x", &[]), Err(StoreError::UserExists(_))));
        assert!(!s.standing("alice", &[1; 32], 1).expect("standing").machine_approved);
        s.record_attempt(&attempt("alice", [1; 32], true)).expect("record");
        s.record_attempt(&attempt("alice", [1; 32], false)).expect("record again");
        s.record_attempt(&attempt("alice", [3; 32], false)).expect("record an unproven machine");
        let pending = s.pending().expect("pending");
        assert_eq!(pending.len(), 2, "one entry per user and machine: {pending:?}");
        let first = pending.iter().find(|p| p.machine.starts_with("0101")).expect("machine 1");
        assert_eq!((first.count, first.new_user, first.proven), (2, false, true), "a proven machine stays proven");
        assert_eq!(s.approve("alice", None, &[]).expect("approve"), 1, "only the proven machine is bound");
        assert!(!s.standing("alice", &[3; 32], 1).expect("standing").machine_approved, "no proof, no binding");
        let st = s.standing("alice", &[1; 32], 1).expect("standing");
        assert!(st.known && st.machine_approved && !st.revoked);
        assert_eq!(st.groups, vec!["staff".to_owned()]);
        let other_agent = s.standing("alice", &[1; 32], 2).expect("standing");
        assert!(!other_agent.machine_approved, "the approval binds the agent, not only the fingerprint");
        assert!(s.pending().expect("pending").is_empty());
        assert!(matches!(s.approve("alice", None, &[]), Err(StoreError::NothingPending(_))));
        assert!(matches!(s.approve("alice", Some(1), &[]), Err(StoreError::ClaimOnValidUser(_))));
        assert_eq!(s.approved_machines("alice").expect("machines"), vec![[1; 32]]);
        assert_eq!(s.revoke_machine("alice", "0101").expect("revoke machine"), 1);
        assert!(s.approved_machines("alice").expect("machines").is_empty(), "a revoked machine is not approved");
        assert!(s.approved_machines("nobody").expect("machines").is_empty());
    }

    #[test]
    fn failed_logins_are_audited_and_a_lock_holds_until_unlocked() {
        let s = store();
        s.add_user("erin", "pw", &[]).expect("add");
        let failure = LoginFailure { user: "erin", agent_id: 42, source: "10.0.0.2" };
        s.record_login_failure(&failure, false);
        assert!(!s.login_locked("erin"), "a failure below the threshold does not lock");
        s.record_login_failure(&failure, true);
        assert!(s.login_locked("erin"));
        assert!(s.users().expect("users")[0].locked, "users list shows the lock");
        let audited = s.login_failures(0).expect("audit");
        assert_eq!(audited.len(), 2, "one audit row per failure: {audited:?}");
        assert!(audited[0].contains("erin") && audited[0].contains("agent 42") && audited[0].contains("10.0.0.2"));
        assert!(s.unlock_user("erin").expect("unlock"));
        assert!(!s.login_locked("erin"));
        assert!(!s.unlock_user("erin").expect("unlock again"), "unlocking an unlocked user says so");
    }

    #[test]
    fn claims_are_per_agent_and_an_approval_takes_one_claim_and_its_proven_machines() {
        let s = Arc::new(store());
        let l = logins(&s);
        let bobs = login(&l, "bob", "chosen", 1);
        let LoginGrant::Claim(bobs) = bobs else { panic!("an unknown name's first login is a claim: {bobs:?}") };
        assert_eq!(login(&l, "bob", "other", 1), LoginGrant::Refused, "the agent's claim holds");
        assert_eq!(login(&l, "bob", "chosen", 1), LoginGrant::Claim(bobs));
        let LoginGrant::Claim(mallorys) = login(&l, "bob", "mallory", 2) else {
            panic!("another agent's claim on the name is its own")
        };
        assert_ne!(bobs, mallorys, "a claim never overwrites another");
        assert_eq!(login(&l, "bob", "chosen", 1), LoginGrant::Claim(bobs), "and leaves the first intact");
        s.record_claim_machine(bobs, &[2; 32], 1, "web").expect("bob's machine proved his claim");
        s.record_claim_machine(mallorys, &[6; 32], 2, "web").expect("mallory's machine proved hers");
        s.record_attempt(&attempt("bob", [9; 32], false)).expect("an attempt without a proof");
        let pending = s.pending().expect("pending");
        assert_eq!(pending.iter().filter(|p| p.claim.is_some()).count(), 2, "both claims are listed: {pending:?}");
        assert!(matches!(s.approve("bob", None, &[]), Err(StoreError::ManyClaims { .. })), "two claims: pick one");
        assert!(matches!(s.approve("bob", Some(999), &[]), Err(StoreError::NoSuchClaim { .. })));
        assert_eq!(s.approve("bob", Some(bobs), &["eng".into()]).expect("approve"), 1);
        assert_eq!(login(&l, "bob", "chosen", 3), LoginGrant::User, "the claim's password is now bob's");
        assert_eq!(login(&l, "bob", "mallory", 2), LoginGrant::Refused, "the other claim is void");
        assert_eq!(s.approved_machines("bob").expect("machines"), vec![[2; 32]], "only bob's proven machine");
        assert!(s.claim_approved_as(bobs, "bob").expect("claim"), "sessions under the approved claim are bob's");
        assert!(!s.claim_approved_as(mallorys, "bob").expect("claim"), "the void claim proves nothing");
        assert!(s.pending().expect("pending").is_empty(), "the name's claims and attempts are settled");
        s.revoke_user("bob").expect("revoke");
        assert!(s.standing("bob", &[2; 32], 1).expect("standing").revoked);
        assert!(s.approved_machines("bob").expect("machines").is_empty(), "a revoked user has no approved machine");
        assert!(matches!(s.revoke_user("carol"), Err(StoreError::NoSuchUser(_))));
        assert!(matches!(login(&l, "carol", "guess", 1), LoginGrant::Claim(_)));
        s.add_user("carol", "pw", &[]).expect("add carol");
        assert!(s.pending().expect("pending").is_empty(), "adding the user voids the claims on the name");
    }

    #[test]
    fn an_agent_holds_a_bounded_number_of_claims() {
        let s = Arc::new(store());
        let l = logins(&s);
        for n in 0..CLAIMS_PER_AGENT {
            let grant = login(&l, &format!("name{n}"), "pw", 1);
            assert!(matches!(grant, LoginGrant::Claim(_)), "claim {n}: {grant:?}");
        }
        assert_eq!(login(&l, "one-more", "pw", 1), LoginGrant::Refused);
        assert!(matches!(login(&l, "one-more", "pw", 2), LoginGrant::Claim(_)), "other agents are not held");
    }
}
