//! The gate's per-CPU verdict counters, read from a loaded gate or from the
//! pinned map of a running one.

use std::path::Path;

use ackgate_common::abi::MAP_COUNTERS;
pub use ackgate_common::counters::Counters;
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

pub fn from_ebpf(ebpf: &aya::Ebpf) -> Result<Counters, CountersError> {
    let map = ebpf.map(MAP_COUNTERS).ok_or(MapError::InvalidName { name: MAP_COUNTERS.into() })?;
    Ok(Counters::read(&PerCpuArray::try_from(map)?, &reason::LABELS)?)
}

pub fn from_pin_dir(dir: &Path) -> Result<Counters, CountersError> {
    let path = dir.join(MAP_COUNTERS);
    let data =
        MapData::from_pin(&path).map_err(|source| CountersError::Open { path: path.display().to_string(), source })?;
    Ok(Counters::read(&PerCpuArray::try_from(Map::PerCpuArray(data))?, &reason::LABELS)?)
}
