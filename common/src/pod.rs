//! `aya::Pod` for the map types, userspace only (as aya's integration-common
//! does): the kernel side never needs it.

use crate::abi::{
    AgentIdentity, FlowKey, GateEvent, PendingFlow, ServiceKey, ServicePolicy, SpliceEntry, SpliceKey, StampedFlow,
    SynAckProfile, TargetPolicy, VipInfo, VipKey,
};
use crate::mac::MacKey;

// SAFETY: all are #[repr(C)] integer/byte-array structs with explicit
// padding fields, so every byte is initialised and any bit pattern is valid.
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServicePolicy {}
unsafe impl aya::Pod for VipKey {}
unsafe impl aya::Pod for VipInfo {}
unsafe impl aya::Pod for MacKey {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for PendingFlow {}
unsafe impl aya::Pod for GateEvent {}
unsafe impl aya::Pod for TargetPolicy {}
unsafe impl aya::Pod for AgentIdentity {}
unsafe impl aya::Pod for StampedFlow {}
unsafe impl aya::Pod for SpliceEntry {}
unsafe impl aya::Pod for SpliceKey {}
unsafe impl aya::Pod for SpliceEntry<[u32; 4]> {}
unsafe impl aya::Pod for SpliceKey<[u32; 4]> {}
unsafe impl aya::Pod for SynAckProfile {}

/// Whether a map call failed only because the key was not there. aya
/// reports that as `KeyNotFound` from a lookup but as the syscall's ENOENT
/// from `remove` (`bpf_map_delete_elem`, aya 0.14's maps/hash_map/mod.rs),
/// so removing an absent key must be recognised by both.
pub fn key_absent(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// A removal's result, with an absent key counted as removed.
pub fn absent_is_ok(removed: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match removed {
        Err(e) if key_absent(&e) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::key_absent;
    use aya::maps::MapError;
    use aya::sys::SyscallError;

    #[test]
    fn an_absent_key_is_recognised_from_a_lookup_and_from_a_removal() {
        let removal = |errno| {
            MapError::SyscallError(SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(key_absent(&MapError::KeyNotFound), "a lookup's KeyNotFound");
        assert!(key_absent(&removal(libc::ENOENT)), "a removal's ENOENT");
        assert!(!key_absent(&removal(libc::EPERM)), "EPERM is a real failure");
        assert!(!key_absent(&MapError::InvalidValueSize { size: 1, expected: 2 }), "another error");
    }
}
