//! Online password guessing, limited before any password is checked.
//!
//! - **Backoff.** Each failed login doubles the wait before the next login
//!   of the same user, and separately of the same agent, is checked at all
//!   (from `backoff` up to `backoff_max`); a login that comes sooner is
//!   refused at once, without spending a password check. A success clears
//!   both.
//! - **Lockout.** After `lockout_after` consecutive failures the user is
//!   locked in the store until an administrator runs `users unlock`.
//! - **Fairness.** One user's logins are checked one at a time: a user under
//!   attack occupies at most one of the argon2 workers, whatever the number
//!   of sessions guessing, and other users' logins keep the rest.
//!
//! The failure counts live in memory, bounded by [`MAX_TRACKED`] entries;
//! the lock lives in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackgate_common::host::lock;

/// Users and agents whose failures are remembered at most (each table).
/// Beyond it, entries whose backoff has run out are forgotten first; when
/// none has, the table stops taking new names and counts them.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Wait after the first failure; doubled after each further one.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Consecutive failures of a user that lock it; 0 never locks.
    pub lockout_after: u32,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self { backoff: Duration::from_secs(1), backoff_max: Duration::from_secs(300), lockout_after: 10 }
    }
}

/// Why a login was refused before its password was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    #[error("too many failed logins for this user; try again in {} s", .0.as_secs().max(1))]
    User(Duration),
    #[error("too many failed logins from this machine; try again in {} s", .0.as_secs().max(1))]
    Agent(Duration),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    consecutive: u32,
    retry_at: Instant,
}

#[derive(Default)]
struct Tables {
    users: HashMap<String, Failures>,
    agents: HashMap<u32, Failures>,
    /// One lock per user with a check under way or waiting.
    checking: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Names the full tables could not take.
    untracked: u64,
}

pub struct LoginGuard {
    policy: LoginPolicy,
    tables: Mutex<Tables>,
}

/// What a failed check leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The user's consecutive failures, this one included.
    pub consecutive: u32,
    /// The user reached the lockout threshold with this failure.
    pub lock: bool,
}

impl LoginGuard {
    pub fn new(policy: LoginPolicy) -> Self {
        Self { policy, tables: Mutex::new(Tables::default()) }
    }

    pub fn policy(&self) -> LoginPolicy {
        self.policy
    }

    /// Whether a login of `user` from `agent_id` may be checked now.
    pub fn admit(&self, user: &str, agent_id: u32, now: Instant) -> Result<(), Throttled> {
        let t = lock(&self.tables);
        let wait = |f: Option<&Failures>| f.map_or(Duration::ZERO, |f| f.retry_at.saturating_duration_since(now));
        let agent = wait(t.agents.get(&agent_id));
        if !agent.is_zero() {
            return Err(Throttled::Agent(agent));
        }
        let user = wait(t.users.get(user));
        if !user.is_zero() {
            return Err(Throttled::User(user));
        }
        Ok(())
    }

    /// The lock that serializes `user`'s checks: hold it across the check.
    pub fn user_lock(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut t = lock(&self.tables);
        // Locks nobody holds or waits for (only the map's reference left)
        // go, so the map holds only users with a check under way.
        t.checking.retain(|_, l| Arc::strong_count(l) > 1);
        t.checking.entry(user.to_owned()).or_default().clone()
    }

    /// Records a check's outcome.
    pub fn checked(&self, user: &str, agent_id: u32, ok: bool, now: Instant) -> Option<Failure> {
        let mut t = lock(&self.tables);
        if ok {
            t.users.remove(user);
            t.agents.remove(&agent_id);
            return None;
        }
        let policy = self.policy;
        let consecutive = {
            let Tables { users, untracked, .. } = &mut *t;
            bump(users, user.to_owned(), policy, now, untracked)
        };
        {
            let Tables { agents, untracked, .. } = &mut *t;
            bump(agents, agent_id, policy, now, untracked);
        }
        let lock = policy.lockout_after != 0 && consecutive >= policy.lockout_after;
        Some(Failure { consecutive, lock })
    }

    /// Forgets `user`'s failures (an administrator unlocked it).
    pub fn forgive(&self, user: &str) {
        lock(&self.tables).users.remove(user);
    }

    /// Names not tracked because the tables were full.
    pub fn untracked(&self) -> u64 {
        lock(&self.tables).untracked
    }
}

/// One more failure of `key`; returns its consecutive count.
fn bump<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Failures>,
    key: K,
    policy: LoginPolicy,
    now: Instant,
    untracked: &mut u64,
) -> u32 {
    if !table.contains_key(&key) && table.len() >= MAX_TRACKED {
        table.retain(|_, f| f.retry_at > now);
        if table.len() >= MAX_TRACKED {
            *untracked += 1;
            return 1;
        }
    }
    let f = table.entry(key).or_insert(Failures { consecutive: 0, retry_at: now });
    f.consecutive = f.consecutive.saturating_add(1);
    let doublings = (f.consecutive - 1).min(20);
    f.retry_at = now + policy.backoff.saturating_mul(1 << doublings).min(policy.backoff_max);
    f.consecutive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LoginPolicy {
        LoginPolicy { backoff: Duration::from_secs(1), backoff_max: Duration::from_secs(8), lockout_after: 5 }
    }

    #[test]
    fn failures_double_the_wait_per_user_and_per_agent_and_a_success_clears_them() {
        let g = LoginGuard::new(policy());
        let t0 = Instant::now();
        assert_eq!(g.admit("alice", 1, t0), Ok(()));
        assert_eq!(g.checked("alice", 1, false, t0), Some(Failure { consecutive: 1, lock: false }));
        assert_eq!(g.admit("alice", 1, t0), Err(Throttled::Agent(Duration::from_secs(1))));
        assert_eq!(g.admit("alice", 2, t0), Err(Throttled::User(Duration::from_secs(1))), "another machine, same user");
        assert_eq!(g.admit("bob", 2, t0), Ok(()), "other users on other machines are not slowed");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(g.admit("alice", 1, t1), Ok(()));
        g.checked("alice", 1, false, t1);
        assert_eq!(g.admit("alice", 2, t1), Err(Throttled::User(Duration::from_secs(2))), "the wait doubles");
        let mut t = t1;
        for n in 3..=5 {
            t += Duration::from_secs(8);
            let f = g.checked("alice", 1, false, t).expect("a failure");
            assert_eq!(f, Failure { consecutive: n, lock: n == 5 }, "the fifth failure locks");
        }
        assert_eq!(g.admit("alice", 3, t), Err(Throttled::User(Duration::from_secs(8))), "capped at backoff_max");
        g.checked("alice", 1, true, t + Duration::from_secs(8));
        assert_eq!(g.admit("alice", 1, t + Duration::from_secs(8)), Ok(()), "a success clears user and agent");
    }

    #[test]
    fn the_tables_are_bounded() {
        let g = LoginGuard::new(LoginPolicy { backoff: Duration::from_secs(60), ..policy() });
        let now = Instant::now();
        for n in 0..MAX_TRACKED as u32 + 10 {
            g.checked(&format!("user{n}"), n, false, now);
        }
        assert_eq!(g.untracked(), 20, "ten users and ten agents over the bound, none expired");
        let later = now + Duration::from_secs(120);
        g.checked("late", 0, false, later);
        assert_eq!(g.untracked(), 20, "expired entries make room");
    }

    #[tokio::test]
    async fn one_users_checks_are_serialized() {
        let g = LoginGuard::new(policy());
        let first = g.user_lock("alice");
        let held = first.lock().await;
        let second = g.user_lock("alice");
        assert!(second.try_lock().is_err(), "a second check of alice must wait for the first");
        assert!(g.user_lock("bob").try_lock().is_ok(), "bob's check does not wait for alice's");
        drop(held);
        assert!(second.try_lock().is_ok());
    }
}
