//! The agent's TOML configuration (one file per host, docs/design.md §7).
//!
//! ```toml
//! # Where enrollment keeps the agent's identity (created mode 0700).
//! state_dir = "/var/lib/ackgate-agent"
//! # Socket of the running agent (`login`, `logout`, `status`).
//! control_socket = "/run/ackgate-agent.sock"
//! # "account" (default): each local account logs in for itself, and only
//! # the sockets of accounts with a login are stamped. "machine": one login,
//! # by root, covers every local account (single-user machines).
//! login_scope = "account"
//! # Interfaces whose egress the stamper watches.
//! interfaces = ["eth0"]
//!
//! [option]                 # must match the gateway's
//! kind = 253
//! experiment_id = 0xac47
//!
//! # Where handshakes get stamped. Without any, the enrolled gateway's
//! # address (every port) is the one target.
//! [[targets]]
//! address = "203.0.113.10"
//! port = 443               # optional; absent = every port
//! stealth = false          # true: stamp SYNs too (stealth services)
//!
//! [session]
//! connect_timeout_secs = 10
//! reconnect_min_ms = 250   # a lost session is retried within this; a failed
//! reconnect_max_secs = 30  # connect backs off, doubling up to this (refused: 1 s)
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ackgate_common::option::{OptionId, OptionSection};
use serde::Deserialize;

use crate::stamper::Target;

pub const DEFAULT_CONFIG: &str = "/etc/ackgate/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    #[serde(default)]
    pub login_scope: LoginScope,
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub option: OptionSection,
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    #[serde(default)]
    pub session: SessionSection,
}

/// Whom a login covers (docs/agent.md, "Local accounts").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginScope {
    /// Each local account logs in for itself over the control socket, which
    /// every account may open; only the sockets of an account with a login
    /// are stamped, and profiles name that account's user.
    #[default]
    Account,
    /// One login, by root, stands for every local account (the control
    /// socket is root's only).
    Machine,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub address: IpAddr,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub stealth: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect_timeout(),
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_secs: default_reconnect_max(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ackgate-agent")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/ackgate-agent.sock")
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_reconnect_min() -> u64 {
    250
}
fn default_reconnect_max() -> u64 {
    30
}

impl SessionSection {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_secs(self.reconnect_max_secs)
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        config.validate().map_err(|reason| ConfigError::Invalid { path: path.to_owned(), reason })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.option.option_id()?;
        for iface in &self.interfaces {
            if !ackgate_common::host::is_valid_iface_name(iface) {
                return Err(format!("interfaces: {iface:?} is not a valid interface name"));
            }
        }
        let s = &self.session;
        if s.connect_timeout_secs == 0 || s.reconnect_min_ms == 0 || s.reconnect_max_secs == 0 {
            return Err("session: timeouts and backoff bounds must be above zero".into());
        }
        if s.reconnect_min() > s.reconnect_max() {
            return Err("session.reconnect_min_ms is above session.reconnect_max_secs".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.targets {
            if !seen.insert((t.address, t.port)) {
                return Err(format!("target {}:{} is listed twice", t.address, t.port));
            }
        }
        Ok(())
    }

    pub fn option_id(&self) -> OptionId {
        // Validated at load.
        self.option.option_id().unwrap_or_default()
    }

    /// The stamper's targets: the configured ones, or the gateway itself.
    pub fn targets(&self, gateway: Option<IpAddr>) -> Vec<Target> {
        if self.targets.is_empty() {
            return gateway.map(|g| Target { addr: g, port: 0, stealth: false }).into_iter().collect();
        }
        self.targets.iter().map(|t| Target { addr: t.address, port: t.port, stealth: t.stealth }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            ("interfaces = [\"a/b\"]", "not a valid interface name"),
            ("[option]\nkind = 1", "EOL/NOP"),
            ("[session]\nreconnect_min_ms = 0", "above zero"),
            ("[session]\nreconnect_min_ms = 60000\nreconnect_max_secs = 1", "reconnect_min_ms"),
            ("[[targets]]\naddress = \"10.0.0.1\"\n[[targets]]\naddress = \"10.0.0.1\"", "listed twice"),
            ("[[targets]]\naddress = \"not-an-ip\"", "invalid IP address"),
            ("colour = \"blue\"", "unknown field"),
            ("login_scope = \"user\"", "unknown variant"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(text, "agent.toml").expect_err(text).to_string();
            assert!(err.contains(needle), "config {text:?}: error {err:?} should mention {needle:?}");
        }
        let ok = Config::parse("interfaces = [\"eth0\"]", "agent.toml").expect("minimal config");
        assert_eq!(ok.targets(Some(IpAddr::from([10, 0, 0, 1]))).len(), 1);
        let v6 =
            Config::parse("[[targets]]\naddress = \"2001:db8::1\"\nport = 443", "agent.toml").expect("IPv6 target");
        assert_eq!(v6.targets(None)[0].addr, "2001:db8::1".parse::<IpAddr>().unwrap(), "IPv6 targets are stamped");
        assert_eq!(ok.login_scope, LoginScope::Account, "logins are per account unless configured otherwise");
    }
}
