//! The ackgate client agent.
pub mod stamper;
