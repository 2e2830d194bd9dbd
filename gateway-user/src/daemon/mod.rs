//! The gateway daemon (`ackgate run`) and the validator service
//! (`ackgate validator run`): start-up, the event loop and the running
//! control plane. The command line only parses its arguments and calls in.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::config::{Config, Forwarding};
use crate::events::Events;
use crate::gate::{Gate, GateSettings, XdpMode};
use crate::page;
use crate::splice::HeldRing;
use crate::store::Store;
use crate::synack::HostTcp;
use crate::validator::{Decider, Validator};

mod plane;
mod prepare;
mod serve;

use prepare::{Prepared, prepare_splice};
use serve::{Responder, serve};

/// `ackgate run`: loads and attaches the gate, serves until SIGTERM/SIGINT,
/// then detaches it (the pinned maps stay).
pub fn run(config_path: &Path) -> Result<()> {
    let config = Config::from_file(config_path)?;
    match ackgate_common::kernels::check_running()? {
        Some(kernel) => info!(%kernel, "kernel supported"),
        None => warn!("cannot tell the kernel's version; loading the gate will tell whether it is supported"),
    }
    // Before anything is touched: a second instance on the same pins
    // would replace the running gate's program and its admin socket.
    let _pins = crate::bpffs::lock_pin_dir(&config.gateway.pin_dir)?;
    if let Some(c) = &config.control {
        crate::store::check_private(Some(&c.state_dir), &c.store_path())?;
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
        partial_checksums: crate::netdev::may_carry_partial_checksums(
            &g.edge_interface,
            g.xdp_mode == XdpMode::Generic,
        ),
    };
    let fresh = crate::bpffs::FreshPins::watch(&g.pin_dir);
    let loading = std::time::Instant::now();
    let mut gate = Gate::load(&g.pin_dir, &settings).context("loading the XDP gate")?;
    // Verification is most of a start, and grows with the kernel's age
    // (docs/kernels.md); RUST_LOG=ackgate_gateway::gate=debug has each
    // program's share.
    info!(took = ?loading.elapsed(), "gate programs verified and loaded");
    gate.sync_services(&services).context("filling the service map")?;
    let transit = config.transit_prefixes()?;
    gate.sync_transit(&transit).context("filling the allowed-transit map")?;
    let mut agent_keys = Vec::new();
    for agent in &config.static_agents {
        agent_keys.push((agent.id, agent.load_key()?));
    }
    let control = match &config.control {
        Some(c) => {
            let prepared = Prepared::open(c, &config, config_path)?;
            agent_keys.extend(prepared.store.agent_keys()?);
            Some(prepared)
        }
        None => None,
    };
    gate.sync_agent_keys(&agent_keys).context("filling the agent key map")?;
    let pages = config.page_services()?;
    let page_timeouts = config.page_timeouts();
    if !pages.is_empty() {
        page::install_synproxy(&pages, page::established_timeout(page_timeouts.longest_wait()))
            .context("installing the page responder's SYNPROXY rules")?;
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
        timeouts: page_timeouts,
        counters: Arc::new(page::Counters::default()),
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

/// `ackgate validator run`: serves one gateway until SIGTERM/SIGINT.
pub fn run_validator(config_path: &Path) -> Result<()> {
    let config = crate::config::ValidatorConfig::from_file(config_path)?;
    let v = &config.validator;
    let store = Arc::new(Store::open(&v.store)?);
    crate::store::check_private(None, &v.store)?;
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
            r = crate::validator_service::serve(listener, &v.credentials, decider) => r.map_err(anyhow::Error::from),
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        }
    })
}
