//! Loading the TC stamper, attaching it to egress, and filling its maps.

use std::collections::HashSet;

use ackgate_common::abi::{
    AgentIdentity, FlowKey, MAP_AGENT_ACCOUNTS, MAP_AGENT_COUNTERS, MAP_AGENT_IDENTITY, MAP_AGENT_STAMPED,
    MAP_AGENT_TARGETS, StampedFlow, TargetKey, TargetPolicy,
};
use ackgate_common::counters::Counters;
use ackgate_common::mac::MacKey;
use ackgate_common::option::OptionId;
use ackgate_common::pod::absent_is_ok;
use ackgate_common::proto::FlowSummary;
use ackgate_common::stamp::reason;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, tc};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

pub const PROGRAM_NAME: &str = "ackgate_stamp";
/// A do-nothing TC program in the same object (benchmark baseline).
pub const PASS_PROGRAM_NAME: &str = "ackgate_tc_pass";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ackgate-stamp"));

#[derive(Debug, Error)]
pub enum StamperError {
    #[error("loading the TC stamper failed: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("program {0} missing from the stamper object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the stamper object")]
    MissingMap(&'static str),
    #[error("TC program error: {0}")]
    Program(#[from] ProgramError),
    #[error("attaching the stamper to egress of {iface} failed: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error("{0:?} is not a valid interface name")]
    BadInterfaceName(String),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// One destination the agent stamps for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: std::net::IpAddr,
    /// 0: every port of `addr`.
    pub port: u16,
    /// Stamp SYNs too (the service is in stealth mode).
    pub stealth: bool,
}

impl Target {
    fn key(&self) -> TargetKey {
        match self.addr {
            std::net::IpAddr::V4(a) => TargetKey::ipv4(a.octets(), self.port.to_be_bytes()),
            std::net::IpAddr::V6(a) => TargetKey::ipv6(a.octets(), self.port.to_be_bytes()),
        }
    }
}

/// The loaded stamper; attachments end when it is dropped.
pub struct Stamper {
    ebpf: Ebpf,
}

impl Stamper {
    pub fn load(option: OptionId) -> Result<Self, StamperError> {
        let ebpf = EbpfLoader::new()
            .override_global("OPTION_KIND", &option.kind, true)
            .override_global("OPTION_EXID", &option.exid, true)
            .load(OBJECT)
            .map_err(|e| StamperError::Load(Box::new(e)))?;
        let mut stamper = Self { ebpf };
        stamper.program()?.load()?;
        stamper.pass_program()?.load()?;
        Ok(stamper)
    }

    pub fn program(&mut self) -> Result<&mut SchedClassifier, StamperError> {
        self.classifier(PROGRAM_NAME)
    }

    /// The do-nothing TC program.
    pub fn pass_program(&mut self) -> Result<&mut SchedClassifier, StamperError> {
        self.classifier(PASS_PROGRAM_NAME)
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, StamperError> {
        let prog = self.ebpf.program_mut(name).ok_or(StamperError::MissingProgram(name))?;
        prog.try_into().map_err(StamperError::Program)
    }

    /// Attaches the stamper to egress of `iface` (in the calling thread's
    /// network namespace). Kernels from 6.6 use TCX links; older ones need
    /// the clsact qdisc, added here if missing.
    ///
    /// Before 6.6 (aya attaches a cls_bpf filter by netlink there) the
    /// attachment is not tied to this process: a stamper whose agent was
    /// killed stays on the interface, stamping with its last identity and
    /// accounts. Such filters, found by the program's name, are removed
    /// first and reported; it is one agent per machine.
    pub fn attach(&mut self, iface: &str) -> Result<(), StamperError> {
        check_iface_name(iface)?;
        let attach_err = |source| StamperError::Attach { iface: iface.to_owned(), source };
        // EEXIST (already there) and "not needed" are both fine: the attach
        // below reports what matters.
        let _ = tc::qdisc_add_clsact(iface);
        if KernelVersion::current().is_ok_and(|v| v < ackgate_common::kernels::TCX) {
            match tc::qdisc_detach_program(iface, TcAttachType::Egress, PROGRAM_NAME) {
                Ok(()) => {
                    tracing::warn!(iface, "removed a stamper left attached by an agent that did not stop cleanly")
                }
                Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(iface, "looking for a stamper left attached by an earlier agent: {e}"),
            }
        }
        self.program()?.attach(iface, TcAttachType::Egress).map(drop).map_err(attach_err)
    }

    pub fn set_identity(&mut self, agent_id: u32, key: MacKey) -> Result<(), StamperError> {
        let map = self.ebpf.map_mut(MAP_AGENT_IDENTITY).ok_or(StamperError::MissingMap(MAP_AGENT_IDENTITY))?;
        let mut identity: Array<&mut MapData, AgentIdentity> =
            Array::try_from(map).map_err(|source| StamperError::Map { map: MAP_AGENT_IDENTITY, source })?;
        identity
            .set(0, AgentIdentity { agent_id, enrolled: 1, key }, 0)
            .map_err(|source| StamperError::Map { map: MAP_AGENT_IDENTITY, source })
    }

    /// Makes the target map equal to `targets`.
    pub fn set_targets(&mut self, targets: &[Target]) -> Result<(), StamperError> {
        let map_err = |source| StamperError::Map { map: MAP_AGENT_TARGETS, source };
        let map = self.ebpf.map_mut(MAP_AGENT_TARGETS).ok_or(StamperError::MissingMap(MAP_AGENT_TARGETS))?;
        let mut map: HashMap<&mut MapData, TargetKey, TargetPolicy> = HashMap::try_from(map).map_err(map_err)?;
        let wanted: HashSet<TargetKey> = targets.iter().map(Target::key).collect();
        for t in targets {
            map.insert(t.key(), TargetPolicy { stamp_syn: u8::from(t.stealth), _pad0: 0, _pad1: 0 }, 0)
                .map_err(map_err)?;
        }
        let stale: Vec<TargetKey> = map.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            map.remove(&k).map_err(map_err)?;
        }
        Ok(())
    }

    /// Lets the sockets of `account` (a uid, or `ANY_ACCOUNT` for every
    /// account) be stamped, or stops it.
    pub fn set_account(&mut self, account: u32, logged_in: bool) -> Result<(), StamperError> {
        let map_err = |source| StamperError::Map { map: MAP_AGENT_ACCOUNTS, source };
        let map = self.ebpf.map_mut(MAP_AGENT_ACCOUNTS).ok_or(StamperError::MissingMap(MAP_AGENT_ACCOUNTS))?;
        let mut map: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map).map_err(map_err)?;
        if logged_in {
            return map.insert(account, 0, 0).map_err(map_err);
        }
        absent_is_ok(map.remove(&account)).map_err(map_err)
    }

    pub fn counters(&self) -> Result<Counters, StamperError> {
        let map_err = |source| StamperError::Map { map: MAP_AGENT_COUNTERS, source };
        let map = self.ebpf.map(MAP_AGENT_COUNTERS).ok_or(StamperError::MissingMap(MAP_AGENT_COUNTERS))?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        Counters::read(&map, &reason::LABELS).map_err(map_err)
    }

    /// The account this machine stamped the handshake ACK of `flow` for
    /// (same 4-tuple, same ISNs); `None` when it did not stamp it.
    pub fn stamped(&self, flow: &FlowSummary) -> Result<Option<u32>, StamperError> {
        let map = self.ebpf.map(MAP_AGENT_STAMPED).ok_or(StamperError::MissingMap(MAP_AGENT_STAMPED))?;
        let map: HashMap<&MapData, FlowKey, StampedFlow> =
            HashMap::try_from(map).map_err(|source| StamperError::Map { map: MAP_AGENT_STAMPED, source })?;
        // Ends of two families: no flow this machine stamped.
        let Some(key) = flow.flow_key() else {
            return Ok(None);
        };
        match map.get(&key, 0) {
            Ok(entry) => Ok(entry.is_handshake(flow.client_isn, flow.server_isn).then_some(entry.account)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(StamperError::Map { map: MAP_AGENT_STAMPED, source }),
        }
    }

    /// The most recently stamped flows, newest first.
    pub fn recent_stamps(&self, limit: usize) -> Result<Vec<(FlowKey, StampedFlow)>, StamperError> {
        let map = self.ebpf.map(MAP_AGENT_STAMPED).ok_or(StamperError::MissingMap(MAP_AGENT_STAMPED))?;
        let map: HashMap<&MapData, FlowKey, StampedFlow> =
            HashMap::try_from(map).map_err(|source| StamperError::Map { map: MAP_AGENT_STAMPED, source })?;
        let mut flows: Vec<(FlowKey, StampedFlow)> = map.iter().filter_map(Result::ok).collect();
        flows.sort_by_key(|(_, f)| std::cmp::Reverse(f.stamped_ns));
        flows.truncate(limit);
        Ok(flows)
    }
}

/// The stamper's own maps: the log of what this machine stamped, and the
/// accounts it stamps for.
impl crate::session::Stamps for std::sync::Mutex<Stamper> {
    fn stamped(&self, flow: &FlowSummary) -> Option<u32> {
        let stamper = self.lock().unwrap_or_else(|p| p.into_inner());
        stamper.stamped(flow).unwrap_or_else(|e| {
            tracing::warn!("reading the stamped-flow map: {e}");
            None
        })
    }

    fn set_account(&self, account: u32, logged_in: bool) {
        let mut stamper = self.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = stamper.set_account(account, logged_in) {
            tracing::error!(account, logged_in, "updating the account map: {e}");
        }
    }
}

fn check_iface_name(iface: &str) -> Result<(), StamperError> {
    if !ackgate_common::host::is_valid_iface_name(iface) {
        return Err(StamperError::BadInterfaceName(iface.to_owned()));
    }
    Ok(())
}
