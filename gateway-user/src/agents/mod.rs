//! The gateway side of the agents' control channel (docs/design.md §4):
//! enrollment with invites, the mutually authenticated TLS 1.3 sessions,
//! logins (OPAQUE, once per session, relayed to whoever holds the
//! password records) and per-flow profile requests.
//!
//! What the gateway knows about agents, invites and users sits behind
//! [`Directory`]; [`MemoryDirectory`] keeps it in memory.

mod directory;
mod guard;
mod server;
mod verifier;

pub use directory::{
    AgentRecord, CLAIMS_PER_AGENT, Directory, EnrollRefusal, KeyMisuse, LoginFailure, MemoryDirectory, NewAgent,
    login_worker_limit, login_workers, random_agent_id,
};
pub use guard::{LoginGuard, LoginPolicy, MAX_TRACKED, Throttled};
pub use server::{AgentServer, LOGINS_QUEUED, ProfileError, ProfileOutcome, ServerConfig, SessionStats};
