//! Flows by state, and flows the map evicted, counted off the event loop.
//!
//! The flow map is an LRU hash: when it is full (or one CPU's share of its
//! free list is used up, `BPF_F_NO_COMMON_LRU`), an insert silently evicts
//! the least recently used entry (kernel/bpf/bpf_lru_list.c). No event
//! tells anyone, so the census infers evictions from an identity that holds
//! between two censuses:
//!
//! ```text
//! keys added by the gate (`ack_pending`) − keys userspace removed − evicted
//!     = change in entries
//! ```
//!
//! Userspace never adds a key (decisions only rewrite an entry that still
//! exists, `FlowTable::update`), and the gate deletes none. A census reads
//! the gate's counter before its walk and the removals after it, so flows
//! added or removed during the walk can only make it count fewer evictions,
//! never more; the next census makes up the difference. The published count
//! never goes down.
//!
//! Metrics and status read the census's atomics: a scrape costs nothing
//! whatever the map holds, and the walk, on the blocking pool, never holds
//! up the event loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ackgate_common::abi::FLOW_STATES;
use ackgate_common::reason;

use crate::counters::CountersError;
use crate::flow_table::FlowTable;
use crate::gate::GateError;

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("reading the gate's counters: {0}")]
    Counters(#[from] CountersError),
    #[error("walking the flow map: {0}")]
    Walk(#[from] GateError),
}

/// The latest census, as metrics and status read it.
#[derive(Debug, Default)]
pub struct FlowCensus {
    /// Entries by state, in the order of [`FLOW_STATES`].
    by_state: [AtomicU64; FLOW_STATES.len()],
    /// Entries the map evicted since the daemon started (a lower bound
    /// that catches up at each census).
    evicted: AtomicU64,
    /// How long the latest walk took, in microseconds.
    walk_us: AtomicU64,
    /// Censuses taken.
    taken: AtomicU64,
}

impl FlowCensus {
    /// `(state label, entries)` for every flow state.
    pub fn by_state(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FLOW_STATES.iter().zip(&self.by_state).map(|((_, name), n)| (*name, n.load(Ordering::Relaxed)))
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn walk_time(&self) -> Duration {
        Duration::from_micros(self.walk_us.load(Ordering::Relaxed))
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

/// Takes censuses of one gate's flow map into a [`FlowCensus`].
pub struct Censor {
    table: FlowTable,
    pin_dir: PathBuf,
    census: Arc<FlowCensus>,
    /// `added − removed − entries` at the first census: what happened
    /// before this daemon (earlier runs' removals, evictions) and does not
    /// count.
    baseline: Option<i128>,
}

impl Censor {
    /// `table` must be the daemon's own (the gate's), so that its removals
    /// count.
    pub fn new(table: FlowTable, pin_dir: &Path) -> Self {
        Self { table, pin_dir: pin_dir.to_owned(), census: Arc::default(), baseline: None }
    }

    pub fn census(&self) -> Arc<FlowCensus> {
        self.census.clone()
    }

    /// Walks the map once and publishes the counts. Blocking: a million
    /// flows take a few hundred batch calls.
    pub fn take(&mut self) -> Result<(), CensusError> {
        let added = crate::counters::from_pin_dir(&self.pin_dir)?.get(reason::ACK_PENDING);
        let started = Instant::now();
        let mut by_state = [0u64; FLOW_STATES.len()];
        let mut entries = 0u64;
        self.table.scan(|_, f| {
            entries += 1;
            if let Some(i) = FLOW_STATES.iter().position(|(s, _)| *s == f.state) {
                by_state[i] += 1;
            }
        })?;
        let walk = started.elapsed();
        let removed = self.table.removed();
        let unexplained = i128::from(added) - i128::from(removed) - i128::from(entries);
        let baseline = *self.baseline.get_or_insert(unexplained);
        let evicted = u64::try_from(unexplained - baseline).unwrap_or(0);
        let c = &self.census;
        for (slot, n) in c.by_state.iter().zip(by_state) {
            slot.store(n, Ordering::Relaxed);
        }
        let before = c.evicted.fetch_max(evicted, Ordering::Relaxed);
        if evicted > before {
            tracing::warn!(
                evicted_since_start = evicted,
                entries,
                "the flow map is full and evicted flows (pending ones are then timed out, authorized ones \
                 lose their hold): raise gateway.max_flows"
            );
        }
        c.walk_us.store(u64::try_from(walk.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        c.taken.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Takes a census every `every` on the blocking pool, until the runtime
/// stops.
pub fn spawn(mut censor: Censor, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let done = tokio::task::spawn_blocking(move || {
                let taken = censor.take();
                (censor, taken)
            })
            .await;
            match done {
                Ok((back, taken)) => {
                    censor = back;
                    if let Err(e) = taken {
                        tracing::warn!("flow census: {e}");
                    }
                }
                Err(e) => return tracing::error!("flow census stopped: {e}"),
            }
        }
    });
}
