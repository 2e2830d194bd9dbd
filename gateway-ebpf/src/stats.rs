//! Per-CPU counters, one per verdict reason.

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(reason: u32) {
    ackgate_common::kernel::count(&COUNTERS, reason);
}
