//! What the daemon opens and sets up before the gate attaches: the control
//! plane's store, CA and tables, and the splice's interfaces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tracing::info;

use crate::access_log::AccessLog;
use crate::config::{Config, ControlSection, Forwarding};
use crate::control::Settings;
use crate::gate::Gate;
use crate::netdev;
use crate::pki::Ca;
use crate::splice::{SpliceSettings, Target};
use crate::store::Store;
use crate::validator::ServiceRule;

/// Attaches the internal program and sets up forwarding for the splice.
pub(super) fn prepare_splice(
    gate: &mut Gate,
    config: &Config,
    internal: &str,
    gateway_wscale: u8,
) -> Result<SpliceSettings> {
    let g = &config.gateway;
    gate.attach_internal(internal, g.xdp_mode)?;
    if g.forwarding == Forwarding::Redirect {
        let edge = netdev::index(&g.edge_interface).with_context(|| format!("interface {}", g.edge_interface))?;
        let inside = netdev::index(internal).with_context(|| format!("interface {internal}"))?;
        gate.set_redirect_interfaces(&[edge, inside]).context("filling the redirect map")?;
    } else {
        gate.set_redirect_interfaces(&[]).context("emptying the redirect map")?;
    }
    // The kernel-forwarding path (always with forwarding = "kernel", and
    // for segments redirect cannot deliver) hands the stack target → client
    // segments whose source is the VIP, a local address, arriving on the
    // internal interface: without accept_local, ip_route_input drops them
    // as martians (fib_validate_source, net/ipv4/fib_frontend.c).
    let sysctl = format!("/proc/sys/net/ipv4/conf/{internal}/accept_local");
    std::fs::write(&sysctl, "1").with_context(|| format!("setting {sysctl}"))?;
    let internal_mtu = netdev::mtu(internal).with_context(|| format!("the MTU of {internal}"))?;
    let source_nat = if config.services.iter().any(|s| s.source_nat) {
        let addr = netdev::ipv4_address(internal)
            .with_context(|| format!("the addresses of {internal}"))?
            .with_context(|| format!("source_nat services need an IPv4 address on {internal}"))?;
        reserve_ports(g.source_nat_ports)?;
        // Client → target segments now leave with a local source address;
        // on the kernel-forwarding path they arrive on the edge (see above).
        let sysctl = format!("/proc/sys/net/ipv4/conf/{}/accept_local", g.edge_interface);
        std::fs::write(&sysctl, "1").with_context(|| format!("setting {sysctl}"))?;
        info!(address = %addr, ports = ?g.source_nat_ports, "source NAT for source_nat services");
        Some((addr, g.source_nat_ports))
    } else {
        None
    };
    info!(
        internal = internal,
        forwarding = ?g.forwarding,
        internal_mtu,
        "splice: internal program attached"
    );
    Ok(SpliceSettings {
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        linger: SPLICE_LINGER,
        internal_mtu,
        gateway_wscale,
        source_nat,
    })
}

/// Adds the source-NAT ports to net.ipv4.ip_local_reserved_ports (keeping
/// what is there), so the gateway's own connections never pick one.
fn reserve_ports([first, last]: [u16; 2]) -> Result<()> {
    const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
    let range = format!("{first}-{last}");
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return Ok(());
    }
    let value = if current.is_empty() { range } else { format!("{current},{range}") };
    std::fs::write(SYSCTL, &value).with_context(|| format!("setting {SYSCTL} to {value}"))
}

/// Ended flows keep their entries this long for the last ACK.
const SPLICE_LINGER: Duration = Duration::from_secs(1);

type ServiceTables = (HashMap<SocketAddr, ServiceRule>, HashMap<SocketAddr, Target>);

/// The validator's rules and the splice targets (with default responses),
/// by VIP and port.
pub(super) fn service_tables(config: &Config) -> Result<ServiceTables> {
    let rules = config
        .services
        .iter()
        .map(|s| {
            let rule = ServiceRule { name: s.name.clone(), allow_groups: s.allow_groups.clone() };
            (SocketAddr::new(s.vip, s.port), rule)
        })
        .collect();
    let entries = config.service_entries()?;
    let targets = config
        .services
        .iter()
        .zip(&entries)
        .map(|(s, e)| {
            let target = Target {
                service: s.name.clone(),
                addr: s.target,
                response: e.policy.default_response,
                idle_timeout: config.idle_timeout(s),
                source_nat: s.source_nat,
            };
            (SocketAddr::new(s.vip, s.port), target)
        })
        .collect();
    Ok((rules, targets))
}

/// What the control plane needs, opened before the gate attaches so that a
/// missing CA or store fails start-up with a clear error.
pub(super) struct Prepared {
    pub(super) store: Arc<Store>,
    pub(super) login: crate::agents::LoginPolicy,
    pub(super) max_unauthenticated: usize,
    pub(super) ca: Ca,
    pub(super) listen: std::net::SocketAddr,
    pub(super) access_log: AccessLog,
    pub(super) rules: HashMap<SocketAddr, ServiceRule>,
    /// Targets and default responses by VIP and port.
    pub(super) targets: HashMap<SocketAddr, Target>,
    pub(super) settings: Settings,
    pub(super) admin_socket: PathBuf,
    pub(super) metrics_listen: Option<std::net::SocketAddr>,
    pub(super) pin_dir: PathBuf,
    pub(super) remote_validator: Option<(String, PathBuf)>,
    pub(super) config_path: PathBuf,
    pub(super) census_interval: Duration,
}

impl Prepared {
    pub(super) fn open(c: &ControlSection, config: &Config, config_path: &Path) -> Result<Self> {
        let ca = Ca::load(&c.state_dir).context("loading the gateway CA (run `ackgate init` first)")?;
        let store = Arc::new(Store::open(&c.store_path())?);
        let access_log = AccessLog::open(c.access_log.as_deref())
            .with_context(|| format!("opening the access log {:?}", c.access_log))?;
        let (rules, targets) = service_tables(config)?;
        let settings = Settings {
            profile_timeout: Duration::from_millis(c.profile_timeout_ms),
            session_grace: Duration::from_millis(c.session_grace_ms),
            validation_timeout: Duration::from_millis(c.validation_timeout_ms),
            max_pending: c.max_pending,
            max_pending_per_agent: c.max_pending_per_agent,
        };
        Ok(Self {
            store,
            login: c.login_policy(),
            max_unauthenticated: c.max_unauthenticated,
            ca,
            listen: c.agent_listen,
            access_log,
            rules,
            targets,
            settings,
            admin_socket: c.admin_socket.clone(),
            metrics_listen: c.metrics_listen,
            pin_dir: config.gateway.pin_dir.clone(),
            remote_validator: c.validator.clone().zip(c.validator_credentials.clone()),
            config_path: config_path.to_owned(),
            census_interval: Duration::from_millis(c.census_interval_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use ackgate_common::abi::{RESPONSE_DROP, RESPONSE_RESET};

    use super::*;

    #[test]
    fn services_become_rules_and_targets_by_vip_and_port() {
        let config: Config = toml::from_str(
            "[gateway]\nedge_interface = \"eth0\"\ninternal_interface = \"eth1\"\nidle_timeout_secs = 60\n\
             [[services]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 443\ntarget = \"10.1.0.2:8443\"\n\
             default_response = \"reset\"\nallow_groups = [\"staff\"]\nidle_timeout_secs = 5\nsource_nat = true\n\
             [[services]]\nname = \"ssh\"\nvip = \"10.0.0.1\"\nport = 22\ntarget = \"10.1.0.3:22\"\n\
             [[services]]\nname = \"web6\"\nvip = \"2001:db8::1\"\nport = 443\ntarget = \"[2001:db8:1::2]:8443\"\n",
        )
        .expect("valid config");
        config.validate().expect("valid config");
        let (rules, targets) = service_tables(&config).expect("tables");
        assert_eq!(rules.len(), 3);
        assert_eq!(targets.len(), 3);

        let web = "10.0.0.1:443".parse().expect("address");
        assert_eq!(rules[&web].name, "web");
        assert_eq!(rules[&web].allow_groups, ["staff"]);
        let t = &targets[&web];
        assert_eq!((t.service.as_str(), t.addr), ("web", "10.1.0.2:8443".parse().unwrap()));
        assert_eq!(t.response, RESPONSE_RESET);
        assert_eq!(t.idle_timeout, Duration::from_secs(5), "the service's own idle timeout");
        assert!(t.source_nat);

        let ssh = "10.0.0.1:22".parse().expect("address");
        assert!(rules[&ssh].allow_groups.is_empty(), "no groups: every valid user");
        let t = &targets[&ssh];
        assert_eq!((t.service.as_str(), t.addr), ("ssh", "10.1.0.3:22".parse().unwrap()));
        assert_eq!(t.response, RESPONSE_DROP, "the default response");
        assert_eq!(t.idle_timeout, Duration::from_secs(60), "the gateway's idle timeout");
        assert!(!t.source_nat);

        let web6 = "[2001:db8::1]:443".parse().expect("address");
        assert_eq!(rules[&web6].name, "web6");
        assert_eq!(targets[&web6].addr, "[2001:db8:1::2]:8443".parse().unwrap(), "an IPv6 service's target");
    }
}
