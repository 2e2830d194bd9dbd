//! The validator (docs/design.md §2 step 6, §6): decides one profile against the
//! user store, and records every failed first attempt as a potential user.
//! Embedded in the gateway (an in-process call).

use std::sync::Arc;

use ackgate_common::proto::{ClaimFinish, LoginFinish, LoginStart, LoginStep};

use crate::agents::ProfileOutcome;
use crate::logins::{LoginAuthority, LoginTable, Logins};
use crate::store::{Attempt, Store, StoreError};

/// What a service allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRule {
    pub name: String,
    /// Empty: every valid user.
    pub allow_groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Authorized,
    /// Why not (for the access log). `recorded`: the attempt is now a
    /// potential-user entry an administrator can approve.
    Denied {
        reason: String,
        recorded: bool,
    },
}

/// What decides for the control plane: the embedded [`Validator`] or a
/// remote validator service (`validator_service::RemoteValidator`). Both
/// run the logins too, as they hold the password records; the profile's
/// proof is checked by the decider, under the login it names. Called off
/// the async threads.
pub trait Decider: LoginAuthority {
    fn decide(&self, outcome: &ProfileOutcome, service: &ServiceRule, source: &str) -> Result<Verdict, String>;
}

pub struct Validator {
    store: Arc<Store>,
    logins: Logins<Store>,
}

impl LoginAuthority for Validator {
    fn begin(&self, start: &LoginStart, agent_id: u32, source: &str) -> LoginStep {
        self.logins.begin(start, agent_id, source)
    }
    fn claim(&self, login: u64, finish: &ClaimFinish) -> LoginStep {
        self.logins.claim(login, finish)
    }
    fn finish(&self, login: u64, finish: &LoginFinish) -> LoginStep {
        self.logins.finish(login, finish)
    }
    fn end(&self, login: u64) {
        self.logins.end(login)
    }
    fn table(&self) -> Option<LoginTable> {
        self.logins.table()
    }
}

impl Decider for Validator {
    fn decide(&self, outcome: &ProfileOutcome, service: &ServiceRule, source: &str) -> Result<Verdict, String> {
        self.validate(outcome, service, source).map_err(|e| e.to_string())
    }
}

/// The gateway's [`crate::agents::Directory`]: agents, invites and login
/// locks in the gateway's own store (logins go to the decider, embedded or
/// remote, which holds the password records).
pub struct GatewayDirectory {
    pub store: Arc<Store>,
}

impl crate::agents::Directory for GatewayDirectory {
    fn enroll(
        &self,
        invite_id: u64,
        secret: &[u8; 32],
        agent: crate::agents::NewAgent,
    ) -> Result<u32, crate::agents::EnrollRefusal> {
        self.store.enroll(invite_id, secret, agent)
    }
    fn bind_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) {
        self.store.bind_certificate(agent_id, cert_sha256)
    }
    fn agent_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<crate::agents::AgentRecord> {
        self.store.agent_by_certificate(cert_sha256)
    }
    fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), String> {
        self.store.record_key_misuse(agent_id, source, service).map_err(|e| e.to_string())
    }
    fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), String> {
        self.store.renew_certificate(agent_id, cert_sha256).map_err(|e| e.to_string())
    }
    fn login_locked(&self, user: &str) -> bool {
        crate::agents::Directory::login_locked(&*self.store, user)
    }
    fn record_login_failure(&self, failure: &crate::agents::LoginFailure<'_>, lock: bool) {
        crate::agents::Directory::record_login_failure(&*self.store, failure, lock)
    }
}

impl Validator {
    /// Fails only on a store whose OPAQUE setup is unreadable.
    pub fn new(store: Arc<Store>) -> Result<Self, StoreError> {
        let logins = Logins::new(store.login_setup()?, store.clone());
        Ok(Self { store, logins })
    }

    /// `source` is the client's `addr:port` as the gate saw it.
    pub fn validate(
        &self,
        outcome: &ProfileOutcome,
        service: &ServiceRule,
        source: &str,
    ) -> Result<Verdict, StoreError> {
        let p = &outcome.profile;
        // `proven`: the attempt's profile carried a valid proof of the
        // user's own password; only such attempts may bind a machine when
        // approved.
        let record = |reason: &str, proven: bool| -> Result<Verdict, StoreError> {
            let recorded = self.store.record_attempt(&Attempt {
                user: &p.user,
                machine: p.machine,
                install_serial: &p.install_serial,
                agent_id: outcome.agent_id,
                source,
                service: &service.name,
                reason,
                proven,
            })?;
            Ok(Verdict::Denied { reason: reason.to_owned(), recorded })
        };
        if p.user.is_empty() {
            return record("nobody is logged in on the agent", false);
        }
        // The proof must verify under the login the agent's session holds,
        // and that login must be the named user's.
        let Some(proven) = outcome.login.and_then(|login| self.logins.prove(login, &outcome.request, p)) else {
            return record("password not verified in this agent session", false);
        };
        let standing = self.store.standing(&p.user, &p.machine, outcome.agent_id)?;
        match (standing.known, proven.claim) {
            (false, Some(claim)) => {
                self.store.record_claim_machine(claim, &p.machine, outcome.agent_id, &service.name)?;
                return Ok(Verdict::Denied { reason: format!("unknown user (claim {claim})"), recorded: true });
            }
            (false, None) => return record("unknown user", false),
            // A login under a claim made before the name became a valid
            // user's proves the user's password only if that claim is the
            // one approved.
            (true, Some(claim)) if !self.store.claim_approved_as(claim, &p.user)? => {
                return record("logged in with another claim's password", false);
            }
            (true, _) => {}
        }
        if standing.revoked {
            return Ok(Verdict::Denied { reason: "user revoked".into(), recorded: false });
        }
        if !standing.machine_approved {
            return record("known user on an unapproved machine (or through another agent)", true);
        }
        if !service.allow_groups.is_empty() && !standing.groups.iter().any(|g| service.allow_groups.contains(g)) {
            return Ok(Verdict::Denied {
                reason: format!("no group of {} may reach {}", p.user, service.name),
                recorded: false,
            });
        }
        Ok(Verdict::Authorized)
    }
}
