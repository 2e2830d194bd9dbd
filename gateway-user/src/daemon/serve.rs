//! The daemon's event loop: gate events, held segments, decisions, admin
//! requests, enrollments and the splice's timers, until SIGTERM/SIGINT.

use std::time::{Duration, Instant};

use ackgate_common::abi::EVENT_PENDING;
use anyhow::{Context as _, Result};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use super::plane::Plane;
use super::prepare::Prepared;
use crate::census::{self, Censor};
use crate::events::Events;
use crate::gate::Gate;
use crate::page;
use crate::splice::{HeldRing, SpliceSettings};

/// The `page` services' local listeners.
pub(super) struct Responder {
    pub(super) pages: Vec<page::PageService>,
    pub(super) max: usize,
    pub(super) timeouts: page::Timeouts,
    pub(super) counters: std::sync::Arc<page::Counters>,
}

/// Runs until a termination signal: gate events, and with a control plane
/// the agent listener, the flow state machine and enrollment keys.
pub(super) async fn serve(
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
        tokio::spawn(page::serve(listener, p.clone(), responder.max, responder.timeouts, responder.counters.clone()));
        info!(vip = %p.vip, port = p.port, decoy = p.decoy.label(), "page responder up");
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
            let censor = Censor::new(gate.flow_table(), gate.pin_dir());
            let census = censor.census();
            census::spawn(censor, p.census_interval);
            let (plane, decisions, enrollments, admin) =
                Plane::start(p, splice, census, responder.counters.clone()).await?;
            (Some(plane), Some(decisions), Some(enrollments), Some(admin))
        }
        None => (None, None, None, None),
    };
    if let Some(p) = plane.as_mut() {
        // Walks the flow and splice maps and reads the store (flows revoked
        // while the daemon was down): the agent listener already serves, so
        // this thread hands its tasks to the other first.
        tokio::task::block_in_place(|| p.resume(gate));
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
                    p.admin(gate, req, reply);
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
