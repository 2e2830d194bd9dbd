//! Per-CPU counters, one per stamping reason.

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
