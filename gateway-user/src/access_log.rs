//! The access log: one JSON line per decision, with its reason.

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub at_unix_ms: u64,
    pub client: String,
    pub service: String,
    pub service_name: &'a str,
    pub agent_id: u32,
    pub user: Option<&'a str>,
    /// The agent machine's local account (uid) the flow is from, when the
    /// agent answered; absent under a machine-wide login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<u32>,
    /// Hex SHA-256 machine fingerprint, when the agent answered.
    pub machine: Option<String>,
    /// "authorized", "denied" or "timed_out".
    pub decision: &'a str,
    pub reason: &'a str,
    /// From the gate's event to the decision ...
    pub latency_ms: f64,
    /// ... of which waiting for the agent's profile, and validating it.
    pub profile_ms: f64,
    pub validation_ms: f64,
    /// For `decision: "ended"`: how a spliced flow ended, what went each
    /// way, and how long it lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_end: Option<FlowEnd>,
}

/// The end of a spliced flow.
#[derive(Debug, Serialize)]
pub struct FlowEnd {
    pub ended: &'static str,
    pub target: String,
    pub to_target: crate::splice::DirectionStats,
    pub to_client: crate::splice::DirectionStats,
    pub duration_ms: f64,
}

pub struct AccessLog {
    file: Option<std::fs::File>,
}

impl AccessLog {
    /// Appends to `path` (created mode 0640); `None`: records go to the
    /// tracing log only.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match path {
            Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(p)?),
            None => None,
        };
        Ok(Self { file })
    }

    /// Shared by the event loop and revocations off it: `&File` writes,
    /// and each record is one `write` on an `O_APPEND` file, so records from
    /// two threads never interleave.
    pub fn record(&self, r: &AccessRecord<'_>) {
        tracing::info!(client = %r.client, service = %r.service, user = ?r.user, decision = r.decision, reason = r.reason, "access");
        if let Some(mut f) = self.file.as_ref() {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            // One write per record: appends of a line are atomic for readers.
            if let Err(e) = f.write_all(&line) {
                tracing::error!("access log: {e}");
            }
        }
    }
}
