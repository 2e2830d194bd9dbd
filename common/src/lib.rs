//! Shared between the ackgate kernel programs (gateway XDP gate, agent TC
//! stamper) and their userspace: map layouts, the capability option, the
//! handshake MAC, and the packet parsers. Everything here is `no_std` and
//! free of allocation so the very same code runs under the BPF verifier and
//! in host unit/property tests.
#![no_std]

pub mod abi;
pub mod csum;
pub mod mac;
pub mod net;
pub mod option;
pub mod reason;
pub mod reply;

#[cfg(feature = "user")]
mod pod;
