//! Shared between the ackgate kernel programs (gateway XDP gate, agent TC
//! stamper) and their userspace: map layouts, the capability option, the
//! handshake MAC, and the packet parsers. Everything here is `no_std` and
//! free of allocation so the very same code runs under the BPF verifier and
//! in host unit/property tests.
// The control protocol (feature `proto`) is userspace-only and uses std.
#![cfg_attr(not(feature = "proto"), no_std)]

pub mod abi;
pub mod cookie;
pub mod csum;
pub mod icmp;
pub mod mac;
pub mod net;
pub mod option;
pub mod reason;
pub mod reply;
pub mod splice;
pub mod stamp;

#[cfg(feature = "kernel")]
pub mod kernel;

#[cfg(feature = "proto")]
pub mod proto;
#[cfg(feature = "proto")]
pub mod report;

#[cfg(feature = "user")]
pub mod counters;
#[cfg(feature = "user")]
pub mod host;
#[cfg(feature = "user")]
pub mod kernels;
#[cfg(feature = "user")]
pub mod pod;
