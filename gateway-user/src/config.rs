//! The gateway's TOML configuration (one file per host, docs/design.md §7).
//!
//! ```toml
//! [gateway]
//! edge_interface = "eth0"          # XDP gate attaches here
//! internal_interface = "eth1"      # towards the targets (the splice)
//! xdp_mode = "native"              # or "generic"
//! pin_dir = "/sys/fs/bpf/ackgate"  # pinned maps live here across restarts
//!
//! [option]                         # the capability TCP option
//! kind = 253
//! experiment_id = 0xac47
//!
//! [[services]]
//! name = "intranet"
//! vip = "203.0.113.10"
//! port = 443
//! target = "10.1.0.20:443"
//! default_response = "drop"        # or "reset", "page"
//! stealth = false
//!
//! [[static_agents]]                # lab use; enrollment issues keys
//! id = 7
//! key_file = "/etc/ackgate/agent-7.key"   # 32 hex digits, mode 0600
//! ```

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ackgate_common::abi::{
    FAMILY_IPV4, FAMILY_IPV6, RESPONSE_DROP, RESPONSE_PAGE, RESPONSE_RESET, ServiceKey, ServicePolicy, port_field,
    v4_words, v6_words,
};
use ackgate_common::mac::MacKey;
use ackgate_common::option::{OptionId, OptionSection};
use serde::Deserialize;
use thiserror::Error;

use crate::gate::{ServiceEntry, XdpMode};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ackgate";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("config: {0}")]
    Invalid(String),
    #[error("agent key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewaySection,
    #[serde(default)]
    pub option: OptionSection,
    #[serde(default)]
    pub services: Vec<ServiceSection>,
    #[serde(default)]
    pub static_agents: Vec<StaticAgent>,
    /// The control plane: agent sessions, user store, validation. Without
    /// it `ackgate run` runs the gate alone (static agents only).
    pub control: Option<ControlSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// CA (`ca.pem`, `ca.key`) and user store (`users.db`); `ackgate init`
    /// creates them.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where agents connect (TLS 1.3).
    #[serde(default = "default_agent_listen")]
    pub agent_listen: SocketAddr,
    /// The address invites tell agents to dial (default: agent_listen).
    pub advertise: Option<String>,
    /// JSON lines, one record per decision.
    pub access_log: Option<PathBuf>,
    /// Prometheus metrics at http://ADDR/metrics (off when absent).
    pub metrics_listen: Option<SocketAddr>,
    /// Root-only socket of the running daemon (revocations reach live
    /// flows through it).
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Time an agent has to answer a profile request.
    #[serde(default = "default_profile_timeout")]
    pub profile_timeout_ms: u64,
    /// After start, how long a flow whose agent has no session yet waits
    /// for the agent to reconnect, before its `profile_timeout_ms`: flows
    /// held across a restart are decided, not timed out.
    #[serde(default = "default_session_grace")]
    pub session_grace_ms: u64,
    /// How often the daemon counts the flow map by state and infers the
    /// flows it evicted (metrics and status show the latest count).
    #[serde(default = "default_census_interval")]
    pub census_interval_ms: u64,
    /// Time the validator has to decide.
    #[serde(default = "default_validation_timeout")]
    pub validation_timeout_ms: u64,
    /// Flows awaiting a decision, overall and per agent; beyond, new flows
    /// are denied at once (and counted), so stamped-ACK floods cannot grow
    /// memory.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    #[serde(default = "default_max_pending_per_agent")]
    pub max_pending_per_agent: usize,
    /// Invites are valid this long.
    #[serde(default = "default_invite_ttl")]
    pub invite_ttl_secs: u64,
    /// Wait after a failed login before the same user's, or the same
    /// agent's, next login is checked; doubled per further failure.
    #[serde(default = "default_login_backoff")]
    pub login_backoff_ms: u64,
    #[serde(default = "default_login_backoff_max")]
    pub login_backoff_max_secs: u64,
    /// Consecutive failed logins that lock a user until `users unlock`;
    /// 0 never locks.
    #[serde(default = "default_login_lockout")]
    pub login_lockout_after: u32,
    /// Agent-listener connections not yet authenticated (TLS handshake,
    /// first message, enrollment) at once; beyond, new ones are closed at
    /// once and counted.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// A remote validator (`ackgate validator run`) at this `host:port`;
    /// absent: the embedded one, on this host's store.
    pub validator: Option<String>,
    /// Credentials for the validator link (`ackgate validator credentials`).
    pub validator_credentials: Option<PathBuf>,
}

/// The configuration of a validator service (`ackgate validator run`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    pub validator: ValidatorSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorSection {
    /// Where the gateway connects (mutual TLS 1.3).
    pub listen: SocketAddr,
    /// The user store (SQLite; created if missing).
    pub store: PathBuf,
    /// `ca.pem`, `validator.pem`, `validator.key`, `gateway.pem`.
    pub credentials: PathBuf,
}

impl ValidatorConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ackgate";

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4433))
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/ackgate.sock")
}
fn default_profile_timeout() -> u64 {
    3000
}

fn default_session_grace() -> u64 {
    15_000
}

fn default_census_interval() -> u64 {
    10_000
}
fn default_validation_timeout() -> u64 {
    2000
}
fn default_max_pending() -> usize {
    10_000
}
fn default_max_pending_per_agent() -> usize {
    256
}
fn default_invite_ttl() -> u64 {
    7 * 86_400
}

fn default_login_backoff() -> u64 {
    1000
}

fn default_login_backoff_max() -> u64 {
    300
}

fn default_max_unauthenticated() -> usize {
    256
}
fn default_login_lockout() -> u32 {
    10
}

impl ControlSection {
    /// The failed-login policy.
    pub fn login_policy(&self) -> crate::agents::LoginPolicy {
        crate::agents::LoginPolicy {
            backoff: std::time::Duration::from_millis(self.login_backoff_ms),
            backoff_max: std::time::Duration::from_secs(self.login_backoff_max_secs),
            lockout_after: self.login_lockout_after,
        }
    }

    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.agent_listen.to_string())
    }
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("users.db")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub edge_interface: String,
    /// Interface facing the private network (the targets); the splice's
    /// XDP program attaches here. Required when services are configured.
    pub internal_interface: Option<String>,
    /// How spliced segments leave: "redirect" (XDP redirect between the
    /// two interfaces, the kernel's forwarding only where redirect cannot
    /// deliver) or "kernel" (always the kernel's forwarding).
    #[serde(default = "default_forwarding")]
    pub forwarding: Forwarding,
    /// Destinations (CIDR prefixes) that edge traffic may be routed to
    /// besides spliced flows. Default: none (default-deny forwarding).
    #[serde(default)]
    pub allowed_transit: Vec<String>,
    /// Spliced flows the gate can hold at once.
    #[serde(default = "default_max_spliced")]
    pub max_spliced: u32,
    /// How long the target has to answer the splice's SYN (it is sent
    /// again after a second) before the client gets the default response.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Spliced flows idle this long end (services may set their own).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Ports (first, last) the gateway's internal address uses for
    /// `source_nat` services. `ackgate run` adds them to
    /// net.ipv4.ip_local_reserved_ports, so its own connections never take
    /// one.
    #[serde(default = "default_source_nat_ports")]
    pub source_nat_ports: [u16; 2],
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Size of the flow map: flows the gate accepted (pending, authorized,
    /// denied); the oldest give way beyond it.
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    /// `page` responder: connections served at once (beyond, closed at
    /// once and counted).
    #[serde(default = "default_page_max_connections")]
    pub page_max_connections: usize,
    /// The decoy's timeouts, nginx's by default (docs/gate.md, "The
    /// decoy"): `client_header_timeout` (the whole request header, or the
    /// ClientHello on a TLS decoy; `page_timeout_ms` is its older name)
    #[serde(default = "default_page_header_timeout", alias = "page_timeout_ms")]
    pub page_header_timeout_ms: u64,
    /// ... `keepalive_timeout`
    #[serde(default = "default_page_keepalive_timeout")]
    pub page_keepalive_timeout_ms: u64,
    /// ... `send_timeout`, also the sockets' TCP_USER_TIMEOUT
    #[serde(default = "default_page_send_timeout")]
    pub page_send_timeout_ms: u64,
    /// ... `lingering_timeout` and `lingering_time`.
    #[serde(default = "default_page_lingering_timeout")]
    pub page_lingering_timeout_ms: u64,
    #[serde(default = "default_page_lingering_time")]
    pub page_lingering_time_ms: u64,
}

/// How spliced segments are forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    Redirect,
    Kernel,
}

fn default_forwarding() -> Forwarding {
    Forwarding::Redirect
}
fn default_max_spliced() -> u32 {
    ackgate_common::abi::MAX_SPLICED
}
fn default_connect_timeout() -> u64 {
    3000
}
fn default_idle_timeout() -> u64 {
    3600
}
fn default_source_nat_ports() -> [u16; 2] {
    [20000, 29999]
}

fn default_max_flows() -> u32 {
    ackgate_common::abi::MAX_PENDING
}

fn default_page_max_connections() -> usize {
    256
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}
fn default_page_header_timeout() -> u64 {
    ms(crate::page::Timeouts::NGINX.header)
}
fn default_page_keepalive_timeout() -> u64 {
    ms(crate::page::Timeouts::NGINX.keepalive)
}
fn default_page_send_timeout() -> u64 {
    ms(crate::page::Timeouts::NGINX.send)
}
fn default_page_lingering_timeout() -> u64 {
    ms(crate::page::Timeouts::NGINX.lingering)
}
fn default_page_lingering_time() -> u64 {
    ms(crate::page::Timeouts::NGINX.lingering_time)
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Native
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultResponse {
    Drop,
    Reset,
    Page,
}

impl DefaultResponse {
    pub fn label(self) -> &'static str {
        match self {
            DefaultResponse::Drop => "drop",
            DefaultResponse::Reset => "reset",
            DefaultResponse::Page => "page",
        }
    }

    fn wire(self) -> u8 {
        match self {
            DefaultResponse::Drop => RESPONSE_DROP,
            DefaultResponse::Reset => RESPONSE_RESET,
            DefaultResponse::Page => RESPONSE_PAGE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub target: SocketAddr,
    #[serde(default = "default_response")]
    pub default_response: DefaultResponse,
    /// Unstamped SYNs get no SYN/ACK: dropped, or with the `reset`
    /// response answered as a closed port answers them.
    #[serde(default)]
    pub stealth: bool,
    /// Groups whose users may reach the service; empty: every valid user.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// `page` services: the body of the decoy's "404 Not Found" (an HTML
    /// page, served as nginx serves `error_page 404` from a file); default:
    /// nginx's own 404 page.
    pub page_file: Option<PathBuf>,
    /// `page` services: what the decoy imitates, "http" (nginx serving
    /// HTTP) or "tls" (nginx on a TLS port refusing every handshake);
    /// default: "tls" on port 443, "http" elsewhere.
    pub decoy: Option<crate::page::Decoy>,
    /// Spliced flows of this service idle this long end (default:
    /// gateway.idle_timeout_secs).
    pub idle_timeout_secs: Option<u64>,
    /// The target sees the gateway's internal address (a port from
    /// gateway.source_nat_ports) instead of the client's: for targets whose
    /// route back to clients does not go through the gateway.
    #[serde(default)]
    pub source_nat: bool,
}

fn default_response() -> DefaultResponse {
    DefaultResponse::Drop
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAgent {
    pub id: u32,
    pub key_file: PathBuf,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: uniqueness, supported families, option ids.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway.edge_interface.is_empty() {
            return Err(ConfigError::Invalid("gateway.edge_interface is empty".into()));
        }
        self.option.option_id().map_err(ConfigError::Invalid)?;
        if self.gateway.max_flows < 1024 {
            return Err(ConfigError::Invalid("gateway.max_flows must be at least 1024".into()));
        }
        if !self.services.is_empty() && self.gateway.internal_interface.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(
                "gateway.internal_interface is required with [[services]]: the splice forwards authorized flows \
                 to their targets through it"
                    .into(),
            ));
        }
        if self.gateway.max_spliced < 16 {
            return Err(ConfigError::Invalid("gateway.max_spliced must be at least 16".into()));
        }
        if self.gateway.connect_timeout_ms == 0 || self.gateway.idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "gateway: connect_timeout_ms and idle_timeout_secs must be above zero".into(),
            ));
        }
        self.transit_prefixes()?;
        let [first, last] = self.gateway.source_nat_ports;
        if first == 0 || first > last {
            return Err(ConfigError::Invalid(format!(
                "gateway.source_nat_ports [{first}, {last}]: need 0 < first <= last"
            )));
        }
        let g = &self.gateway;
        if g.page_max_connections == 0
            || [
                g.page_header_timeout_ms,
                g.page_keepalive_timeout_ms,
                g.page_send_timeout_ms,
                g.page_lingering_timeout_ms,
                g.page_lingering_time_ms,
            ]
            .contains(&0)
        {
            return Err(ConfigError::Invalid(
                "gateway: page_max_connections and the page_*_ms timeouts must be above zero".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.services {
            self.service_addrs(s)?;
            if !seen.insert((s.vip, s.port)) {
                return Err(ConfigError::Invalid(format!(
                    "service {:?}: {}:{} is configured twice",
                    s.name, s.vip, s.port
                )));
            }
        }
        if let Some(c) = &self.control {
            if c.profile_timeout_ms == 0 || c.validation_timeout_ms == 0 || c.census_interval_ms == 0 {
                return Err(ConfigError::Invalid("control: timeouts and census_interval_ms must be above zero".into()));
            }
            if c.validator.is_some() != c.validator_credentials.is_some() {
                return Err(ConfigError::Invalid("control: validator and validator_credentials go together".into()));
            }
            if c.max_unauthenticated == 0 {
                return Err(ConfigError::Invalid("control: max_unauthenticated must be above zero".into()));
            }
            if c.max_pending == 0 || c.max_pending_per_agent == 0 || c.max_pending_per_agent > c.max_pending {
                return Err(ConfigError::Invalid("control: need 0 < max_pending_per_agent <= max_pending".into()));
            }
            if c.login_backoff_ms == 0 || c.login_backoff_ms > c.login_backoff_max_secs.saturating_mul(1000) {
                return Err(ConfigError::Invalid(
                    "control: need 0 < login_backoff_ms <= login_backoff_max_secs * 1000".into(),
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for a in &self.static_agents {
            if !ids.insert(a.id) {
                return Err(ConfigError::Invalid(format!("static agent id {} is configured twice", a.id)));
            }
        }
        Ok(())
    }

    /// A service's VIP and target, checked: one address family (the splice
    /// rewrites addresses, it does not translate between families), and
    /// what IPv6 services cannot have yet.
    fn service_addrs(&self, s: &ServiceSection) -> Result<(IpAddr, SocketAddr), ConfigError> {
        if s.vip.is_ipv4() != s.target.is_ipv4() {
            return Err(ConfigError::Invalid(format!(
                "service {:?}: VIP {} and target {} are of different address families",
                s.name, s.vip, s.target
            )));
        }
        if s.vip.is_ipv6() && s.default_response == DefaultResponse::Page {
            return Err(ConfigError::Invalid(format!(
                "service {:?}: the page response needs an IPv4 VIP (IPv6 pages are not supported yet)",
                s.name
            )));
        }
        if s.vip.is_ipv6() && s.source_nat {
            return Err(ConfigError::Invalid(format!(
                "service {:?}: source_nat is not supported for IPv6 services yet",
                s.name
            )));
        }
        if s.port == 0 {
            return Err(ConfigError::Invalid(format!("service {:?}: port 0", s.name)));
        }
        Ok((s.vip, s.target))
    }

    /// `gateway.allowed_transit` as (address, prefix length).
    pub fn transit_prefixes(&self) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
        self.gateway
            .allowed_transit
            .iter()
            .map(|text| {
                let bad = |why: &str| ConfigError::Invalid(format!("gateway.allowed_transit {text:?}: {why}"));
                let (addr, len) = text.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX-LENGTH"))?;
                let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
                let len: u8 = len.parse().map_err(|_| bad("prefix length is not a number"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(bad(&format!("prefix length above {max}")));
                }
                Ok((addr, len))
            })
            .collect()
    }

    /// Idle timeout of a service's spliced flows.
    pub fn idle_timeout(&self, s: &ServiceSection) -> std::time::Duration {
        std::time::Duration::from_secs(s.idle_timeout_secs.unwrap_or(self.gateway.idle_timeout_secs))
    }

    pub fn option_id(&self) -> OptionId {
        OptionId { kind: self.option.kind, exid: self.option.experiment_id }
    }

    /// The `page` services, each with its decoy and "not found" page.
    pub fn page_services(&self) -> Result<Vec<crate::page::PageService>, ConfigError> {
        let mut out = Vec::new();
        for s in self.services.iter().filter(|s| s.default_response == DefaultResponse::Page) {
            let (IpAddr::V4(vip), _) = self.service_addrs(s)? else {
                continue;
            };
            let not_found = match &s.page_file {
                Some(path) => crate::page::NotFound::load(path)
                    .map_err(|e| ConfigError::Invalid(format!("service {:?}: {e}", s.name)))?,
                None => crate::page::NotFound::Builtin,
            };
            let decoy = s.decoy.unwrap_or_else(|| crate::page::Decoy::for_port(s.port));
            out.push(crate::page::PageService { vip, port: s.port, decoy, not_found });
        }
        Ok(out)
    }

    /// The decoy's timeouts.
    pub fn page_timeouts(&self) -> crate::page::Timeouts {
        let g = &self.gateway;
        let d = std::time::Duration::from_millis;
        crate::page::Timeouts {
            header: d(g.page_header_timeout_ms),
            keepalive: d(g.page_keepalive_timeout_ms),
            send: d(g.page_send_timeout_ms),
            lingering: d(g.page_lingering_timeout_ms),
            lingering_time: d(g.page_lingering_time_ms),
        }
    }

    /// The services as map entries.
    pub fn service_entries(&self) -> Result<Vec<ServiceEntry>, ConfigError> {
        self.services
            .iter()
            .map(|s| {
                let (vip, target) = self.service_addrs(s)?;
                let port = s.port.to_be_bytes();
                let (key, target_addr, target_family) = match (vip, target.ip()) {
                    (IpAddr::V4(v), IpAddr::V4(t)) => {
                        (ServiceKey::ipv4(v.octets(), port), v4_words(t.octets()), FAMILY_IPV4)
                    }
                    (IpAddr::V6(v), IpAddr::V6(t)) => {
                        (ServiceKey::ipv6(v.octets(), port), v6_words(t.octets()), FAMILY_IPV6)
                    }
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "service {:?}: VIP and target of different address families",
                            s.name
                        )));
                    }
                };
                Ok(ServiceEntry {
                    key,
                    policy: ServicePolicy {
                        target_addr,
                        target_port: port_field(target.port().to_be_bytes()),
                        default_response: s.default_response.wire(),
                        stealth: u8::from(s.stealth),
                        target_family,
                        _pad0: 0,
                        _pad1: 0,
                    },
                })
            })
            .collect()
    }
}

impl StaticAgent {
    /// Reads the key: 32 hex digits, in a file no one but the owner can read.
    pub fn load_key(&self) -> Result<MacKey, ConfigError> {
        let path = self.key_file.display().to_string();
        let err = |reason: String| ConfigError::KeyFile { path: path.clone(), reason };
        let meta = std::fs::metadata(&self.key_file).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read the key; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(&self.key_file).map_err(|e| err(e.to_string()))?;
        parse_key_hex(text.trim()).map_err(err)
    }
}

/// 32 hex digits → a 128-bit MAC key.
pub fn parse_key_hex(hex: &str) -> Result<MacKey, String> {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("expected 32 hex digits, found {} characters", hex.len()));
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(MacKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    const MINIMAL: &str = "[gateway]\nedge_interface = \"eth0\"\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse(MINIMAL).expect("minimal config must parse");
        assert_eq!(c.gateway.xdp_mode, XdpMode::Native);
        assert_eq!(c.gateway.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.option_id(), OptionId::default());
    }

    #[test]
    fn bad_configs_get_clear_errors() {
        let cases = [
            ("", "missing field `gateway`"),
            ("[gateway]\nedge_interface = \"eth0\"\nbogus = 1\n", "unknown field `bogus`"),
            ("[gateway]\nedge_interface = \"eth0\"\nxdp_mode = \"turbo\"\n", "unknown variant `turbo`"),
            (
                "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"a\"\nvip=\"::1\"\nport=1\ntarget=\"10.0.0.1:1\"\n",
                "VIP ::1 and target 10.0.0.1:1 are of different address families",
            ),
            (
                "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"a\"\nvip=\"2001:db8::1\"\nport=80\ntarget=\"[2001:db8:1::2]:80\"\ndefault_response=\"page\"\n",
                "the page response needs an IPv4 VIP",
            ),
            (
                "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"a\"\nvip=\"2001:db8::1\"\nport=80\ntarget=\"[2001:db8:1::2]:80\"\nsource_nat=true\n",
                "source_nat is not supported for IPv6 services yet",
            ),
            (
                "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"a\"\nvip=\"10.0.0.1\"\nport=1\ntarget=\"10.0.0.2:1\"\n\
                 [[services]]\nname=\"b\"\nvip=\"10.0.0.1\"\nport=1\ntarget=\"10.0.0.3:1\"\n",
                "configured twice",
            ),
            (
                "[gateway]\nedge_interface = \"eth0\"\n[[services]]\nname=\"a\"\nvip=\"10.0.0.1\"\nport=70000\ntarget=\"10.0.0.2:1\"\n",
                "invalid value",
            ),
            ("[gateway]\nedge_interface = \"eth0\"\n[option]\nkind = 1\n", "EOL/NOP"),
            (
                "[gateway]\nedge_interface = \"eth0\"\n[[services]]\nname=\"a\"\nvip=\"10.0.0.1\"\nport=1\ntarget=\"10.0.0.2:1\"\n",
                "internal_interface is required",
            ),
            ("[gateway]\nedge_interface = \"eth0\"\nallowed_transit = [\"10.0.0.0\"]\n", "ADDRESS/PREFIX-LENGTH"),
            ("[gateway]\nedge_interface = \"eth0\"\nallowed_transit = [\"10.0.0.0/33\"]\n", "prefix length above 32"),
            ("[gateway]\nedge_interface = \"eth0\"\nforwarding = \"teleport\"\n", "unknown variant `teleport`"),
            ("[gateway]\nedge_interface = \"eth0\"\nsource_nat_ports = [30000, 20000]\n", "need 0 < first <= last"),
            (
                "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"a\"\nvip=\"10.0.0.1\"\nport=1\ntarget=\"10.0.0.2:1\"\ndefault_response=\"maybe\"\n",
                "unknown variant `maybe`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(&format!("config should be refused:\n{text}"));
            assert!(err.contains(want), "error for\n{text}\nwas {err:?}, expected it to mention {want:?}");
        }
    }

    #[test]
    fn services_become_map_entries() {
        let c = parse(
            "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n[[services]]\nname=\"web\"\nvip=\"10.0.0.1\"\nport=443\n\
             target=\"10.1.0.2:8443\"\ndefault_response=\"reset\"\nstealth=true\n",
        )
        .expect("valid config");
        let e = c.service_entries().expect("entries");
        assert_eq!(e[0].key, ServiceKey::ipv4([10, 0, 0, 1], 443u16.to_be_bytes()));
        assert_eq!(e[0].policy.default_response, RESPONSE_RESET);
        assert_eq!(e[0].policy.stealth, 1);
        assert_eq!(e[0].policy.target_port, port_field(8443u16.to_be_bytes()));
        assert_eq!(e[0].policy.target_addr, v4_words([10, 1, 0, 2]));
    }

    #[test]
    fn page_services_take_nginx_s_timeouts_and_a_decoy_for_their_port() {
        let page = |port: u16, extra: &str| {
            format!(
                "[[services]]\nname=\"p{port}\"\nvip=\"10.0.0.1\"\nport={port}\ntarget=\"10.1.0.2:1\"\n\
                 default_response=\"page\"\n{extra}"
            )
        };
        let head = "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\n";
        let c = parse(&format!("{head}{}{}{}", page(443, ""), page(80, ""), page(8443, "decoy = \"tls\"\n")))
            .expect("valid config");
        assert_eq!(c.page_timeouts(), crate::page::Timeouts::NGINX);
        let decoys: Vec<_> = c.page_services().expect("page services").iter().map(|p| (p.port, p.decoy)).collect();
        use crate::page::Decoy::{Http, Tls};
        assert_eq!(decoys, [(443, Tls), (80, Http), (8443, Tls)]);
        // The older name of the header timeout still reads.
        let c = parse("[gateway]\nedge_interface = \"eth0\"\npage_timeout_ms = 1500\n").expect("valid config");
        assert_eq!(c.page_timeouts().header, std::time::Duration::from_millis(1500));
        let err = parse(&format!("{head}page_send_timeout_ms = 0\n")).expect_err("a zero timeout");
        assert!(err.contains("page_*_ms timeouts must be above zero"), "{err}");
        let err = parse(&format!("{head}{}", page(80, "decoy = \"ftp\"\n"))).expect_err("an unknown decoy");
        assert!(err.contains("unknown variant `ftp`"), "{err}");
    }

    #[test]
    fn key_hex() {
        assert!(parse_key_hex("00112233445566778899aabbccddeeff").is_ok());
        assert!(parse_key_hex("0011").unwrap_err().contains("32 hex digits"));
        assert!(parse_key_hex("zz112233445566778899aabbccddeeff").is_err());
    }
}
