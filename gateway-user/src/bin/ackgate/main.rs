//! `ackgate`: the gateway command line.

use std::path::PathBuf;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackgate_common::abi::{
    EVENT_PENDING, EVENT_SPLICED, FLOW_AUTHORIZED, FLOW_DENIED, FLOW_PENDING, FlowKey, FlowOwner, GateEvent,
    PendingFlow, RESPONSE_DROP, RESPONSE_PAGE, port_value, v4_bytes,
};
use ackgate_common::host::unix_ms;
use ackgate_gateway::access_log::{AccessLog, AccessRecord, FlowEnd};
use ackgate_gateway::admin_socket::{self, AdminReply, AdminRequest, DaemonStatus};
use ackgate_gateway::agents::{AgentServer, ServerConfig};
use ackgate_gateway::config::Forwarding;
use ackgate_gateway::config::{Config, ControlSection};
use ackgate_gateway::control::{ControlPlane, Decision, FlowState, Settings};
use ackgate_gateway::events::Events;
use ackgate_gateway::gate::{FlowWrite, Gate, GateSettings, XdpMode};
use ackgate_gateway::metrics::Metrics;
use ackgate_gateway::netdev;
use ackgate_gateway::owner::OwnerNames;
use ackgate_gateway::page;
use ackgate_gateway::pki::Ca;
use ackgate_gateway::splice::{EndReason, Ended, HeldRing, SpliceSettings, Splicer, Target};
use ackgate_gateway::store::Store;
use ackgate_gateway::synack::HostTcp;
use ackgate_gateway::validator::{Decider, GatewayDirectory, ServiceRule, Validator};
use ackgate_gateway::validator_service::RemoteValidator;
use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

mod admin;
mod cli;

use cli::{Cli, Command, ValidatorCommand};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("ackgate: {}", ackgate_common::report::error_report(e.as_ref()));
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let daemon =
        matches!(cli.command, Command::Run { .. } | Command::Validator { command: ValidatorCommand::Run { .. } });
    if !daemon {
        ackgate_common::host::end_quietly_when_output_closes();
    }
    match cli.command {
        Command::Run { config } => run(config),
        Command::Init { config, edge_interface, state_dir } => admin::init(&config, &edge_interface, &state_dir),
        Command::Invite { config, note } => admin::invite(&config, &note),
        Command::Users { config, store, command } => admin::users(config.as_deref(), store.as_deref(), command),
        Command::Agents { config, command } => admin::agents(&config.context("--config FILE is required")?, command),
        Command::Validator { command: ValidatorCommand::Run { config } } => validator_run(&config),
        Command::Validator { command: ValidatorCommand::Credentials { config, out } } => {
            admin::validator_credentials(&config, &out)
        }
        Command::Flows { config, json } => admin::flows(&config, json),
        Command::Services { config, command } => {
            admin::services(&config.context("--config FILE is required")?, command)
        }
        Command::Status { config, pin_dir, all, json } => {
            let config = config.map(|path| Config::from_file(&path)).transpose()?;
            let pin_dir = config.as_ref().map_or(pin_dir, |c| c.gateway.pin_dir.clone());
            admin::status(&pin_dir, config.as_ref(), all, json)
        }
    }
}

fn run(config_path: PathBuf) -> Result<()> {
    let config = Config::from_file(&config_path)?;
    // Before anything is touched: a second instance on the same pins
    // would replace the running gate's program and its admin socket.
    let _pins = ackgate_gateway::bpffs::lock_pin_dir(&config.gateway.pin_dir)?;
    if let Some(c) = &config.control {
        ackgate_gateway::store::check_private(Some(&c.state_dir), &c.store_path())?;
    }
    let services = config.service_entries()?;
    let g = &config.gateway;
    let host = HostTcp::read(&g.edge_interface)
        .with_context(|| format!("reading what the kernel's own SYN/ACK looks like on {}", g.edge_interface))?;
    let settings = GateSettings {
        option: config.option_id(),
        max_flows: g.max_flows,
        max_spliced: g.max_spliced,
        synack: host.profile(rand::random()),
        redirect: g.forwarding == Forwarding::Redirect,
        partial_checksums: netdev::may_carry_partial_checksums(&g.edge_interface, g.xdp_mode == XdpMode::Generic),
    };
    let fresh = ackgate_gateway::bpffs::FreshPins::watch(&g.pin_dir);
    let mut gate = Gate::load(&g.pin_dir, &settings).context("loading the XDP gate")?;
    gate.sync_services(&services).context("filling the service map")?;
    let transit = config.transit_prefixes()?;
    gate.sync_transit(&transit).context("filling the allowed-transit map")?;
    let mut agent_keys = Vec::new();
    for agent in &config.static_agents {
        agent_keys.push((agent.id, agent.load_key()?));
    }
    let control = match &config.control {
        Some(c) => {
            let prepared = Prepared::open(c, &config, &config_path)?;
            agent_keys.extend(prepared.store.agent_keys()?);
            Some(prepared)
        }
        None => None,
    };
    gate.sync_agent_keys(&agent_keys).context("filling the agent key map")?;
    let pages = config.page_services()?;
    if !pages.is_empty() {
        page::install_synproxy(&pages).context("installing the page responder's SYNPROXY rules")?;
    }
    let splice = match &g.internal_interface {
        Some(internal) => Some(prepare_splice(&mut gate, &config, internal, settings.synack.wscale)?),
        None => None,
    };
    gate.attach(&config.gateway.edge_interface, config.gateway.xdp_mode)?;
    fresh.keep();
    let transit_text = if transit.is_empty() { "none".to_owned() } else { config.gateway.allowed_transit.join(", ") };
    info!(
        interface = %config.gateway.edge_interface,
        allowed_transit = %transit_text,
        "forwarding from the edge: default-deny, except spliced flows and allowed transit"
    );
    info!(
        interface = %config.gateway.edge_interface,
        mode = ?config.gateway.xdp_mode,
        services = services.len(),
        static_agents = config.static_agents.len(),
        pin_dir = %config.gateway.pin_dir.display(),
        control_plane = control.is_some(),
        "gate attached"
    );
    let events = Events::take(gate.ebpf_mut()).context("opening the gate event ring buffer")?;
    let held = HeldRing::take(gate.ebpf_mut()).context("opening the held-segment ring buffer")?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    let admin_socket = config.control.as_ref().map(|c| c.admin_socket.clone());
    let responder = Responder {
        pages: pages.clone(),
        max: config.gateway.page_max_connections,
        timeout: Duration::from_millis(config.gateway.page_timeout_ms),
    };
    let served = runtime.block_on(serve(&mut gate, events, held, control, splice, responder));
    if !pages.is_empty()
        && let Err(e) = page::remove_synproxy()
    {
        warn!("removing the page responder's rules: {e}");
    }
    if let Some(path) = admin_socket {
        let _ = std::fs::remove_file(path);
    }
    served?;
    // A clean stop takes the gate off the interface; pinned maps stay.
    gate.detach()?;
    drop(gate);
    info!("gate detached");
    Ok(())
}

/// Attaches the internal program and sets up forwarding for the splice.
fn prepare_splice(gate: &mut Gate, config: &Config, internal: &str, gateway_wscale: u8) -> Result<SpliceSettings> {
    let g = &config.gateway;
    gate.attach_internal(internal, g.xdp_mode)?;
    if g.forwarding == Forwarding::Redirect {
        let edge = netdev::index(&g.edge_interface).with_context(|| format!("interface {}", g.edge_interface))?;
        let inside = netdev::index(internal).with_context(|| format!("interface {internal}"))?;
        gate.set_redirect_interfaces(&[edge, inside]).context("filling the redirect map")?;
    } else {
        gate.set_redirect_interfaces(&[]).context("emptying the redirect map")?;
    }
    // The kernel-forwarding path (always with forwarding = "kernel", and
    // for segments redirect cannot deliver) hands the stack target → client
    // segments whose source is the VIP, a local address, arriving on the
    // internal interface: without accept_local, ip_route_input drops them
    // as martians (fib_validate_source, net/ipv4/fib_frontend.c).
    let sysctl = format!("/proc/sys/net/ipv4/conf/{internal}/accept_local");
    std::fs::write(&sysctl, "1").with_context(|| format!("setting {sysctl}"))?;
    let internal_mtu = netdev::mtu(internal).with_context(|| format!("the MTU of {internal}"))?;
    let source_nat = if config.services.iter().any(|s| s.source_nat) {
        let addr = netdev::ipv4_address(internal)
            .with_context(|| format!("the addresses of {internal}"))?
            .with_context(|| format!("source_nat services need an IPv4 address on {internal}"))?;
        reserve_ports(g.source_nat_ports)?;
        // Client → target segments now leave with a local source address;
        // on the kernel-forwarding path they arrive on the edge (see above).
        let sysctl = format!("/proc/sys/net/ipv4/conf/{}/accept_local", g.edge_interface);
        std::fs::write(&sysctl, "1").with_context(|| format!("setting {sysctl}"))?;
        info!(address = %addr, ports = ?g.source_nat_ports, "source NAT for source_nat services");
        Some((addr, g.source_nat_ports))
    } else {
        None
    };
    info!(
        internal = internal,
        forwarding = ?g.forwarding,
        internal_mtu,
        "splice: internal program attached"
    );
    Ok(SpliceSettings {
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        linger: SPLICE_LINGER,
        internal_mtu,
        gateway_wscale,
        source_nat,
    })
}

/// Adds the source-NAT ports to net.ipv4.ip_local_reserved_ports (keeping
/// what is there), so the gateway's own connections never pick one.
fn reserve_ports([first, last]: [u16; 2]) -> Result<()> {
    const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
    let range = format!("{first}-{last}");
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return Ok(());
    }
    let value = if current.is_empty() { range } else { format!("{current},{range}") };
    std::fs::write(SYSCTL, &value).with_context(|| format!("setting {SYSCTL} to {value}"))
}

/// Ended flows keep their entries this long for the last ACK.
const SPLICE_LINGER: Duration = Duration::from_secs(1);

type ServiceTables = (HashMap<([u8; 4], u16), ServiceRule>, HashMap<([u8; 4], u16), Target>);

/// The validator's rules and the splice targets (with default responses),
/// by VIP and port.
fn service_tables(config: &Config) -> Result<ServiceTables> {
    let rules = config
        .services
        .iter()
        .filter_map(|s| match s.vip {
            std::net::IpAddr::V4(v4) => Some((
                (v4.octets(), s.port),
                ServiceRule { name: s.name.clone(), allow_groups: s.allow_groups.clone() },
            )),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let entries = config.service_entries()?;
    let targets = config
        .services
        .iter()
        .zip(&entries)
        .map(|(s, e)| {
            let addr =
                std::net::SocketAddrV4::new(v4_bytes(&e.policy.target_addr).into(), port_value(e.policy.target_port));
            let target = Target {
                service: s.name.clone(),
                addr,
                response: e.policy.default_response,
                idle_timeout: config.idle_timeout(s),
                source_nat: s.source_nat,
            };
            ((v4_bytes(&e.key.addr), port_value(e.key.port)), target)
        })
        .collect();
    Ok((rules, targets))
}

/// What the control plane needs, opened before the gate attaches so that a
/// missing CA or store fails start-up with a clear error.
struct Prepared {
    store: Arc<Store>,
    login: ackgate_gateway::agents::LoginPolicy,
    max_unauthenticated: usize,
    ca: Ca,
    listen: std::net::SocketAddr,
    access_log: AccessLog,
    rules: HashMap<([u8; 4], u16), ServiceRule>,
    /// Targets and default responses by VIP and port.
    targets: HashMap<([u8; 4], u16), Target>,
    settings: Settings,
    admin_socket: std::path::PathBuf,
    metrics_listen: Option<std::net::SocketAddr>,
    pin_dir: std::path::PathBuf,
    remote_validator: Option<(String, std::path::PathBuf)>,
    config_path: PathBuf,
}

impl Prepared {
    fn open(c: &ControlSection, config: &Config, config_path: &std::path::Path) -> Result<Self> {
        let ca = Ca::load(&c.state_dir).context("loading the gateway CA (run `ackgate init` first)")?;
        let store = Arc::new(Store::open(&c.store_path())?);
        let access_log = AccessLog::open(c.access_log.as_deref())
            .with_context(|| format!("opening the access log {:?}", c.access_log))?;
        let (rules, targets) = service_tables(config)?;
        let settings = Settings {
            profile_timeout: Duration::from_millis(c.profile_timeout_ms),
            session_grace: Duration::from_millis(c.session_grace_ms),
            validation_timeout: Duration::from_millis(c.validation_timeout_ms),
            max_pending: c.max_pending,
            max_pending_per_agent: c.max_pending_per_agent,
        };
        Ok(Self {
            store,
            login: c.login_policy(),
            max_unauthenticated: c.max_unauthenticated,
            ca,
            listen: c.agent_listen,
            access_log,
            rules,
            targets,
            settings,
            admin_socket: c.admin_socket.clone(),
            metrics_listen: c.metrics_listen,
            pin_dir: config.gateway.pin_dir.clone(),
            remote_validator: c.validator.clone().zip(c.validator_credentials.clone()),
            config_path: config_path.to_owned(),
        })
    }
}

/// Runs until a termination signal: gate events, and with a control plane
/// the agent listener, the flow state machine and enrollment keys.
/// The `page` services' local listeners.
struct Responder {
    pages: Vec<page::PageService>,
    max: usize,
    timeout: Duration,
}

async fn serve(
    gate: &mut Gate,
    events: Events,
    held: HeldRing,
    control: Option<Prepared>,
    splice: Option<SpliceSettings>,
    responder: Responder,
) -> Result<()> {
    for p in &responder.pages {
        let listener = tokio::net::TcpListener::bind((p.vip, p.port))
            .await
            .with_context(|| format!("page responder on {}:{}", p.vip, p.port))?;
        tokio::spawn(page::serve(listener, p.page.clone(), responder.max, responder.timeout));
        info!(vip = %p.vip, port = p.port, "page responder up");
    }
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // SAFETY: `events` owns the ring buffer fd, and AsyncFd owns `events`
    // until it is dropped, so the fd stays open while registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    // SAFETY: as for `events`.
    let mut held_ring = unsafe { AsyncFd::register_with_interest(held, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the held-segment ring buffer: {e}"))?;
    let mut ticks = tokio::time::interval(SPLICE_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut plane, mut decisions, mut enrollments, mut admin) = match control {
        Some(p) => {
            let (plane, decisions, enrollments, admin) = Plane::start(p, splice).await?;
            (Some(plane), Some(decisions), Some(enrollments), Some(admin))
        }
        None => (None, None, None, None),
    };
    if let Some(p) = plane.as_mut() {
        p.resume(gate);
    }
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            Some(d) = recv(&mut decisions) => {
                if let Some(p) = plane.as_mut() {
                    p.apply(gate, d);
                }
            }
            Some((req, reply)) = recv_bounded(&mut admin) => {
                if let Some(p) = plane.as_mut() {
                    let _ = reply.send(p.admin(gate, req));
                }
            }
            Some((id, key)) = recv(&mut enrollments) => {
                if let Err(e) = gate.set_agent_key(id, key) {
                    warn!(agent = id, "writing the new agent's key into the gate: {e}");
                }
            }
            ready = ring.readable_mut() => {
                let mut guard = ready.context("event ring buffer")?;
                let events = guard.get_inner_mut();
                let before = events.malformed();
                for ev in events.drain() {
                    let Some(p) = plane.as_mut() else { continue };
                    if ev.kind != EVENT_PENDING {
                        p.on_splice_event(gate, &ev);
                        continue;
                    }
                    info!(
                        agent = ev.agent_id,
                        client = %ev.flow.client_addr(),
                        service = %ev.flow.service_addr(),
                        "flow pending: capability valid, awaiting profile check"
                    );
                    if let Some(d) = p.cp.on_event(ev, Instant::now()) {
                        p.apply(gate, d);
                    }
                }
                if events.malformed() != before {
                    warn!(total = events.malformed(), "undecodable gate events (object from another build?)");
                }
                guard.clear_ready();
            }
            ready = held_ring.readable_mut() => {
                let mut guard = ready.context("held-segment ring buffer")?;
                let before = guard.get_inner().malformed();
                let segments = guard.get_inner_mut().drain();
                if guard.get_inner().malformed() != before {
                    warn!(total = guard.get_inner().malformed(), "undecodable held segments (object from another build?)");
                }
                if let Some(p) = plane.as_mut() {
                    for (flow, packet) in segments {
                        p.on_held(gate, flow, packet);
                    }
                }
                guard.clear_ready();
            }
            _ = ticks.tick() => {
                if let Some(p) = plane.as_mut() {
                    p.tick(gate);
                }
            }
        }
    }
}

/// How often the splice's timers run (SYN resent, connect timeouts, idle
/// checks, lingering ends).
const SPLICE_TICK: Duration = Duration::from_millis(100);

/// The next item of an optional channel; never resolves without one.
async fn recv<T>(rx: &mut Option<UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next item of an optional bounded channel; never resolves without one.
async fn recv_bounded<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The running control plane.
struct Plane {
    cp: ControlPlane,
    /// Recent revocations, for decisions under way when they came (kept as
    /// long as a decision can take).
    revocations: Vec<Revocation>,
    /// The user store, when users live here (not on a remote validator).
    users: Option<Arc<Store>>,
    server: Arc<AgentServer>,
    agent_listen: std::net::SocketAddr,
    started: Instant,
    access_log: AccessLog,
    targets: HashMap<([u8; 4], u16), Target>,
    metrics: Arc<Metrics>,
    config_path: PathBuf,
    /// The splice (absent without an internal interface).
    splicer: Option<Splicer>,
}

struct Revocation {
    at: Instant,
    whom: Revoked,
}

enum Revoked {
    /// A user, or one of their machines (hex fingerprint prefix).
    User {
        user: String,
        machine: Option<String>,
    },
    Agent(u32),
}

impl Revoked {
    /// Whether a flow of `agent_id` authorized for `owner` falls under it.
    fn covers(&self, owner: &FlowOwner, agent_id: u32) -> bool {
        match self {
            Revoked::User { user, machine } => ackgate_gateway::owner::belongs_to(owner, user, machine.as_deref()),
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
    async fn start(p: Prepared, splice: Option<SpliceSettings>) -> Result<Started> {
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
            let (m, pin_dir, srv, store) = (metrics.clone(), p.pin_dir.clone(), server.clone(), p.store.clone());
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("serving metrics on {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = ackgate_gateway::metrics::serve(listener, m, pin_dir, srv, store).await {
                    warn!("metrics endpoint on {addr}: {e}");
                }
            });
            info!(listen = %addr, "metrics endpoint up");
        }
        let (cp, decisions) = ControlPlane::new(server.clone(), decider, p.rules, p.settings);
        let plane = Self {
            cp,
            revocations: Vec::new(),
            users: p.remote_validator.is_none().then(|| p.store.clone()),
            server,
            agent_listen: p.listen,
            started: Instant::now(),
            access_log: p.access_log,
            targets: p.targets,
            metrics,
            config_path: p.config_path,
            splicer: splice.map(Splicer::new).transpose().context("starting the splice")?,
        };
        Ok((plane, decisions, enrollments, admin_rx))
    }

    /// Picks up the pinned flow map a previous run (a restart or a crash)
    /// left: authorized flows revoked meanwhile are ended, pending flows are
    /// decided again (their agents reconnect).
    fn resume(&mut self, gate: &mut Gate) {
        if let Some(s) = self.splicer.as_mut() {
            let targets = &self.targets;
            s.resume(gate, |flow| targets.get(&flow.service_v4()).cloned());
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

    /// Administrative requests that act on live state.
    fn admin(&mut self, gate: &mut Gate, req: AdminRequest) -> AdminReply {
        match req {
            AdminRequest::EndFlows { user, machine } => match self.end_flows(gate, Revoked::User { user, machine }) {
                Ok(n) => AdminReply::Ended(n),
                Err(e) => AdminReply::Error(format!("{e:#}")),
            },
            AdminRequest::ForgiveLogins { user } => {
                self.server.forgive_logins(&user);
                AdminReply::Done
            }
            AdminRequest::RevokeAgent { agent_id } => {
                self.revoke_agent(gate, agent_id).unwrap_or_else(|e| AdminReply::Error(format!("{e:#}")))
            }
            AdminRequest::ReloadServices => match self.reload(gate) {
                Ok(reply) => reply,
                Err(e) => AdminReply::Error(format!("{e:#}")),
            },
            AdminRequest::Status => AdminReply::Status(self.status()),
        }
    }

    /// Re-reads the services: the gate's maps, the rules and the default
    /// responses. `page` responders start with the daemon, so a change in
    /// the set of page services needs a restart.
    fn reload(&mut self, gate: &mut Gate) -> Result<AdminReply> {
        let config = Config::from_file(&self.config_path)?;
        let entries = config.service_entries()?;
        gate.sync_services(&entries)?;
        let (rules, targets) = service_tables(&config)?;
        let pages = |r: &HashMap<([u8; 4], u16), Target>| {
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
        }
    }

    /// Ends the authorized flows of a revoked user (on the machines whose
    /// fingerprint starts with `machine`, if given), wherever the gate holds
    /// them: the owner is in the pinned flow map, so flows authorized before
    /// a restart are found too.
    fn end_flows(&mut self, gate: &mut Gate, whom: Revoked) -> Result<usize> {
        // Decisions under way for this user or agent are denied when they
        // arrive.
        let now = Instant::now();
        let window = self.cp.longest_decision();
        self.revocations.retain(|r| now.duration_since(r.at) <= 2 * window);
        // One pass over the map (a revocation is rare; the event loop waits
        // for it). A walk can meet a key twice when the gate changes the
        // map meanwhile: deduplicated by key.
        let owned: HashMap<FlowKey, PendingFlow> = gate
            .pending_flows()
            .context("reading the flow map")?
            .into_iter()
            .filter(|(_, f)| f.state == FLOW_AUTHORIZED && whom.covers(&f.owner, f.agent_id))
            .collect();
        let (mut ended, mut failed) = (0, None);
        if let Some(s) = self.splicer.as_mut() {
            let gone = s.end_matching(gate, |owner, agent_id| whom.covers(owner, agent_id));
            ended += gone.len();
            for e in &gone {
                self.log_ended(e, None);
            }
        }
        let why = match whom {
            Revoked::User { .. } => "the user or machine was revoked",
            Revoked::Agent(_) => "the agent was revoked",
        };
        let names = self.owner_names();
        for (flow, f) in &owned {
            // One flow that cannot be removed must not keep the rest alive.
            match self.end_flow(gate, flow, f, names.user(&f.owner), why) {
                Ok(()) => ended += 1,
                Err(e) => failed = Some(e),
            }
        }
        self.revocations.push(Revocation { at: now, whom });
        match failed {
            None => Ok(ended),
            Some(e) => Err(anyhow::anyhow!(
                "ended {ended} of {} live flow(s); removing the others from the gate failed: {e}",
                owned.len()
            )),
        }
    }

    /// The names of flow owners, as far as this gateway's store knows them.
    fn owner_names(&self) -> OwnerNames {
        let names = self.users.as_ref().map(|s| s.user_names()).transpose().unwrap_or_else(|e| {
            warn!("reading user names for the access log: {e}");
            None
        });
        OwnerNames::new(names.unwrap_or_default())
    }

    /// Revokes an agent on the running gateway: its key leaves the gate,
    /// its session ends, and so do its live flows.
    fn revoke_agent(&mut self, gate: &mut Gate, agent_id: u32) -> Result<AdminReply> {
        gate.remove_agent_key(agent_id).context("removing the agent's key from the gate")?;
        let session_ended = self.server.end_session(agent_id, "this agent was revoked");
        let flows_ended = self.end_flows(gate, Revoked::Agent(agent_id))?;
        info!(agent_id, session_ended, flows_ended, "agent revoked");
        Ok(AdminReply::AgentRevoked { session_ended, flows_ended })
    }

    /// Removes an authorized flow from the gate, resets the client unless
    /// the service drops, and logs it as revoked.
    fn end_flow(
        &mut self,
        gate: &mut Gate,
        flow: &FlowKey,
        f: &PendingFlow,
        user: Option<&str>,
        reason: &str,
    ) -> Result<(), ackgate_gateway::gate::GateError> {
        gate.remove_flow(flow)?;
        let (client, service) = (flow.client_addr(), flow.service_addr());
        let response = self.targets.get(&flow.service_v4()).map_or(RESPONSE_DROP, |t| t.response);
        if response != RESPONSE_DROP
            && let Err(e) = ackgate_gateway::rst::reset_client(client, service, f.server_isn)
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
            machine: Some(ackgate_gateway::owner::machine_hex(&f.owner)),
            decision: "revoked",
            reason,
            latency_ms: 0.0,
            profile_ms: 0.0,
            validation_ms: 0.0,
            flow_end: None,
        });
        Ok(())
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
                Ok(machines) if machines.iter().any(|m| ackgate_gateway::owner::owner(&user, m) == owner) => {}
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
        let mut ended = 0;
        for (flow, f) in &authorized {
            let user = match revoked.iter().find(|(o, _)| *o == f.owner) {
                Some((_, user)) => Some(user.clone()),
                None if revoked_agents.contains(&f.agent_id) => names.user(&f.owner).map(str::to_owned),
                None => continue,
            };
            match self.end_flow(gate, flow, f, user.as_deref(), WHY) {
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

    fn apply(&mut self, gate: &mut Gate, mut d: Decision) {
        let (state, owner) = match (d.state, &d.user, &d.machine) {
            (FlowState::Authorized, Some(user), Some(machine)) => {
                let owner = ackgate_gateway::owner::owner(user, machine);
                if self.revoked_meanwhile(&d, &owner) {
                    d.state = FlowState::Denied;
                    d.reason = "the user, machine or agent was revoked while the flow was being decided".into();
                    (FLOW_DENIED, FlowOwner::default())
                } else {
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
            machine: d.machine.map(|m| ackgate_gateway::store::hex(&m)),
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
        let Some(target) = self.targets.get(&d.event.flow.service_v4()) else {
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

    fn on_splice_event(&mut self, gate: &mut Gate, ev: &GateEvent) {
        let Some(s) = self.splicer.as_mut() else { return };
        for e in s.on_event(gate, ev) {
            self.log_ended(&e, None);
        }
        if ev.kind == EVENT_SPLICED {
            self.metrics.spliced();
        }
    }

    fn on_held(&mut self, gate: &mut Gate, flow: FlowKey, packet: Vec<u8>) {
        if let Some(s) = self.splicer.as_mut() {
            s.on_held(gate, flow, packet);
        }
    }

    fn tick(&mut self, gate: &mut Gate) {
        let Some(s) = self.splicer.as_mut() else { return };
        for e in s.tick(gate, Instant::now()) {
            self.log_ended(&e, None);
        }
    }

    /// The access-log record and metrics of a spliced flow that ended
    /// (`why` replaces the reason's label).
    fn log_ended(&mut self, e: &Ended, why: Option<&str>) {
        let names = self.users.as_ref().and_then(|store| store.user_names().ok()).map(OwnerNames::new);
        let user = names.as_ref().and_then(|n| n.user(&e.owner)).map(str::to_owned);
        self.access_log.record(&AccessRecord {
            at_unix_ms: unix_ms(),
            client: e.client.client_addr().to_string(),
            service: e.client.service_addr().to_string(),
            service_name: &e.service,
            agent_id: e.agent_id,
            user: user.as_deref(),
            account: None,
            machine: (e.owner.machine_tag != 0).then(|| ackgate_gateway::owner::machine_hex(&e.owner)),
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

/// `ackgate validator run`: serves one gateway until SIGTERM/SIGINT.
fn validator_run(config_path: &std::path::Path) -> Result<()> {
    let config = ackgate_gateway::config::ValidatorConfig::from_file(config_path)?;
    let v = &config.validator;
    let store = Arc::new(Store::open(&v.store)?);
    ackgate_gateway::store::check_private(None, &v.store)?;
    let decider: Arc<dyn Decider> = Arc::new(Validator::new(store)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(v.listen)
            .await
            .with_context(|| format!("validator listening on {}", v.listen))?;
        info!(listen = %v.listen, "validator up");
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::select! {
            r = ackgate_gateway::validator_service::serve(listener, &v.credentials, decider) => r.map_err(anyhow::Error::from),
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        }
    })
}
