//! The control plane's flow state machine (docs/design.md §2 steps 4–6):
//!
//! ```text
//! pending ─▶ profile requested ─▶ validating ─▶ authorized
//!                  │                   │    └──▶ denied
//!                  └──▶ timed out      └──▶ timed out
//! ```
//!
//! Each gate event (a stamped handshake the gate accepted) starts one task
//! that asks the flow's agent for its profile and hands the answer to the
//! validator, each step under its own timeout. Every flow ends in exactly
//! one [`Decision`], which the caller writes into the gate's flow map
//! (authorized, or denied: the service's default response from then on) and
//! the access log. Flows awaiting a decision are bounded overall and per
//! agent; beyond either limit a new flow is denied at once and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackgate_common::abi::{ANY_ACCOUNT, FlowKey, GateEvent};
use ackgate_common::proto::FlowSummary;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::agents::{AgentServer, ProfileError};
use crate::validator::{Decider, ServiceRule, Verdict};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub profile_timeout: Duration,
    /// From the control plane's start, how long a flow whose agent has no
    /// session yet waits for the agent to connect (agents reconnect after a
    /// gateway restart, and the flows the gate held meanwhile are decided
    /// then); afterwards the wait is part of `profile_timeout`.
    pub session_grace: Duration,
    pub validation_timeout: Duration,
    pub max_pending: usize,
    pub max_pending_per_agent: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    Pending,
    ProfileRequested,
    Validating,
    Authorized,
    Denied,
    TimedOut,
}

impl FlowState {
    pub fn label(self) -> &'static str {
        match self {
            FlowState::Pending => "pending",
            FlowState::ProfileRequested => "profile_requested",
            FlowState::Validating => "validating",
            FlowState::Authorized => "authorized",
            FlowState::Denied => "denied",
            FlowState::TimedOut => "timed_out",
        }
    }
}

/// How one flow ended.
#[derive(Clone, Debug)]
pub struct Decision {
    pub event: GateEvent,
    /// Authorized, Denied or TimedOut.
    pub state: FlowState,
    pub reason: String,
    pub service: String,
    pub user: Option<String>,
    /// The local account (uid) on the agent's machine, when the agent
    /// answered and its logins are per account.
    pub account: Option<u32>,
    pub machine: Option<[u8; 32]>,
    /// When the control plane received the gate's event.
    pub received: Instant,
    /// From the gate's event to the decision.
    pub latency: Duration,
    /// Of which: waiting for the agent's profile, and validating it.
    pub profile_time: Duration,
    pub validation_time: Duration,
}

/// Counters of the state machine (since start).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub authorized: u64,
    pub denied: u64,
    pub timed_out: u64,
    /// Refused at once: too many flows awaiting a decision.
    pub overloaded: u64,
}

pub struct ControlPlane {
    server: Arc<AgentServer>,
    validator: Arc<dyn Decider>,
    rules: HashMap<SocketAddr, ServiceRule>,
    settings: Settings,
    inflight: HashMap<FlowKey, u32>,
    per_agent: HashMap<u32, usize>,
    done: mpsc::UnboundedSender<Decision>,
    /// The end of the session grace after start.
    grace_until: tokio::time::Instant,
    pub totals: Totals,
}

impl ControlPlane {
    /// `rules` by VIP and port. Decisions of started flows arrive on the
    /// returned receiver.
    pub fn new(
        server: Arc<AgentServer>,
        validator: Arc<dyn Decider>,
        rules: HashMap<SocketAddr, ServiceRule>,
        settings: Settings,
    ) -> (Self, mpsc::UnboundedReceiver<Decision>) {
        let (done, rx) = mpsc::unbounded_channel();
        let cp = Self {
            server,
            validator,
            rules,
            settings,
            inflight: HashMap::new(),
            per_agent: HashMap::new(),
            done,
            grace_until: tokio::time::Instant::now() + settings.session_grace,
            totals: Totals::default(),
        };
        (cp, rx)
    }

    /// New service rules (a reload); flows already started keep theirs.
    pub fn set_rules(&mut self, rules: HashMap<SocketAddr, ServiceRule>) {
        self.rules = rules;
    }

    /// The longest a decision can take: the session grace, the profile
    /// wait, then validation.
    pub fn longest_decision(&self) -> Duration {
        self.settings.session_grace + self.settings.profile_timeout + self.settings.validation_timeout
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Starts the decision of a newly pending flow. Returns a decision at
    /// once when the flow cannot be started (limits, duplicate event,
    /// unknown service); otherwise it arrives on the receiver.
    pub fn on_event(&mut self, event: GateEvent, received: Instant) -> Option<Decision> {
        let service = event.flow.service_addr();
        let rule = self
            .rules
            .get(&service)
            .cloned()
            .unwrap_or_else(|| ServiceRule { name: service.to_string(), allow_groups: Vec::new() });
        let immediate = |why: &str| Decision {
            event,
            state: FlowState::Denied,
            reason: why.to_owned(),
            service: rule.name.clone(),
            user: None,
            account: None,
            machine: None,
            received,
            latency: received.elapsed(),
            profile_time: Duration::ZERO,
            validation_time: Duration::ZERO,
        };
        if self.inflight.contains_key(&event.flow) {
            return None;
        }
        let agent_load = self.per_agent.get(&event.agent_id).copied().unwrap_or(0);
        if self.inflight.len() >= self.settings.max_pending || agent_load >= self.settings.max_pending_per_agent {
            self.totals.overloaded += 1;
            return Some(immediate("too many flows awaiting a decision"));
        }
        self.inflight.insert(event.flow, event.agent_id);
        *self.per_agent.entry(event.agent_id).or_default() += 1;
        let (server, validator, settings, done, grace_until) =
            (self.server.clone(), self.validator.clone(), self.settings, self.done.clone(), self.grace_until);
        tokio::spawn(async move {
            let d = decide(&server, &validator, rule, event, settings, received, grace_until).await;
            let _ = done.send(d);
        });
        None
    }

    /// Bookkeeping once a decision is applied.
    pub fn finish(&mut self, d: &Decision) {
        match d.state {
            FlowState::Authorized => self.totals.authorized += 1,
            FlowState::TimedOut => self.totals.timed_out += 1,
            _ => self.totals.denied += 1,
        }
        if let Some(agent) = self.inflight.remove(&d.event.flow)
            && let Some(n) = self.per_agent.get_mut(&agent)
        {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(&agent);
            }
        }
    }
}

async fn decide(
    server: &AgentServer,
    validator: &Arc<dyn Decider>,
    rule: ServiceRule,
    event: GateEvent,
    settings: Settings,
    received: Instant,
    grace_until: tokio::time::Instant,
) -> Decision {
    let summary = FlowSummary::of_flow(&event.flow, event.client_isn, event.server_isn);
    let mut d = Decision {
        event,
        state: FlowState::TimedOut,
        reason: String::new(),
        service: rule.name.clone(),
        user: None,
        account: None,
        machine: None,
        received,
        latency: Duration::ZERO,
        profile_time: Duration::ZERO,
        validation_time: Duration::ZERO,
    };
    tracing::debug!(flow = ?summary, state = FlowState::ProfileRequested.label());
    let asked = Instant::now();
    let answer =
        server.request_profile_after_grace(event.agent_id, summary, settings.profile_timeout, grace_until).await;
    d.profile_time = asked.elapsed();
    let outcome = match answer {
        Ok(o) => o,
        // The agent said it never stamped the flow, or that the flow's
        // account has no login, or answered with another install serial
        // than its enrollment's: no profile to decide on, and a denial
        // rather than a timeout.
        Err(e @ (ProfileError::NotStamped(_) | ProfileError::SerialMismatch(_) | ProfileError::NotLoggedIn(_))) => {
            if let ProfileError::NotStamped(agent_id) = e {
                record_key_misuse(server, agent_id, d.event.flow.client_addr().ip(), &rule.name).await;
            }
            d.state = FlowState::Denied;
            d.reason = e.to_string();
            d.latency = received.elapsed();
            return d;
        }
        Err(e @ (ProfileError::Timeout(..) | ProfileError::NoSession(_) | ProfileError::SessionClosed(_))) => {
            d.reason = e.to_string();
            d.latency = received.elapsed();
            return d;
        }
    };
    d.user = Some(outcome.profile.user.clone());
    d.account = Some(outcome.profile.account).filter(|a| *a != ANY_ACCOUNT);
    d.machine = Some(outcome.profile.machine);
    tracing::debug!(flow = ?summary, state = FlowState::Validating.label());
    let source = event.flow.client_addr().to_string();
    let v = validator.clone();
    let validating = Instant::now();
    let check = tokio::task::spawn_blocking(move || v.decide(&outcome, &rule, &source));
    let verdict = tokio::time::timeout(settings.validation_timeout, check).await;
    d.validation_time = validating.elapsed();
    match verdict {
        Err(_) => d.reason = format!("the validator did not decide within {:?}", settings.validation_timeout),
        Ok(Err(e)) => {
            d.state = FlowState::Denied;
            d.reason = format!("validator failed: {e}");
        }
        Ok(Ok(Err(e))) => {
            d.state = FlowState::Denied;
            d.reason = format!("validator: {e}");
        }
        Ok(Ok(Ok(Verdict::Authorized))) => {
            d.state = FlowState::Authorized;
            d.reason = "valid user on an approved machine".into();
        }
        Ok(Ok(Ok(Verdict::Denied { reason, recorded }))) => {
            d.state = FlowState::Denied;
            d.reason = if recorded { format!("{reason} (recorded for approval)") } else { reason };
        }
    }
    d.latency = received.elapsed();
    d
}

/// Records a flow stamped with `agent_id`'s key that the agent never
/// stamped (off the async threads: a store write).
async fn record_key_misuse(server: &AgentServer, agent_id: u32, client: std::net::IpAddr, service: &str) {
    let (directory, service) = (server.directory(), service.to_owned());
    let source = client.to_string();
    let recorded = tokio::task::spawn_blocking(move || directory.record_key_misuse(agent_id, &source, &service)).await;
    if let Err(e) | Ok(Err(e)) = recorded.map_err(|e| e.to_string()) {
        tracing::error!(agent_id, "recording a suspected stolen key: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{MemoryDirectory, ServerConfig};
    use crate::pki::Ca;
    use ackgate_common::abi::EVENT_PENDING;

    fn event(agent_id: u32, n: u32) -> GateEvent {
        let port = (n as u16).to_be_bytes();
        GateEvent {
            kind: EVENT_PENDING,
            agent_id,
            flow: FlowKey::ipv4([10, 0, (n >> 16) as u8, 2], [10, 0, 0, 1], port, 443u16.to_be_bytes()),
            client_isn: n,
            server_isn: n,
            created_ns: 0,
            handshake: Default::default(),
        }
    }

    /// A flood of stamped-but-bogus handshakes from valid agents: flows
    /// awaiting a decision never exceed the limits, the rest are refused at
    /// once and counted, and every started flow still ends in a decision.
    #[tokio::test]
    async fn pending_flows_are_bounded_overall_and_per_agent() {
        let directory = Arc::new(MemoryDirectory::default());
        let server = AgentServer::new(
            Ca::generate().expect("CA"),
            directory.clone(),
            directory.logins(),
            ServerConfig::default(),
        )
        .expect("server");
        let store = crate::store::Store::open(std::path::Path::new(":memory:")).expect("store");
        let validator: Arc<dyn Decider> =
            Arc::new(crate::validator::Validator::new(Arc::new(store)).expect("validator"));
        let settings = Settings {
            profile_timeout: Duration::from_millis(200),
            session_grace: Duration::ZERO,
            validation_timeout: Duration::from_millis(200),
            max_pending: 60,
            max_pending_per_agent: 10,
        };
        let (mut cp, mut decisions) = ControlPlane::new(server, validator, HashMap::new(), settings);
        let mut immediate = 0;
        for n in 0..1000 {
            // One agent floods; nine others send a few each.
            let agent = if n < 900 { 1 } else { 2 + n % 9 };
            if let Some(d) = cp.on_event(event(agent, n), Instant::now()) {
                assert_eq!(d.state, FlowState::Denied);
                cp.finish(&d);
                immediate += 1;
            }
            assert!(cp.inflight() <= 60, "flows awaiting a decision exceeded the overall limit");
            if n == 899 {
                assert_eq!(cp.inflight(), 10, "the flooding agent must be capped at its own limit");
            }
        }
        assert_eq!(cp.inflight(), 60, "the others fill up to the overall limit");
        assert_eq!(cp.totals.overloaded, immediate);
        assert_eq!(immediate, 1000 - cp.inflight() as u64);
        let started = cp.inflight();
        for _ in 0..started {
            let d =
                tokio::time::timeout(Duration::from_secs(5), decisions.recv()).await.expect("decision").expect("open");
            assert_eq!(d.state, FlowState::TimedOut, "no agent session: every started flow times out");
            cp.finish(&d);
        }
        assert_eq!(cp.inflight(), 0);
    }
}
