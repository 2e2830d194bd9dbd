//! The ackgate client agent (docs/design.md §1): the TC stamper, enrollment, the
//! gateway session that answers profile requests, and the control socket.

pub mod config;
pub mod control;
pub mod enroll;
pub mod fingerprint;
pub mod renew;
pub mod session;
pub mod stamper;
pub mod state;
pub mod tls;
