//! Small userspace helpers shared by the gateway and the agent (feature
//! `user`): interface names, the kernel programs' clock, and flow keys as
//! socket addresses.

extern crate std;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::abi::FlowKey;

/// Whether `name` could be a Linux interface name (shorter than IFNAMSIZ,
/// no NUL, slash or whitespace). aya panics on a NUL, and the kernel
/// refuses the rest.
pub fn is_valid_iface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['\0', '/'])
        && !name.contains(char::is_whitespace)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns` (and,
/// a tick behind at most, of `bpf_ktime_get_coarse_ns`), so the age of a
/// map entry the kernel stamped.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl FlowKey {
    /// The client's address and port (IPv4 flows).
    pub fn client_addr(&self) -> SocketAddrV4 {
        let (a, p) = self.client_v4();
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }

    /// The service's VIP and port (IPv4 flows).
    pub fn service_addr(&self) -> SocketAddrV4 {
        let (a, p) = self.service_v4();
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["eth0", "veth-a.10", "a"] {
            assert!(is_valid_iface_name(good), "{good:?} is a valid name");
        }
        for bad in ["", "a/b", "a b", "nul\0", "0123456789abcdef"] {
            assert!(!is_valid_iface_name(bad), "{bad:?} must be refused");
        }
    }
}
