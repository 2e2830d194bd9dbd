//! Load-time settings, written by userspace into .rodata before load
//! (aya `EbpfLoader::override_global`). The verifier sees frozen .rodata as
//! constants, so these cost nothing per packet. Both programs link these
//! symbols, so the gateway and the agent set them the same way.

use crate::option::{DEFAULT_EXPERIMENT_ID, DEFAULT_OPTION_KIND, OptionId};

#[unsafe(no_mangle)]
static OPTION_KIND: u8 = DEFAULT_OPTION_KIND;
#[unsafe(no_mangle)]
static OPTION_EXID: u16 = DEFAULT_EXPERIMENT_ID;

#[inline(always)]
pub fn option_id() -> OptionId {
    // SAFETY: plain reads of statics; volatile so the compiler does not
    // fold the defaults in before userspace patches them.
    unsafe { OptionId { kind: core::ptr::read_volatile(&OPTION_KIND), exid: core::ptr::read_volatile(&OPTION_EXID) } }
}
