//! Kernel-side building blocks shared by the gateway's XDP gate and the
//! agent's TC stamper (feature `kernel`, built for bpfel-unknown-none): the
//! packet accessors behind [`crate::net::Frame`] and the load-time option
//! settings.

pub mod config;
pub mod frame;
