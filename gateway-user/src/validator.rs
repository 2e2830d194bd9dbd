//! The validator (DESIGN.md §2 step 6, §6): decides one profile against the
//! user store, and records every failed first attempt as a potential user.
//! Embedded in the gateway (an in-process call).

use std::sync::Arc;

use crate::agents::ProfileOutcome;
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

pub struct Validator {
    store: Arc<Store>,
}

impl Validator {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// `source` is the client's `addr:port` as the gate saw it.
    pub fn validate(
        &self,
        outcome: &ProfileOutcome,
        service: &ServiceRule,
        source: &str,
    ) -> Result<Verdict, StoreError> {
        let p = &outcome.profile;
        let record = |reason: &str| -> Result<Verdict, StoreError> {
            self.store.record_attempt(&Attempt {
                user: &p.user,
                machine: p.machine,
                install_serial: &p.install_serial,
                agent_id: outcome.agent_id,
                source,
                service: &service.name,
                reason,
            })?;
            Ok(Verdict::Denied { reason: reason.to_owned(), recorded: true })
        };
        if p.user.is_empty() {
            return record("nobody is logged in on the agent");
        }
        if !outcome.proof_valid {
            return record("password not verified in this agent session");
        }
        let standing = self.store.standing(&p.user, &p.machine)?;
        if !standing.known {
            return record("unknown user");
        }
        if standing.revoked {
            return Ok(Verdict::Denied { reason: "user revoked".into(), recorded: false });
        }
        if !standing.machine_approved {
            return record("known user on an unapproved machine");
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
