//! The running control plane: decisions written into the gate, revocations
//! that end live flows (also those authorized before a restart), the admin
//! socket's requests and the splice's ended flows in the access log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ackgate_common::abi::{
    EVENT_SPLICED, FLOW_AUTHORIZED, FLOW_DENIED, FLOW_PENDING, FlowKey, FlowOwner, GateEvent, PendingFlow,
    RESPONSE_DROP, RESPONSE_PAGE,
};
use ackgate_common::host::unix_ms;
use anyhow::{Context as _, Result};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::prepare::{Prepared, service_tables};
use crate::access_log::{AccessLog, AccessRecord, FlowEnd};
use crate::admin_socket::{self, AdminReply, AdminRequest, DaemonStatus};
use crate::agents::{AgentServer, ServerConfig};
use crate::census::FlowCensus;
use crate::config::Config;
use crate::control::{ControlPlane, Decision, FlowState};
use crate::flow_table::FlowTable;
use crate::gate::{FlowWrite, Gate, GateError};
use crate::metrics::Metrics;
use crate::owner::{OwnerFilter, OwnerNames};
use crate::splice::{EndReason, Ended, SpliceSettings, Splicer, Target};
use crate::store::Store;
use crate::validator::{Decider, GatewayDirectory, Validator};
use crate::validator_service::RemoteValidator;

/// The running control plane.
pub(super) struct Plane {
    pub(super) cp: ControlPlane,
    /// Recent revocations, for decisions under way when they came (kept as
    /// long as a decision can take).
    revocations: Vec<Revocation>,
    /// The user store, when users live here (not on a remote validator).
    users: Option<Arc<Store>>,
    server: Arc<AgentServer>,
    agent_listen: std::net::SocketAddr,
    started: Instant,
    access_log: Arc<AccessLog>,
    /// The names of flow owners: every user in the store at start, and
    /// every user authorized since (the access log names them without a
    /// store read on the event loop).
    names: OwnerNames,
    targets: HashMap<SocketAddr, Target>,
    metrics: Arc<Metrics>,
    census: Arc<FlowCensus>,
    config_path: PathBuf,
    /// The splice (absent without an internal interface).
    splicer: Option<Splicer>,
    /// The `page` responders' counters.
    page: Arc<crate::page::Counters>,
}

struct Revocation {
    at: Instant,
    whom: Revoked,
}

#[derive(Clone)]
enum Revoked {
    /// A user, or one of their machines (hex fingerprint prefix).
    User(OwnerFilter),
    Agent(u32),
}

impl Revoked {
    /// Whether a flow of `agent_id` authorized for `owner` falls under it.
    fn covers(&self, owner: &FlowOwner, agent_id: u32) -> bool {
        match self {
            Revoked::User(filter) => filter.covers(owner),
            Revoked::Agent(id) => *id == agent_id,
        }
    }
}

type Started = (
    Plane,
    UnboundedReceiver<Decision>,
    UnboundedReceiver<(u32, ackgate_common::mac::MacKey)>,
    tokio::sync::mpsc::Receiver<admin_socket::Pending>,
);

impl Plane {
    /// Starts the agent listener; returns the plane, its decisions and the
    /// keys of agents that enroll from now on.
    pub(super) async fn start(
        p: Prepared,
        splice: Option<SpliceSettings>,
        census: Arc<FlowCensus>,
        page: Arc<crate::page::Counters>,
    ) -> Result<Started> {
        let (admin_tx, admin_rx) = tokio::sync::mpsc::channel(16);
        admin_socket::serve(&p.admin_socket, admin_tx)?;
        let decider: Arc<dyn Decider> = match &p.remote_validator {
            Some((addr, creds)) => {
                info!(validator = %addr, "validating with the remote validator");
                Arc::new(RemoteValidator::new(addr, creds)?)
            }
            None => Arc::new(Validator::new(p.store.clone())?),
        };
        let directory = Arc::new(GatewayDirectory { store: p.store.clone() });
        let config =
            ServerConfig { login: p.login, max_unauthenticated: p.max_unauthenticated, ..ServerConfig::default() };
        let server = AgentServer::new(p.ca, directory, decider.clone(), config)?;
        let enrollments = server.enrollments();
        let listener = tokio::net::TcpListener::bind(p.listen)
            .await
            .with_context(|| format!("listening for agents on {}", p.listen))?;
        info!(listen = %p.listen, "agent listener up");
        tokio::spawn(server.clone().serve(listener));
        let metrics = Arc::new(Metrics::default());
        if let Some(addr) = p.metrics_listen {
            let live = crate::metrics::Live {
                pin_dir: p.pin_dir.clone(),
                server: server.clone(),
                store: p.store.clone(),
                census: census.clone(),
            };
            let m = metrics.clone();
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("serving metrics on {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, m, live).await {
                    warn!("metrics endpoint on {addr}: {e}");
                }
            });
            info!(listen = %addr, "metrics endpoint up");
        }
        let (cp, decisions) = ControlPlane::new(server.clone(), decider, p.rules, p.settings);
        let users = p.remote_validator.is_none().then(|| p.store.clone());
        let names = match users.clone() {
            Some(store) => match tokio::task::spawn_blocking(move || store.user_names()).await {
                Ok(Ok(names)) => names,
                Ok(Err(e)) => {
                    warn!("reading user names for the access log: {e}");
                    Vec::new()
                }
                Err(e) => anyhow::bail!("reading user names: {e}"),
            },
            None => Vec::new(),
        };
        let plane = Self {
            cp,
            revocations: Vec::new(),
            users,
            names: OwnerNames::new(names),
            census,
            server,
            agent_listen: p.listen,
            started: Instant::now(),
            access_log: Arc::new(p.access_log),
            targets: p.targets,
            metrics,
            config_path: p.config_path,
            splicer: splice.map(Splicer::new).transpose().context("starting the splice")?,
            page,
        };
        Ok((plane, decisions, enrollments, admin_rx))
    }

    /// Picks up the pinned flow map a previous run (a restart or a crash)
    /// left: authorized flows revoked meanwhile are ended, pending flows are
    /// decided again (their agents reconnect).
    pub(super) fn resume(&mut self, gate: &mut Gate) {
        if let Some(s) = self.splicer.as_mut() {
            let targets = &self.targets;
            s.resume(gate, |flow| targets.get(&flow.service_addr()).cloned());
            if !s.is_empty() {
                info!(flows = s.len(), "resumed spliced flows left by the previous run");
            }
        }
        self.end_revoked_while_down(gate);
        let flows = match gate.pending_flows() {
            Ok(f) => f,
            Err(e) => {
                warn!("reading the flow map for pending flows: {e}");
                return;
            }
        };
        let mut resumed = 0;
        for (flow, f) in flows.into_iter().filter(|(_, f)| f.state == FLOW_PENDING) {
            resumed += 1;
            if let Some(d) = self.cp.on_event(GateEvent::pending(flow, &f), Instant::now()) {
                self.apply(gate, d);
            }
        }
        if resumed > 0 {
            info!(flows = resumed, "resumed flows left pending by the previous run");
        }
    }

    /// Administrative requests that act on live state. Revocations answer
    /// once their walk of the flow map, off the event loop, is done.
    pub(super) fn admin(&mut self, gate: &mut Gate, req: AdminRequest, reply: oneshot::Sender<AdminReply>) {
        let now = match req {
            AdminRequest::EndFlows { user, machine } => {
                let sweep = self.end_flows(gate, Revoked::User(OwnerFilter::new(&user, machine.as_deref())));
                return sweep.answer(reply, AdminReply::Ended);
            }
            AdminRequest::ForgiveLogins { user } => {
                self.server.forgive_logins(&user);
                AdminReply::Done
            }
            AdminRequest::RevokeAgent { agent_id } => return self.revoke_agent(gate, agent_id, reply),
            AdminRequest::ReloadServices => match self.reload(gate) {
                Ok(reply) => reply,
                Err(e) => AdminReply::Error(format!("{e:#}")),
            },
            AdminRequest::Status => AdminReply::Status(self.status()),
        };
        let _ = reply.send(now);
    }

    /// Re-reads the services: the gate's maps, the rules and the default
    /// responses. `page` responders start with the daemon, so a change in
    /// the set of page services needs a restart.
    fn reload(&mut self, gate: &mut Gate) -> Result<AdminReply> {
        let config = Config::from_file(&self.config_path)?;
        let entries = config.service_entries()?;
        gate.sync_services(&entries)?;
        let (rules, targets) = service_tables(&config)?;
        let pages = |r: &HashMap<SocketAddr, Target>| {
            let mut p: Vec<_> = r.iter().filter(|(_, v)| v.response == RESPONSE_PAGE).map(|(k, _)| *k).collect();
            p.sort();
            p
        };
        let note = (pages(&targets) != pages(&self.targets))
            .then(|| "page services changed: restart `ackgate run` to start or stop their responders".to_owned());
        self.cp.set_rules(rules);
        self.targets = targets;
        info!(services = entries.len(), "services reloaded");
        Ok(AdminReply::Reloaded { services: entries.len(), note })
    }

    fn status(&self) -> DaemonStatus {
        let (totals, stats) = (&self.cp.totals, &self.server.stats);
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        DaemonStatus {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            agent_listen: self.agent_listen.to_string(),
            agents_connected: self.server.connected().len(),
            awaiting_decision: self.cp.inflight(),
            authorized: totals.authorized,
            denied: totals.denied,
            timed_out: totals.timed_out,
            overloaded: totals.overloaded,
            sessions_opened: load(&stats.sessions_opened),
            logins_accepted: load(&stats.logins_accepted),
            logins_refused: load(&stats.logins_refused),
            not_stamped: load(&stats.not_stamped),
            spliced: self.splicer.as_ref().map_or(0, Splicer::len),
            splice_connecting: self.splicer.as_ref().map_or(0, Splicer::connecting),
            splice: self.splicer.as_ref().map(|s| s.totals).unwrap_or_default(),
            flows_evicted: self.census.evicted(),
            page_refused: load(&self.page.refused),
        }
    }

    /// Ends the live flows of a revoked user (on the machines whose
    /// fingerprint starts with `machine`, if given) or agent. Here, on the
    /// event loop: the revocation is noted, so that decisions under way for
    /// it are denied when they arrive, and the splice's flows (held in
    /// memory) end. The authorized flows in the flow map, where flows
    /// authorized before a restart are found too, are left to the returned
    /// sweep, which walks the map off the loop.
    fn end_flows(&mut self, gate: &mut Gate, whom: Revoked) -> Sweep {
        let now = Instant::now();
        let window = self.cp.longest_decision();
        self.revocations.retain(|r| now.duration_since(r.at) <= 2 * window);
        let mut ended_before = 0;
        if let Some(s) = self.splicer.as_mut() {
            let gone = s.end_matching(gate, |owner, agent_id| whom.covers(owner, agent_id));
            ended_before = gone.len();
            for e in &gone {
                self.log_ended(e, None);
            }
        }
        self.revocations.push(Revocation { at: now, whom: whom.clone() });
        let why = match whom {
            Revoked::User(_) => "the user or machine was revoked",
            Revoked::Agent(_) => "the agent was revoked",
        };
        Sweep { ender: self.ender(gate), whom, why, names: self.names.clone(), ended_before }
    }

    /// Revokes an agent on the running gateway: its key leaves the gate,
    /// its session ends, and so do its live flows.
    fn revoke_agent(&mut self, gate: &mut Gate, agent_id: u32, reply: oneshot::Sender<AdminReply>) {
        if let Err(e) = gate.remove_agent_key(agent_id) {
            let _ = reply.send(AdminReply::Error(format!("removing the agent's key from the gate: {e}")));
            return;
        }
        let session_ended = self.server.end_session(agent_id, "this agent was revoked");
        self.end_flows(gate, Revoked::Agent(agent_id)).answer(reply, move |flows_ended| {
            info!(agent_id, session_ended, flows_ended, "agent revoked");
            AdminReply::AgentRevoked { session_ended, flows_ended }
        });
    }

    /// What ends flows in the flow map, on any thread.
    fn ender(&self, gate: &Gate) -> Ender {
        Ender {
            table: gate.flow_table(),
            responses: Arc::new(self.targets.iter().map(|(service, t)| (*service, t.response)).collect()),
            access_log: self.access_log.clone(),
        }
    }

    /// Ends the flows authorized before this start whose user or machine
    /// was revoked meanwhile (with the daemon down, no one told the gate).
    /// Needs the user store, so not with a remote validator.
    fn end_revoked_while_down(&mut self, gate: &mut Gate) {
        let Some(store) = self.users.clone() else { return };
        let authorized: Vec<(FlowKey, PendingFlow)> = match gate.pending_flows() {
            Ok(flows) => flows.into_iter().filter(|(_, f)| f.state == FLOW_AUTHORIZED).collect(),
            Err(e) => return warn!("reading the flow map for authorized flows: {e}"),
        };
        let spliced = self.splicer.as_ref().map(Splicer::owners).unwrap_or_default();
        if authorized.is_empty() && spliced.is_empty() {
            return;
        }
        let names = match store.user_names() {
            Ok(names) => OwnerNames::new(names),
            Err(e) => return warn!("reading the users to check authorized flows: {e}"),
        };
        // Owners whose user or machine is no longer approved. A user whose
        // machines cannot be read keeps their flows: a transient store
        // error must not cut live flows.
        let mut revoked: Vec<(FlowOwner, String)> = Vec::new();
        let mut checked: Vec<FlowOwner> = Vec::new();
        for owner in authorized.iter().map(|(_, f)| f.owner).chain(spliced) {
            if checked.contains(&owner) {
                continue;
            }
            checked.push(owner);
            let user = names.user(&owner).unwrap_or("(no longer in the store)").to_owned();
            match store.approved_machines(&user) {
                Ok(machines) if machines.iter().any(|m| crate::owner::owner(&user, m) == owner) => {}
                Ok(_) => revoked.push((owner, user)),
                Err(e) => warn!("reading {user}'s machines to check an authorized flow: {e}"),
            }
        }
        // Agents revoked meanwhile: their key left the gate at start; their
        // flows go too.
        let mut revoked_agents: Vec<u32> = Vec::new();
        for (_, f) in &authorized {
            if !revoked_agents.contains(&f.agent_id) && matches!(store.agent_revoked(f.agent_id), Ok(Some(true))) {
                revoked_agents.push(f.agent_id);
            }
        }
        const WHY: &str = "the user, machine or agent was revoked while the gateway was down";
        let ender = self.ender(gate);
        let mut ended = 0;
        for (flow, f) in &authorized {
            let user = match revoked.iter().find(|(o, _)| *o == f.owner) {
                Some((_, user)) => Some(user.clone()),
                None if revoked_agents.contains(&f.agent_id) => names.user(&f.owner).map(str::to_owned),
                None => continue,
            };
            match ender.end(flow, f, user.as_deref(), WHY) {
                Ok(()) => ended += 1,
                Err(e) => warn!("ending a flow revoked while the gateway was down: {e}"),
            }
        }
        if let Some(s) = self.splicer.as_mut() {
            let gone = s.end_matching(gate, |o, _| revoked.iter().any(|(r, _)| r == o));
            ended += gone.len();
            for e in &gone {
                self.log_ended(e, Some(WHY));
            }
        }
        if ended > 0 {
            info!(flows = ended, "ended flows whose user or machine was revoked while the gateway was down");
        }
    }

    /// Whether a revocation came after this decision started (its validation
    /// may have read the store before the revocation) and covers its owner.
    fn revoked_meanwhile(&self, d: &Decision, owner: &FlowOwner) -> bool {
        self.revocations.iter().any(|r| r.at >= d.received && r.whom.covers(owner, d.event.agent_id))
    }

    pub(super) fn apply(&mut self, gate: &mut Gate, mut d: Decision) {
        let (state, owner) = match (d.state, &d.user, &d.machine) {
            (FlowState::Authorized, Some(user), Some(machine)) => {
                let owner = crate::owner::owner(user, machine);
                if self.revoked_meanwhile(&d, &owner) {
                    d.state = FlowState::Denied;
                    d.reason = "the user, machine or agent was revoked while the flow was being decided".into();
                    (FLOW_DENIED, FlowOwner::default())
                } else {
                    self.names.learn(user);
                    (FLOW_AUTHORIZED, owner)
                }
            }
            // Every authorization names its user and machine; a flow no
            // revocation could find is never authorized.
            (FlowState::Authorized, ..) => {
                warn!(flow = ?d.event.flow, "an authorization without an owner is written as denied");
                (FLOW_DENIED, FlowOwner::default())
            }
            _ => (FLOW_DENIED, FlowOwner::default()),
        };
        let (mut newer, mut decision, mut reason) = (None, d.state.label(), d.reason.clone());
        match gate.set_flow_state(&d.event, state, owner) {
            Ok(FlowWrite::Written) if state == FLOW_AUTHORIZED => self.splice(gate, &d, owner),
            Ok(FlowWrite::Written) => {
                if let Some(s) = self.splicer.as_mut() {
                    s.discard_held(&d.event.flow);
                }
            }
            Ok(FlowWrite::Gone) => {
                decision = "expired";
                reason = format!("the flow left the flow map before its decision ({})", d.reason);
            }
            Ok(FlowWrite::Replaced(f)) => {
                newer = Some(f);
                decision = "superseded";
                reason = format!("a newer handshake took the 4-tuple before the decision ({})", d.reason);
            }
            Err(e) => warn!("writing a decision into the flow map: {e}"),
        }
        self.access_log.record(&AccessRecord {
            at_unix_ms: unix_ms(),
            client: d.event.flow.client_addr().to_string(),
            service: d.event.flow.service_addr().to_string(),
            service_name: &d.service,
            agent_id: d.event.agent_id,
            user: d.user.as_deref(),
            account: d.account,
            machine: d.machine.map(|m| crate::store::hex(&m)),
            decision,
            reason: &reason,
            latency_ms: d.latency.as_secs_f64() * 1000.0,
            profile_ms: d.profile_time.as_secs_f64() * 1000.0,
            validation_ms: d.validation_time.as_secs_f64() * 1000.0,
            flow_end: None,
        });
        self.metrics.decision(d.state.label(), d.latency, d.validation_time);
        self.cp.finish(&d);
        // A newer handshake took the 4-tuple while this one was decided; its
        // own event found the tuple in flight and was set aside. Decide it
        // now, on its own profile.
        if let Some(f) = newer.filter(|f| f.state == FLOW_PENDING)
            && let Some(d) = self.cp.on_event(GateEvent::pending(d.event.flow, &f), Instant::now())
        {
            self.apply(gate, d);
        }
    }
}

impl Plane {
    /// Opens an authorized flow's connection to its target.
    fn splice(&mut self, gate: &mut Gate, d: &Decision, owner: FlowOwner) {
        let Some(s) = self.splicer.as_mut() else { return };
        let Some(target) = self.targets.get(&d.event.flow.service_addr()) else {
            warn!(flow = ?d.event.flow, "an authorized flow of a service that is gone is not spliced");
            return;
        };
        if let Err(e) = s.start(gate, &d.event, target, owner) {
            // Not spliced: the client gets the service's default response.
            warn!(client = %d.event.flow.client_addr(), target = %target.addr, "splice: {e}");
            if let Err(e) = gate.deny_flow(&d.event.flow) {
                warn!("marking an unspliced flow denied: {e}");
            }
        }
    }

    pub(super) fn on_splice_event(&mut self, gate: &mut Gate, ev: &GateEvent) {
        let Some(s) = self.splicer.as_mut() else { return };
        for e in s.on_event(gate, ev) {
            self.log_ended(&e, None);
        }
        if ev.kind == EVENT_SPLICED {
            self.metrics.spliced();
        }
    }

    pub(super) fn on_held(&mut self, gate: &mut Gate, flow: FlowKey, packet: Vec<u8>) {
        if let Some(s) = self.splicer.as_mut() {
            s.on_held(gate, flow, packet);
        }
    }

    pub(super) fn tick(&mut self, gate: &mut Gate) {
        let Some(s) = self.splicer.as_mut() else { return };
        for e in s.tick(gate, Instant::now()) {
            self.log_ended(&e, None);
        }
    }

    /// The access-log record and metrics of a spliced flow that ended
    /// (`why` replaces the reason's label).
    fn log_ended(&self, e: &Ended, why: Option<&str>) {
        let user = self.names.user(&e.owner).map(str::to_owned);
        self.access_log.record(&AccessRecord {
            at_unix_ms: unix_ms(),
            client: e.client.client_addr().to_string(),
            service: e.client.service_addr().to_string(),
            service_name: &e.service,
            agent_id: e.agent_id,
            user: user.as_deref(),
            account: None,
            machine: (e.owner.machine_tag != 0).then(|| crate::owner::machine_hex(&e.owner)),
            decision: match e.reason {
                EndReason::Revoked => "revoked",
                r if r.never_spliced() => "refused",
                _ => "ended",
            },
            reason: why.unwrap_or(e.reason.label()),
            latency_ms: 0.0,
            profile_ms: 0.0,
            validation_ms: 0.0,
            flow_end: Some(FlowEnd {
                ended: e.reason.label(),
                target: e.target.to_string(),
                to_target: e.to_target,
                to_client: e.to_client,
                duration_ms: e.duration.as_secs_f64() * 1000.0,
            }),
        });
        self.metrics.flow_ended(e.reason.label(), e.to_target.bytes, e.to_client.bytes);
    }
}

/// Ends authorized flows in the flow map: removes each, resets its client
/// unless the service drops, and logs it as revoked.
struct Ender {
    table: FlowTable,
    /// Each service's default response.
    responses: Arc<HashMap<SocketAddr, u8>>,
    access_log: Arc<AccessLog>,
}

impl Ender {
    fn end(&self, flow: &FlowKey, f: &PendingFlow, user: Option<&str>, reason: &str) -> Result<(), GateError> {
        self.table.remove(flow)?;
        let (client, service) = (flow.client_addr(), flow.service_addr());
        let response = self.responses.get(&flow.service_addr()).copied().unwrap_or(RESPONSE_DROP);
        if response != RESPONSE_DROP
            && let Err(e) = crate::rst::reset_client(client, service, f.server_isn)
        {
            warn!(%client, "sending the revoked flow's RST: {e}");
        }
        self.access_log.record(&AccessRecord {
            at_unix_ms: unix_ms(),
            client: client.to_string(),
            service: service.to_string(),
            service_name: "",
            agent_id: f.agent_id,
            user,
            account: None,
            machine: Some(crate::owner::machine_hex(&f.owner)),
            decision: "revoked",
            reason,
            latency_ms: 0.0,
            profile_ms: 0.0,
            validation_ms: 0.0,
            flow_end: None,
        });
        Ok(())
    }
}

/// A revocation's walk of the flow map, on the blocking pool: with a
/// million flows it takes a fraction of a second, which the event loop
/// must not wait for.
struct Sweep {
    ender: Ender,
    whom: Revoked,
    why: &'static str,
    names: OwnerNames,
    /// Flows the event loop ended already (spliced ones).
    ended_before: usize,
}

impl Sweep {
    /// Ends the authorized flows the revocation covers; how many flows it
    /// ended in all. One flow that cannot be removed does not keep the
    /// rest alive.
    fn run(&self) -> Result<usize> {
        let mut covered = Vec::new();
        self.ender.table.scan(|flow, f| {
            if f.state == FLOW_AUTHORIZED && self.whom.covers(&f.owner, f.agent_id) {
                covered.push((*flow, *f));
            }
        })?;
        let (mut ended, mut failed) = (self.ended_before, None);
        for (flow, f) in &covered {
            match self.ender.end(flow, f, self.names.user(&f.owner), self.why) {
                Ok(()) => ended += 1,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => Ok(ended),
            Some(e) => Err(anyhow::anyhow!(
                "ended {ended} of {} live flow(s); removing the others from the gate failed: {e}",
                covered.len() + self.ended_before
            )),
        }
    }

    /// Runs the sweep and then answers the admin request with `done(flows
    /// ended)`.
    fn answer(self, reply: oneshot::Sender<AdminReply>, done: impl FnOnce(usize) -> AdminReply + Send + 'static) {
        tokio::spawn(async move {
            let answer = match tokio::task::spawn_blocking(move || self.run()).await {
                Ok(Ok(ended)) => done(ended),
                Ok(Err(e)) => AdminReply::Error(format!("{e:#}")),
                Err(e) => AdminReply::Error(format!("the revocation's walk of the flow map failed: {e}")),
            };
            let _ = reply.send(answer);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_covers_the_flows_of_its_user_machine_or_agent() {
        let (laptop, desktop) = ([0x11; 32], [0x22; 32]);
        let alice_laptop = crate::owner::owner("alice", &laptop);
        let alice_desktop = crate::owner::owner("alice", &desktop);
        let bob_laptop = crate::owner::owner("bob", &laptop);

        let alice = Revoked::User(OwnerFilter::new("alice", None));
        assert!(alice.covers(&alice_laptop, 1) && alice.covers(&alice_desktop, 2), "every machine, any agent");
        assert!(!alice.covers(&bob_laptop, 1), "another user on the same machine");
        assert!(!alice.covers(&FlowOwner::default(), 1), "a flow not authorized has no owner");

        let desktop_only = Revoked::User(OwnerFilter::new("alice", Some("2222")));
        assert!(desktop_only.covers(&alice_desktop, 1));
        assert!(!desktop_only.covers(&alice_laptop, 1), "her other machine keeps its flows");

        let agent = Revoked::Agent(7);
        assert!(agent.covers(&alice_laptop, 7) && agent.covers(&bob_laptop, 7), "whoever logged in on it");
        assert!(agent.covers(&FlowOwner::default(), 7), "the agent alone decides");
        assert!(!agent.covers(&alice_laptop, 8), "another agent's flow of the same user");
    }
}
