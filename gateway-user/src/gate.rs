//! Loading the XDP gate, attaching it, and filling its maps.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ackgate_common::abi::{
    AgentKey, FlowKey, FlowOwner, GateEvent, MAP_AGENT_KEYS, MAP_PENDING, MAP_SERVICES, MAP_VIPS, PendingFlow,
    ServiceKey, ServicePolicy, VipInfo, VipKey,
};
use ackgate_common::option::OptionId;
use aya::maps::{HashMap, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

use crate::bpffs::{self, BpffsError};

pub const PROGRAM_NAME: &str = "ackgate_gate";
/// A do-nothing XDP program in the same object (veth peers, baselines).
pub const PASS_PROGRAM_NAME: &str = "ackgate_pass";

#[derive(Debug, Error)]
pub enum GateError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(
        "loading the XDP gate failed (pinned maps in {pin_dir} from an incompatible build or another \
         max_flows? remove that directory to start fresh, which drops live flows): {source}"
    )]
    Load { pin_dir: String, source: Box<EbpfError> },
    #[error("program {PROGRAM_NAME} missing from the gate object")]
    MissingProgram,
    #[error("map {0} missing from the gate object")]
    MissingMap(&'static str),
    #[error("XDP program error: {0}")]
    Program(#[from] ProgramError),
    #[error("attaching XDP ({mode:?}) to interface {iface} failed: {source}")]
    Attach { iface: String, mode: XdpMode, source: ProgramError },
    #[error("{0:?} is not a valid interface name")]
    BadInterfaceName(String),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("pinned XDP link: {0}")]
    Link(String),
}

/// How the gate is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver (native) mode: the fast path; required for XDP_TX at line rate.
    Native,
    /// Generic (skb) mode: works on any interface, at stack speed.
    Generic,
}

impl XdpMode {
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

/// One protected service as the maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    pub policy: ServicePolicy,
}

/// The loaded gate: program, maps, and any attachments (which are undone
/// when this is dropped).
pub struct Gate {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// The pinned XDP link of [`Gate::attach`]: it outlives the process, so
    /// a crashed gateway keeps dropping (fails closed) until it restarts.
    link: Option<(PathBuf, Option<PinnedLink>)>,
}

impl Gate {
    /// Loads the gate. Maps are pinned by name under `pin_dir` and reused if
    /// already there, so a restarted gateway keeps its live state.
    ///
    /// `max_flows` sizes the flow map (pending, authorized and denied flows;
    /// LRU, preallocated: about 110 bytes of kernel memory each).
    pub fn load(pin_dir: &Path, option: OptionId, max_flows: u32) -> Result<Self, GateError> {
        bpffs::ensure_pin_dir(pin_dir)?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(MAP_PENDING, max_flows)
            .override_global("OPTION_KIND", &option.kind, true)
            .override_global("OPTION_EXID", &option.exid, true)
            .load(crate::GATE_OBJECT)
            .map_err(|source| GateError::Load { pin_dir: pin_dir.display().to_string(), source: Box::new(source) })?;
        let mut gate = Self { ebpf, pin_dir: pin_dir.to_owned(), link: None };
        gate.xdp()?.load()?;
        gate.pass_program()?.load()?;
        Ok(gate)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, GateError> {
        let prog = self.ebpf.program_mut(PROGRAM_NAME).ok_or(GateError::MissingProgram)?;
        prog.try_into().map_err(GateError::Program)
    }

    /// The do-nothing XDP program.
    pub fn pass_program(&mut self) -> Result<&mut Xdp, GateError> {
        let prog = self.ebpf.program_mut(PASS_PROGRAM_NAME).ok_or(GateError::MissingProgram)?;
        prog.try_into().map_err(GateError::Program)
    }

    /// Attaches the gate to `iface` (in the calling thread's network
    /// namespace) through a bpf_link pinned as `link-IFACE` in the pin
    /// directory. If a previous run left that link (it crashed, so the gate
    /// kept protecting the interface meanwhile), the new program replaces
    /// the old one atomically (bpf_link_update): no packet passes ungated.
    /// [`Gate::detach`] undoes it; dropping the gate without it leaves the
    /// link in place.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), GateError> {
        check_iface_name(iface)?;
        let attach_err = |source| GateError::Attach { iface: iface.to_owned(), mode, source };
        let path = self.pin_dir.join(format!("link-{iface}"));
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| GateError::Link(e.to_string()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| GateError::Link(e.to_string()))?;
            self.xdp()?.attach_to_link(link).map_err(attach_err)?;
            self.link = Some((path, None));
            return Ok(());
        }
        let id = self.xdp()?.attach(iface, mode.aya()).map_err(attach_err)?;
        let link = self.xdp()?.take_link(id)?;
        let fd = FdLink::try_from(link)
            .map_err(|_| GateError::Link("this kernel attaches XDP without bpf_link (before 5.9)".into()))?;
        let pinned = fd.pin(&path).map_err(|e| GateError::Link(e.to_string()))?;
        self.link = Some((path, Some(pinned)));
        Ok(())
    }

    /// Detaches the gate from the interface of [`Gate::attach`] (unpins
    /// its link; the program goes once the gate is dropped).
    pub fn detach(&mut self) -> Result<(), GateError> {
        if let Some((path, _)) = self.link.take() {
            std::fs::remove_file(&path).map_err(|e| GateError::Link(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Attaches the do-nothing program to `iface`, e.g. the client end of a
    /// veth pair whose other end runs the gate in native mode.
    pub fn attach_pass(&mut self, iface: &str, mode: XdpMode) -> Result<(), GateError> {
        check_iface_name(iface)?;
        let attach_err = |source| GateError::Attach { iface: iface.to_owned(), mode, source };
        self.pass_program()?.attach(iface, mode.aya()).map(drop).map_err(attach_err)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, GateError> {
        let map = self.ebpf.map_mut(name).ok_or(GateError::MissingMap(name))?;
        HashMap::try_from(map).map_err(|source| GateError::Map { map: name, source })
    }

    /// Makes the service and VIP maps equal to `services`: adds and updates
    /// entries, then removes the ones no longer configured.
    pub fn sync_services(&mut self, services: &[ServiceEntry]) -> Result<(), GateError> {
        let wanted: HashSet<ServiceKey> = services.iter().map(|s| s.key).collect();
        let mut vips: std::collections::HashMap<VipKey, u32> = std::collections::HashMap::new();
        for s in services {
            *vips.entry(VipKey { addr: s.key.addr, family: s.key.family, _pad0: 0, _pad1: 0 }).or_default() += 1;
        }
        let map_err = |map| move |source| GateError::Map { map, source };
        let mut svc = self.hash_map::<ServiceKey, ServicePolicy>(MAP_SERVICES)?;
        for s in services {
            svc.insert(s.key, s.policy, 0).map_err(map_err(MAP_SERVICES))?;
        }
        let stale: Vec<ServiceKey> = svc.keys().filter_map(Result::ok).filter(|k| !wanted.contains(k)).collect();
        for k in stale {
            svc.remove(&k).map_err(map_err(MAP_SERVICES))?;
        }
        let mut vip_map = self.hash_map::<VipKey, VipInfo>(MAP_VIPS)?;
        for (k, n) in &vips {
            vip_map.insert(*k, VipInfo { services: *n }, 0).map_err(map_err(MAP_VIPS))?;
        }
        let stale: Vec<VipKey> = vip_map.keys().filter_map(Result::ok).filter(|k| !vips.contains_key(k)).collect();
        for k in stale {
            vip_map.remove(&k).map_err(map_err(MAP_VIPS))?;
        }
        Ok(())
    }

    pub fn set_agent_key(&mut self, agent_id: u32, key: AgentKey) -> Result<(), GateError> {
        self.hash_map::<u32, AgentKey>(MAP_AGENT_KEYS)?
            .insert(agent_id, key, 0)
            .map_err(|source| GateError::Map { map: MAP_AGENT_KEYS, source })
    }

    pub fn remove_agent_key(&mut self, agent_id: u32) -> Result<(), GateError> {
        match self.hash_map::<u32, AgentKey>(MAP_AGENT_KEYS)?.remove(&agent_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(GateError::Map { map: MAP_AGENT_KEYS, source }),
        }
    }

    /// Writes the decision on the handshake of `decided` into its flow's
    /// entry: the state (`FLOW_*`) and, for an authorized flow, its owner.
    /// Only if the entry is still that handshake's: a newer handshake on
    /// the same 4-tuple (`ack::on_reused_tuple`) must not inherit a verdict
    /// it did not earn. The check and the write are two syscalls; the gate
    /// replacing the entry in between (microseconds) is not caught.
    pub fn set_flow_state(&mut self, decided: &GateEvent, state: u8, owner: FlowOwner) -> Result<FlowWrite, GateError> {
        let map_err = |source| GateError::Map { map: MAP_PENDING, source };
        let mut flows = self.hash_map::<FlowKey, PendingFlow>(MAP_PENDING)?;
        let mut entry = match flows.get(&decided.flow, 0) {
            Ok(e) => e,
            Err(MapError::KeyNotFound) => return Ok(FlowWrite::Gone),
            Err(source) => return Err(map_err(source)),
        };
        if !decided.is_handshake_of(&entry) {
            return Ok(FlowWrite::Replaced(entry));
        }
        entry.state = state;
        entry.owner = owner;
        flows.insert(decided.flow, entry, 0).map_err(map_err)?;
        Ok(FlowWrite::Written)
    }

    /// Forgets a flow: its next segment meets the gate as a stranger (no
    /// capability on a data segment: the service's default response).
    pub fn remove_flow(&mut self, flow: &FlowKey) -> Result<(), GateError> {
        match self.hash_map::<FlowKey, PendingFlow>(MAP_PENDING)?.remove(flow) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(GateError::Map { map: MAP_PENDING, source }),
        }
    }

    /// The flows in the pinned flow map of a gate running with `pin_dir`.
    pub fn read_flows(pin_dir: &Path) -> Result<Vec<(FlowKey, PendingFlow)>, GateError> {
        let path = pin_dir.join(MAP_PENDING);
        let data = MapData::from_pin(&path).map_err(|source| GateError::Map { map: MAP_PENDING, source })?;
        let flows: HashMap<MapData, FlowKey, PendingFlow> = HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(|source| GateError::Map { map: MAP_PENDING, source })?;
        Ok(flows.iter().filter_map(Result::ok).collect())
    }

    /// Every flow the gate accepted, with its state.
    pub fn pending_flows(&mut self) -> Result<Vec<(FlowKey, PendingFlow)>, GateError> {
        let map = self.ebpf.map(MAP_PENDING).ok_or(GateError::MissingMap(MAP_PENDING))?;
        let pending: HashMap<&MapData, FlowKey, PendingFlow> =
            HashMap::try_from(map).map_err(|source| GateError::Map { map: MAP_PENDING, source })?;
        Ok(pending.iter().filter_map(Result::ok).collect())
    }
}

/// What writing a decision into the flow map found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowWrite {
    Written,
    /// The flow is gone (aged out of the LRU map, or removed).
    Gone,
    /// A newer handshake on the same 4-tuple holds the entry (here as it
    /// is); the decision was not written.
    Replaced(PendingFlow),
}

fn check_iface_name(iface: &str) -> Result<(), GateError> {
    if !ackgate_common::host::is_valid_iface_name(iface) {
        return Err(GateError::BadInterfaceName(iface.to_owned()));
    }
    Ok(())
}
