//! `ackgate`: the gateway command line.

use std::path::PathBuf;

use ackgate_gateway::config::{Config, DEFAULT_PIN_DIR};
use ackgate_gateway::counters;
use ackgate_gateway::events::Events;
use ackgate_gateway::gate::Gate;
use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// ackgate gateway: hides TCP services behind a capability check done in the
/// kernel, inside the TCP handshake (XDP SYN cookies + a MAC'd TCP option).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP gate, attach it to the edge interface named in the config,
    /// fill its maps, and run until SIGTERM/SIGINT (then detach cleanly; the
    /// pinned maps stay so a restart keeps live state).
    Run {
        /// TOML configuration file (see README "Configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the gate's verdict counters by reason, read from the pinned maps
    /// of a running gateway.
    Status {
        /// Read the pin directory from this config file.
        #[arg(long, short, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// Pin directory of the running gateway.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print every reason, including those still at zero.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Status { config, pin_dir, all } => {
            let pin_dir = match config {
                Some(path) => Config::from_file(&path)?.gateway.pin_dir,
                None => pin_dir,
            };
            status(pin_dir, all)
        }
    }
}

fn run(config_path: PathBuf) -> Result<()> {
    let config = Config::from_file(&config_path)?;
    let services = config.service_entries()?;
    let mut gate = Gate::load(&config.gateway.pin_dir, config.option_id()).context("loading the XDP gate")?;
    gate.sync_services(&services).context("filling the service map")?;
    for agent in &config.static_agents {
        let key = agent.load_key()?;
        gate.set_agent_key(agent.id, key).with_context(|| format!("loading the key of agent {}", agent.id))?;
    }
    gate.attach(&config.gateway.edge_interface, config.gateway.xdp_mode)?;
    info!(
        interface = %config.gateway.edge_interface,
        mode = ?config.gateway.xdp_mode,
        services = services.len(),
        static_agents = config.static_agents.len(),
        pin_dir = %config.gateway.pin_dir.display(),
        "gate attached"
    );
    let events = Events::take(gate.ebpf_mut()).context("opening the gate event ring buffer")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(serve(events))?;
    // Dropping the gate detaches the program; pinned maps stay.
    drop(gate);
    info!("gate detached");
    Ok(())
}

/// Logs gate events until a termination signal arrives.
async fn serve(events: Events) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // SAFETY: `events` owns the ring buffer fd, and AsyncFd owns `events`
    // until it is dropped, so the fd stays open while registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            ready = ring.readable_mut() => {
                let mut guard = ready.context("event ring buffer")?;
                let events = guard.get_inner_mut();
                let before = events.malformed();
                for ev in events.drain() {
                    let (caddr, cport) = ev.flow.client_v4();
                    let (saddr, sport) = ev.flow.service_v4();
                    info!(
                        agent = ev.agent_id,
                        client = %std::net::SocketAddrV4::new(caddr.into(), cport),
                        service = %std::net::SocketAddrV4::new(saddr.into(), sport),
                        "flow pending: capability valid, awaiting profile check"
                    );
                }
                if events.malformed() != before {
                    warn!(total = events.malformed(), "undecodable gate events (object from another build?)");
                }
                guard.clear_ready();
            }
        }
    }
}

fn status(pin_dir: PathBuf, all: bool) -> Result<()> {
    let counters = counters::from_pin_dir(&pin_dir)?;
    let width = ackgate_common::reason::LABELS.iter().map(|l| l.len()).max().unwrap_or(0);
    let mut shown = 0;
    for (label, n) in counters.labelled() {
        if all || n != 0 {
            println!("{label:width$}  {n}");
            shown += 1;
        }
    }
    if shown == 0 {
        warn!("no packets counted yet (use --all to list every reason)");
    }
    Ok(())
}
