//! Per-CPU reason counters as userspace sees them: totals over all CPUs,
//! labelled (feature `user`). Used for the gate's and the stamper's maps.

extern crate std;
use std::vec::Vec;

use aya::maps::{MapData, MapError, PerCpuArray};

/// Totals over all CPUs, indexed by reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    labels: &'static [&'static str],
    values: Vec<u64>,
}

impl Counters {
    /// Reads one total per label from `map`.
    pub fn read<T: core::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, u64>,
        labels: &'static [&'static str],
    ) -> Result<Self, MapError> {
        let mut values = Vec::with_capacity(labels.len());
        for i in 0..labels.len() as u32 {
            values.push(map.get(&i, 0)?.iter().sum());
        }
        Ok(Self { labels, values })
    }

    pub fn get(&self, reason: u32) -> u64 {
        self.values.get(reason as usize).copied().unwrap_or(0)
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let values = self.values.iter().enumerate().map(|(i, v)| v.saturating_sub(earlier.get(i as u32))).collect();
        Counters { labels: self.labels, values }
    }

    /// `(label, count)` for every reason.
    pub fn labelled(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.labels.iter().enumerate().map(|(i, l)| (*l, self.get(i as u32)))
    }
}
