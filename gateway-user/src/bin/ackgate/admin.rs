//! The administration commands: they work on the store and the pinned maps
//! directly, so they run whether the daemon is up or not (SQLite's WAL lets
//! both write safely).

use std::io::{BufRead as _, IsTerminal as _};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use ackgate_common::abi::{
    FLOW_AUTHORIZED, FLOW_DENIED, FLOW_PENDING, FlowOwner, SPLICE_ESTABLISHED, SPLICE_F_TO_TARGET, SpliceAddr,
    SpliceEntry, SpliceKey, flow_state_label, last_seen_ago_ns, socket_addr,
};
use ackgate_gateway::admin_socket::{self, AdminReply, AdminRequest, DaemonStatus};
use ackgate_gateway::config::{Config, ControlSection};
use ackgate_gateway::counters;
use ackgate_gateway::gate::Gate;
use ackgate_gateway::owner::{self, OwnerNames};
use ackgate_gateway::pki::Ca;
use ackgate_gateway::store::{AgentEntry, Store};
use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use ackgate_gateway::services_edit::{self, NewService};

use crate::cli::{AgentsCommand, ServicesCommand, UsersCommand};

const SKELETON: &str = r#"# ackgate gateway configuration (README "Configuration" explains every key).

[gateway]
edge_interface = "{EDGE}"        # interface facing clients; the XDP gate attaches here
# internal_interface = "eth1"    # towards the targets; required with [[services]] (the splice)
xdp_mode = "native"              # "native" (driver) or "generic" (skb)
pin_dir = "/sys/fs/bpf/ackgate"  # pinned maps: live flows survive a restart
# forwarding = "redirect"        # spliced segments: XDP redirect, or "kernel" forwarding
# allowed_transit = []           # CIDRs edge traffic may be routed to (default-deny)
# idle_timeout_secs = 3600       # spliced flows idle this long end

[option]                         # the capability TCP option; agents must agree
kind = 253
experiment_id = 0xac47

[control]
state_dir = "{STATE}"            # CA and user store (created by `ackgate init`)
agent_listen = "0.0.0.0:4433"    # agents connect here (TLS 1.3, mutual after enrollment)
# advertise = "gw.example.net:4433"   # what invites tell agents to dial
# access_log = "/var/log/ackgate/access.jsonl"
profile_timeout_ms = 3000        # an agent's time to answer a profile request
validation_timeout_ms = 2000     # the validator's time to decide
max_pending = 10000              # flows awaiting a decision, overall ...
max_pending_per_agent = 256      # ... and per agent
login_backoff_ms = 1000          # after a failed login, the user's and agent's next wait this long (doubling)
login_backoff_max_secs = 300     # ... up to this
login_lockout_after = 10         # consecutive failures that lock a user until `ackgate users unlock` (0: never)

# One block per protected VIP:port.
# [[services]]
# name = "intranet"
# vip = "203.0.113.10"
# port = 443
# target = "10.1.0.20:443"
# default_response = "drop"      # "drop", "reset" or "page"
# stealth = false
# allow_groups = ["staff"]       # empty: every valid user
"#;

fn control(config: &Config) -> Result<&ControlSection> {
    config.control.as_ref().context("the config has no [control] section (see `ackgate init`)")
}

fn open_store(config_path: &Path) -> Result<(Config, Store)> {
    let config = Config::from_file(config_path)?;
    let store = Store::open(&control(&config)?.store_path())?;
    Ok((config, store))
}

pub fn init(config_path: &Path, edge: &str, state_dir: &Path) -> Result<()> {
    if !config_path.exists() {
        let text = SKELETON.replace("{EDGE}", edge).replace("{STATE}", &state_dir.display().to_string());
        std::fs::write(config_path, text).with_context(|| format!("writing {}", config_path.display()))?;
        println!("wrote a config skeleton to {}", config_path.display());
    }
    let config = Config::from_file(config_path)?;
    let c = control(&config)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&c.state_dir)
        .with_context(|| format!("creating {}", c.state_dir.display()))?;
    let ca = match Ca::load(&c.state_dir) {
        Ok(ca) => {
            println!("CA already present in {}", c.state_dir.display());
            ca
        }
        Err(_) => Ca::create(&c.state_dir).context("creating the CA")?,
    };
    Store::open(&c.store_path())?;
    println!("CA fingerprint (SHA-256): {}", ackgate_gateway::store::hex(&ca.fingerprint()));
    println!("user store: {}", c.store_path().display());
    Ok(())
}

pub fn invite(config_path: &Path, note: &str) -> Result<()> {
    let (config, store) = open_store(config_path)?;
    let c = control(&config)?;
    let ca = Ca::load(&c.state_dir).context("loading the CA (run `ackgate init` first)")?;
    let invite =
        store.create_invite(&c.advertised(), ca.fingerprint(), Duration::from_secs(c.invite_ttl_secs), note)?;
    println!("{}", invite.encode());
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask the password on; use --password-stdin");
    }
    rpassword::prompt_password("Password: ").context("reading the password")
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human(value);
    }
    Ok(())
}

pub fn users(config_path: Option<&Path>, store_path: Option<&Path>, command: UsersCommand) -> Result<()> {
    let (config, store) = match (config_path, store_path) {
        (Some(c), _) => {
            let (config, store) = open_store(c)?;
            if control(&config)?.validator.is_some() {
                // Users live in the remote validator's store; the gateway
                // only holds live flows and the login locks.
                return match command {
                    UsersCommand::Revoke { name, machine } => end_live_flows(&config, &name, machine, false),
                    UsersCommand::Unlock { name } => unlock(&config, &store, &name),
                    _ => bail!(
                        "this gateway uses a remote validator: manage users on the validator host \
                         (`ackgate users ... --store FILE`); `users revoke` here ends live flows"
                    ),
                };
            }
            (Some(config), store)
        }
        (None, Some(s)) => (None, Store::open(s)?),
        (None, None) => bail!("--config FILE (or --store FILE) is required"),
    };
    match command {
        UsersCommand::Add { name, groups, password_stdin } => {
            let password = read_password(password_stdin)?;
            if password.is_empty() {
                bail!("empty password");
            }
            store.add_user(&name, &password, &groups)?;
            println!("added {name}");
        }
        UsersCommand::Passwd { name, password_stdin } => {
            let password = read_password(password_stdin)?;
            if password.is_empty() {
                bail!("empty password");
            }
            store.set_password(&name, &password)?;
            println!("password of {name} set");
        }
        UsersCommand::List { json } => print(json, &store.users()?, |users| {
            for u in users {
                let state = if u.revoked { "revoked" } else { "valid" };
                let lock = if u.locked { " LOCKED" } else { "" };
                let outdated = if u.password_outdated { " PASSWORD-OUTDATED (users passwd)" } else { "" };
                println!(
                    "{:<20} {state:<8} groups={} machines={}{lock}{outdated}",
                    u.name,
                    u.groups.join(","),
                    u.machines.len()
                );
            }
        })?,
        UsersCommand::Pending { json } => print(json, &store.pending()?, |pending| {
            for p in pending {
                let who = match (p.claim, p.new_user) {
                    (Some(c), _) => format!("claim {c}"),
                    (None, true) => "new user".to_owned(),
                    (None, false) => "new machine".to_owned(),
                };
                let proven = if p.proven { "proven" } else { "unproven" };
                println!(
                    "{:<20} {who:<11} {proven:<8} agent {} machine={:.16} from {} to {} x{}: {}",
                    p.user, p.agent_id, p.machine, p.source, p.service, p.count, p.reason
                );
            }
        })?,
        UsersCommand::Approve { name, claim, groups } => {
            let machines = store.approve(&name, claim, &groups)?;
            println!("approved {name} ({machines} machine(s) bound)");
        }
        UsersCommand::Revoke { name, machine } => {
            match &machine {
                None => store.revoke_user(&name)?,
                Some(prefix) => {
                    if store.revoke_machine(&name, prefix)? == 0 {
                        bail!("{name} has no approved machine starting with {prefix}");
                    }
                }
            }
            println!("revoked {name}{}", machine.as_ref().map(|m| format!(" on machine {m}…")).unwrap_or_default());
            match &config {
                Some(config) => end_live_flows(config, &name, machine, true)?,
                None => println!("tell the gateway to end live flows with `ackgate users revoke --config`"),
            }
        }
        UsersCommand::Unlock { name } => match &config {
            Some(config) => unlock(config, &store, &name)?,
            None => bail!("login locks live in the gateway's store: `ackgate users unlock NAME --config FILE`"),
        },
        UsersCommand::Show { name, json } => {
            let user = store.user(&name)?.with_context(|| format!("no user named {name:?}"))?;
            print(json, &user, |u| {
                println!("{} ({})", u.name, if u.revoked { "revoked" } else { "valid" });
                println!("groups: {}", u.groups.join(", "));
                for m in &u.machines {
                    println!("machine: {m}");
                }
            })?;
        }
    }
    Ok(())
}

pub fn agents(config_path: &Path, command: AgentsCommand) -> Result<()> {
    let (config, store) = open_store(config_path)?;
    let human = |a: &AgentEntry| {
        let state = if a.revoked { "revoked" } else { "enrolled" };
        let misuse: u64 = a.key_misuse.iter().map(|m| m.count).sum();
        let warning = if misuse > 0 { format!(" SUSPECTED STOLEN KEY ({misuse} flows)") } else { String::new() };
        println!("{:<10} {state:<8} {:<24} enrolled {}{warning}", a.agent_id, a.hostname, a.enrolled_unix);
    };
    match command {
        AgentsCommand::List { json } => print(json, &store.agents()?, |agents| agents.iter().for_each(human))?,
        AgentsCommand::Show { id, json } => print(json, &store.agent(id)?, |a| {
            human(a);
            println!("install serial: {}", a.install_serial);
            println!("certificate: {}", a.certificate.as_deref().unwrap_or("none issued"));
            for m in &a.key_misuse {
                println!(
                    "key used without the agent from {} (to {}) x{}, first {} last {}",
                    m.source, m.service, m.count, m.first_unix, m.last_unix
                );
            }
        })?,
        AgentsCommand::Revoke { id } => {
            store.revoke_agent(id)?;
            println!("revoked agent {id}");
            let socket = control(&config)?.admin_socket.clone();
            if let Some(why) = daemon_down(&socket) {
                println!(
                    "the gateway is not running ({why}): its key leaves the gate and its certificate \
                     opens no session when it starts"
                );
                return Ok(());
            }
            match ask_daemon(&socket, &AdminRequest::RevokeAgent { agent_id: id })? {
                AdminReply::AgentRevoked { session_ended, flows_ended } => println!(
                    "ended {flows_ended} live flow(s){}",
                    if session_ended { " and the agent's session" } else { "" }
                ),
                AdminReply::Error(e) => bail!("the gateway could not apply the revocation: {e}"),
                other => bail!("unexpected reply from the gateway: {other:?}"),
            }
        }
    }
    Ok(())
}

/// Unlocks `user` in the gateway's store, and has a running gateway forget
/// the failures that led to the lock (else the next one would lock again).
fn unlock(config: &Config, store: &Store, user: &str) -> Result<()> {
    let was = store.unlock_user(user)?;
    println!("{}", if was { format!("unlocked {user}") } else { format!("{user} was not locked") });
    let socket = control(config)?.admin_socket.clone();
    if daemon_down(&socket).is_none() {
        match ask_daemon(&socket, &AdminRequest::ForgiveLogins { user: user.to_owned() })? {
            AdminReply::Done => {}
            other => bail!("the gateway did not take the unlock: {other:?}"),
        }
    }
    Ok(())
}

pub fn validator_credentials(config_path: &Path, out: &Path) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let ca = Ca::load(&control(&config)?.state_dir).context("loading the CA (run `ackgate init` first)")?;
    ackgate_gateway::validator_service::write_credentials(&ca, out)?;
    println!("wrote the validator link's certificates to {}", out.display());
    Ok(())
}

#[derive(Serialize)]
struct ServiceRow<'a> {
    name: &'a str,
    vip: String,
    port: u16,
    target: String,
    default_response: &'static str,
    stealth: bool,
    allow_groups: &'a [String],
}

pub fn services(config_path: &Path, command: ServicesCommand) -> Result<()> {
    match command {
        ServicesCommand::List { json } => {
            let config = Config::from_file(config_path)?;
            let rows: Vec<ServiceRow> = config
                .services
                .iter()
                .map(|s| ServiceRow {
                    name: &s.name,
                    vip: s.vip.to_string(),
                    port: s.port,
                    target: s.target.to_string(),
                    default_response: s.default_response.label(),
                    stealth: s.stealth,
                    allow_groups: &s.allow_groups,
                })
                .collect();
            print(json, &rows, |rows| {
                for r in rows {
                    let groups =
                        if r.allow_groups.is_empty() { "any valid user".to_owned() } else { r.allow_groups.join(",") };
                    println!(
                        "{:<16} {}:{} -> {} {}{} ({groups})",
                        r.name,
                        r.vip,
                        r.port,
                        r.target,
                        r.default_response,
                        if r.stealth { " stealth" } else { "" }
                    );
                }
            })
        }
        ServicesCommand::Add { name, vip, port, target, default_response, stealth, allow_groups } => {
            let service = NewService { name: name.clone(), vip, port, target, default_response, stealth, allow_groups };
            services_edit::add(config_path, &service)?;
            println!("added service {name} to {}", config_path.display());
            reload(config_path)
        }
        ServicesCommand::Remove { name } => {
            services_edit::remove(config_path, &name)?;
            println!("removed service {name} from {}", config_path.display());
            reload(config_path)
        }
    }
}

/// Asks the running gateway to apply the config's services.
fn reload(config_path: &Path) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let socket = match &config.control {
        Some(c) if daemon_down(&c.admin_socket).is_none() => c.admin_socket.clone(),
        _ => {
            println!("the gateway is not running (or has no [control]): the change applies when `ackgate run` starts");
            return Ok(());
        }
    };
    match ask_daemon(&socket, &AdminRequest::ReloadServices)? {
        AdminReply::Reloaded { services, note } => {
            println!("the running gateway now protects {services} service(s)");
            if let Some(n) = note {
                println!("note: {n}");
            }
            Ok(())
        }
        AdminReply::Error(e) => bail!("the gateway could not apply the change: {e}"),
        other => bail!("unexpected reply from the gateway: {other:?}"),
    }
}

/// Tells the running gateway to end the live flows of a revoked user.
/// `store_here`: the revocation is in this gateway's own store, so a
/// gateway that is down ends those flows when it starts (with a remote
/// validator it cannot know).
fn end_live_flows(config: &Config, user: &str, machine: Option<String>, store_here: bool) -> Result<()> {
    let socket = control(config)?.admin_socket.clone();
    if let Some(why) = daemon_down(&socket) {
        if store_here {
            println!(
                "the gateway is not running ({why}): the revocation applies to every new flow, \
                 and the live flows it authorized end when it starts"
            );
            return Ok(());
        }
        bail!(
            "the gateway is not running ({why}): flows it authorized stay until they age out; run this again once it runs"
        );
    }
    // Running: every failure from here on is an error, not "down".
    match ask_daemon(&socket, &AdminRequest::EndFlows { user: user.to_owned(), machine })? {
        AdminReply::Ended(n) => println!("ended {n} live flow(s)"),
        AdminReply::Error(e) => bail!("the gateway could not end the live flows: {e}"),
        other => bail!("unexpected reply from the gateway: {other:?}"),
    }
    Ok(())
}

/// Why no daemon listens on `socket` (no socket file, or one left by a
/// crash that nobody accepts on); none when something does.
fn daemon_down(socket: &Path) -> Option<String> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => None,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            Some(format!("{}: {e}", socket.display()))
        }
        Err(_) => None,
    }
}

/// One request to the running daemon over its admin socket.
fn ask_daemon(socket: &Path, req: &AdminRequest) -> Result<AdminReply> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(admin_socket::request(socket, req))
        .with_context(|| format!("asking the running gateway over {}", socket.display()))
}

#[derive(Serialize, Default)]
struct FlowCounts {
    pending: usize,
    authorized: usize,
    denied: usize,
}

#[derive(Serialize)]
struct StatusReport {
    /// Interfaces the gate pinned a link for, each with the XDP program
    /// attached there now (none: the gate is not attached there).
    gate: Vec<GateLink>,
    gate_packets: serde_json::Map<String, serde_json::Value>,
    flows: FlowCounts,
    /// What the `page` responders' table dropped (None: no such table in
    /// this network namespace).
    page_dropped: Option<ackgate_gateway::page::Dropped>,
    /// None: no [control] in the config, or the control plane is not running.
    control_plane: Option<DaemonStatus>,
    /// Why not, when the config has a control plane.
    control_error: Option<String>,
}

#[derive(Serialize)]
struct GateLink {
    interface: String,
    attached: Option<ackgate_gateway::netdev::XdpAttachment>,
}

/// `ackgate status`: the gate's counters and flows from the pinned maps,
/// and the control plane's own view when it is running.
pub fn status(pin_dir: &Path, config: Option<&Config>, all: bool, json: bool) -> Result<()> {
    let counters = counters::from_pin_dir(pin_dir)?;
    let mut flows = FlowCounts::default();
    for (_, f) in Gate::read_flows(pin_dir)? {
        match f.state {
            FLOW_PENDING => flows.pending += 1,
            FLOW_AUTHORIZED => flows.authorized += 1,
            FLOW_DENIED => flows.denied += 1,
            _ => {}
        }
    }
    let socket = config.and_then(|c| c.control.as_ref()).map(|c| c.admin_socket.clone());
    // The gate's own figures are printed whatever the control plane says:
    // after a crash its socket is left behind and nobody answers.
    let (control_plane, control_error) = match &socket {
        Some(socket) => match daemon_down(socket) {
            Some(why) => (None, Some(format!("not running ({why})"))),
            None => match ask_daemon(socket, &AdminRequest::Status) {
                Ok(AdminReply::Status(s)) => (Some(s), None),
                Ok(other) => (None, Some(format!("unexpected reply: {other:?}"))),
                Err(e) => (None, Some(format!("not answering: {e:#}"))),
            },
        },
        None => (None, None),
    };
    let gate_packets = counters.labelled().map(|(l, n)| (l.to_owned(), n.into())).collect();
    let gate =
        Gate::attachments(pin_dir).into_iter().map(|(interface, attached)| GateLink { interface, attached }).collect();
    let page_dropped = ackgate_gateway::page::dropped();
    let report = StatusReport { gate, gate_packets, flows, page_dropped, control_plane, control_error };
    print(json, &report, |r| {
        if r.gate.is_empty() {
            println!("gate: not attached (pinned maps in {} from an earlier run)", pin_dir.display());
        }
        for link in &r.gate {
            match &link.attached {
                Some(a) => println!("gate: attached: {a}"),
                None => println!(
                    "gate: not attached to {} (its pinned link is left from a run that is gone)",
                    link.interface
                ),
            }
        }
        println!("gate packets by verdict reason:");
        let width = ackgate_common::reason::LABELS.iter().map(|l| l.len()).max().unwrap_or(0);
        let shown: Vec<_> = counters.labelled().filter(|(_, n)| all || *n != 0).collect();
        for (label, n) in &shown {
            println!("  {label:width$}  {n}");
        }
        if shown.is_empty() {
            println!("  none counted yet (--all lists every reason)");
        }
        let f = &r.flows;
        println!("flows in the gate: {} pending, {} authorized, {} denied", f.pending, f.authorized, f.denied);
        if let Some(d) = r.page_dropped {
            println!(
                "page responders: dropped {} segments that came while their flow's handshake with the responder \
                 was under way, {} that a real server would not have sent",
                d.early_segments, d.stray_segments
            );
        }
        match (&r.control_plane, &socket) {
            (None, Some(_)) => println!("control plane: {}", r.control_error.as_deref().unwrap_or_default()),
            (Some(d), _) => {
                println!(
                    "control plane: pid {}, up {} s, agents on {}: {} connected",
                    d.pid, d.uptime_secs, d.agent_listen, d.agents_connected
                );
                println!(
                    "  decisions: {} authorized, {} denied, {} timed out, {} overloaded; {} awaiting one",
                    d.authorized, d.denied, d.timed_out, d.overloaded, d.awaiting_decision
                );
                println!(
                    "  agent sessions opened: {}; logins: {} accepted, {} refused",
                    d.sessions_opened, d.logins_accepted, d.logins_refused
                );
                if d.not_stamped > 0 {
                    println!(
                        "  SUSPECTED STOLEN KEYS: {} flows stamped with an agent's key that the agent never stamped \
                         (`ackgate agents list`)",
                        d.not_stamped
                    );
                }
                if d.flows_evicted > 0 {
                    println!(
                        "  FLOW MAP FULL: {} flows evicted since start (raise gateway.max_flows)",
                        d.flows_evicted
                    );
                }
                if d.page_refused > 0 {
                    println!(
                        "  page responders: {} connections closed at once (page_max_connections were being served)",
                        d.page_refused
                    );
                }
                let t = &d.splice;
                println!(
                    "  splice: {} live ({} connecting); {} started, {} spliced; held segments: {} delivered, {} dropped",
                    d.spliced, d.splice_connecting, t.started, t.spliced, t.held_delivered, t.held_dropped
                );
            }
            (None, None) => println!("control plane: not configured here (pass --config FILE with [control])"),
        }
    })
}

#[derive(Serialize)]
struct FlowRow {
    client: String,
    service: String,
    /// Flows the gate holds (the splice map does not keep them).
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<u32>,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_ms: Option<u64>,
    /// Authorized flows: the user (when this host has the store) and the
    /// first 16 hex digits of the machine fingerprint.
    user: Option<String>,
    machine: Option<String>,
    /// Spliced flows: the target, what went each way, and how long since
    /// the last segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    splice: Option<SpliceRow>,
}

#[derive(Serialize)]
struct SpliceRow {
    target: String,
    to_target: ackgate_gateway::splice::DirectionStats,
    to_client: ackgate_gateway::splice::DirectionStats,
    idle_ms: u64,
}

/// The spliced flows in the pinned splice maps, one row per flow (its
/// client → target entry, with the other direction's figures).
fn spliced_rows(config: &Config, names: &OwnerNames) -> Result<Vec<FlowRow>> {
    let mut rows = spliced_rows_of::<u32>(config, names)?;
    rows.extend(spliced_rows_of::<[u32; 4]>(config, names)?);
    Ok(rows)
}

/// [`spliced_rows`] of one family's map.
fn spliced_rows_of<A: SpliceAddr>(config: &Config, names: &OwnerNames) -> Result<Vec<FlowRow>>
where
    SpliceKey<A>: aya::Pod,
    SpliceEntry<A>: aya::Pod,
{
    let entries: std::collections::HashMap<_, _> =
        Gate::read_splices::<A>(&config.gateway.pin_dir)?.into_iter().collect();
    let now = ackgate_common::host::monotonic_ns();
    let rows = entries
        .iter()
        .filter(|(_, e)| e.flags & SPLICE_F_TO_TARGET != 0)
        .map(|(k, ct)| {
            let tc = entries.get(&ct.peer_key()).copied().unwrap_or_default();
            let target = socket_addr(A::FAMILY, &ct.daddr.words(), ct.dport);
            // The owner's tags are split across the two entries.
            let owner = FlowOwner { user_tag: ct.owner_tag, machine_tag: tc.owner_tag };
            let flow = k.flow();
            FlowRow {
                client: flow.client_addr().to_string(),
                service: flow.service_addr().to_string(),
                agent_id: None,
                state: if ct.state == SPLICE_ESTABLISHED { "spliced" } else { "connecting" },
                age_ms: None,
                user: names.user(&owner).map(str::to_owned),
                machine: (owner.machine_tag != 0).then(|| owner::machine_hex(&owner)),
                splice: Some(SpliceRow {
                    target: target.to_string(),
                    to_target: ackgate_gateway::splice::DirectionStats { packets: ct.packets.into(), bytes: ct.bytes },
                    to_client: ackgate_gateway::splice::DirectionStats { packets: tc.packets.into(), bytes: tc.bytes },
                    idle_ms: if ct.state == SPLICE_ESTABLISHED {
                        last_seen_ago_ns(now, ct.last_seen, tc.last_seen) / 1_000_000
                    } else {
                        0
                    },
                }),
            }
        })
        .collect();
    Ok(rows)
}

/// Names for flow owners from the local store; none with a remote
/// validator or without a control plane (the machine column still shows).
fn owner_names(config: &Config) -> OwnerNames {
    let users = match &config.control {
        Some(c) if c.validator.is_none() && c.store_path().exists() => {
            Store::open(&c.store_path()).and_then(|s| s.user_names()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    OwnerNames::new(users)
}

pub fn flows(config_path: &Path, json: bool) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let names = owner_names(&config);
    let rows: Vec<FlowRow> = Gate::read_flows(&config.gateway.pin_dir)?
        .into_iter()
        .map(|(k, f)| FlowRow {
            user: names.user(&f.owner).map(str::to_owned),
            machine: (f.state == FLOW_AUTHORIZED && f.owner.machine_tag != 0).then(|| owner::machine_hex(&f.owner)),
            client: k.client_addr().to_string(),
            service: k.service_addr().to_string(),
            agent_id: Some(f.agent_id),
            state: flow_state_label(f.state),
            age_ms: Some(ackgate_common::host::monotonic_ns().saturating_sub(f.created_ns) / 1_000_000),
            splice: None,
        })
        .chain(spliced_rows(&config, &names)?)
        .collect();
    print(json, &rows, |rows| {
        for r in rows {
            let owner = match (&r.user, &r.machine) {
                (Some(u), Some(m)) => format!(" {u} on {m}…"),
                (None, Some(m)) => format!(" machine {m}…"),
                _ => String::new(),
            };
            match (&r.splice, r.agent_id, r.age_ms) {
                (Some(s), ..) => println!(
                    "{:<22} -> {:<22} {:<10} -> {} ({} B out, {} B back, idle {} ms){owner}",
                    r.client, r.service, r.state, s.target, s.to_target.bytes, s.to_client.bytes, s.idle_ms
                ),
                (None, Some(agent), Some(age)) => {
                    println!("{:<22} -> {:<22} {:<10} agent {agent}, {age} ms{owner}", r.client, r.service, r.state)
                }
                _ => {}
            }
        }
    })
}
