//! ackgate gateway userspace: configuration, loading and attaching the XDP
//! gate, its maps, counters and events; the private CA and the agents'
//! enrollment and TLS sessions; the daemon that runs them.

pub mod accept;
pub mod access_log;
pub mod admin_socket;
pub mod agents;
pub mod bpffs;
pub mod census;
pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod events;
pub mod flow_table;
pub mod gate;
pub mod logins;
pub mod metrics;
pub mod netdev;
pub mod owner;
pub mod page;
pub mod pki;
pub mod rst;
pub mod services_edit;
pub mod splice;
pub mod store;
pub mod synack;
pub mod validator;
pub mod validator_service;

/// The XDP gate object, built by build.rs.
pub static GATE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ackgate-gateway"));
