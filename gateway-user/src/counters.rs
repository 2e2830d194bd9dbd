//! The per-CPU verdict counters, read from a loaded gate or from the pinned
//! map of a running one.

use std::path::Path;

use ackgate_common::abi::MAP_COUNTERS;
use ackgate_common::reason;
use aya::maps::{Map, MapData, MapError, PerCpuArray};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CountersError {
    #[error("cannot open pinned counters {path} (is `ackgate run` running, with the same pin_dir?): {source}")]
    Open { path: String, source: MapError },
    #[error("counters map: {0}")]
    Map(#[from] MapError),
}

/// Totals over all CPUs, indexed by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    pub fn get(&self, reason: u32) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(self.0.iter().enumerate().map(|(i, v)| v.saturating_sub(earlier.get(i as u32))).collect())
    }

    /// `(label, count)` for every reason.
    pub fn labelled(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        reason::LABELS.iter().enumerate().map(|(i, l)| (*l, self.get(i as u32)))
    }

    pub fn read<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Self, CountersError> {
        let mut totals = Vec::with_capacity(reason::COUNT as usize);
        for i in 0..reason::COUNT {
            totals.push(map.get(&i, 0)?.iter().sum());
        }
        Ok(Counters(totals))
    }

    pub fn from_ebpf(ebpf: &aya::Ebpf) -> Result<Self, CountersError> {
        let map = ebpf.map(MAP_COUNTERS).ok_or(MapError::InvalidName { name: MAP_COUNTERS.into() })?;
        Self::read(&PerCpuArray::try_from(map)?)
    }

    pub fn from_pin_dir(dir: &Path) -> Result<Self, CountersError> {
        let path = dir.join(MAP_COUNTERS);
        let data = MapData::from_pin(&path)
            .map_err(|source| CountersError::Open { path: path.display().to_string(), source })?;
        Self::read(&PerCpuArray::try_from(Map::PerCpuArray(data))?)
    }
}
