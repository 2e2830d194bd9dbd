//! Loading the XDP gate, attaching it, and filling its maps.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ackgate_common::abi::{
    AgentKey, FAMILY_IPV4, FAMILY_IPV6, FlowKey, FlowOwner, GateEvent, MAP_AGENT_KEYS, MAP_PENDING, MAP_REDIRECT,
    MAP_SERVICES, MAP_SPLICE, MAP_SPLICE6, MAP_STAGES, MAP_TRANSIT, MAP_VIPS, PendingFlow, STAGE_SPLICE_V6, ServiceKey,
    ServicePolicy, SpliceAddr, SpliceEntry, SpliceKey, SynAckProfile, TransitKey, VipInfo, VipKey,
};
use ackgate_common::option::OptionId;
use ackgate_common::pod::absent_is_ok;
use aya::Pod;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{DevMapHash, HashMap, MapData, MapError, ProgramArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

use crate::bpffs::{self, BpffsError};
use crate::flow_table::FlowTable;

pub const PROGRAM_NAME: &str = "ackgate_gate";
/// The internal interface's program (the splice's target side).
pub const INTERNAL_PROGRAM_NAME: &str = "ackgate_internal";
/// A do-nothing XDP program in the same object (veth peers, baselines).
pub const PASS_PROGRAM_NAME: &str = "ackgate_pass";
/// The IPv6 splice stage, tail-called by the two programs above.
pub const SPLICE_V6_PROGRAM_NAME: &str = "ackgate_splice_v6";

/// The splice map of the family whose addresses are `A`.
fn splice_map_name<A: SpliceAddr>() -> &'static str {
    if A::FAMILY == FAMILY_IPV6 { MAP_SPLICE6 } else { MAP_SPLICE }
}

#[derive(Debug, Error)]
pub enum GateError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(
        "loading the XDP gate failed (pinned maps in {pin_dir} from an incompatible build or another \
         max_flows? remove that directory to start fresh, which drops live flows): {source}"
    )]
    Load { pin_dir: String, source: Box<EbpfError> },
    #[error("program {0} missing from the gate object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the gate object")]
    MissingMap(&'static str),
    #[error("XDP program error: {0}")]
    Program(#[from] ProgramError),
    #[error("attaching XDP ({mode:?}) to interface {iface} failed: {source}")]
    Attach { iface: String, mode: XdpMode, source: ProgramError },
    #[error(
        "interface {iface} already runs an XDP program ({holder}) that this pin directory does not hold: \
         another `ackgate run` with another pin_dir, or another tool; detach it first \
         (`ip link set dev {iface} xdp off`) or use another interface"
    )]
    AlreadyAttached { iface: String, holder: String },
    #[error("{0:?} is not a valid interface name")]
    BadInterfaceName(String),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("pinned XDP link: {0}")]
    Link(String),
    #[error("redirect map: {0}")]
    Redirect(String),
    #[error("the splice stage's program descriptor: {0}")]
    Stage(std::io::Error),
}

/// Load-time settings of the gate.
#[derive(Clone, Copy, Debug)]
pub struct GateSettings {
    pub option: OptionId,
    /// Size of the flow map (pending, authorized, denied).
    pub max_flows: u32,
    /// Spliced flows (the splice map holds two entries each).
    pub max_spliced: u32,
    /// The kernel's own SYN/ACK, copied by the cookie SYN/ACK.
    pub synack: SynAckProfile,
    /// Redirect spliced segments (else always the kernel's forwarding).
    pub redirect: bool,
    /// The edge may deliver locally made frames whose TCP checksum is still
    /// partial (checksum offload not done: generic XDP, virtual devices):
    /// such a checksum, the pseudo-header's sum, passes the gate's check.
    pub partial_checksums: bool,
}

impl GateSettings {
    /// Defaults for tests and tools: Linux's SYN/ACK on a 1500-byte MTU.
    pub fn new(option: OptionId, max_flows: u32) -> Self {
        let synack =
            crate::synack::HostTcp { mtu: 1500, rmem_default: 131072, rmem_max_tcp: 6291456, rmem_max: 212992, ecn: 2 }
                .profile(0);
        Self {
            option,
            max_flows,
            max_spliced: ackgate_common::abi::MAX_SPLICED,
            synack,
            redirect: true,
            partial_checksums: false,
        }
    }
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
    /// The pinned XDP links of [`Gate::attach`]: they outlive the process,
    /// so a crashed gateway keeps gating (fails closed) and spliced flows
    /// keep flowing until it restarts.
    links: Vec<(PathBuf, Option<PinnedLink>)>,
    /// The flow map, as userspace reads and writes it.
    flows: FlowTable,
}

impl Gate {
    /// Loads the gate. Maps are pinned by name under `pin_dir` and reused if
    /// already there, so a restarted gateway keeps its live state.
    ///
    /// `max_flows` sizes the flow map (pending, authorized and denied flows;
    /// LRU, preallocated: 168 bytes of kernel memory each, measured as the
    /// map's memlock on 6.18; docs/splice.md, "Memory").
    pub fn load(pin_dir: &Path, settings: &GateSettings) -> Result<Self, GateError> {
        bpffs::ensure_pin_dir(pin_dir)?;
        let redirect = u8::from(settings.redirect);
        let partial_checksums = u8::from(settings.partial_checksums);
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(MAP_PENDING, settings.max_flows)
            .map_max_entries(MAP_SPLICE, 2 * settings.max_spliced)
            .map_max_entries(MAP_SPLICE6, 2 * settings.max_spliced)
            .override_global("OPTION_KIND", &settings.option.kind, true)
            .override_global("OPTION_EXID", &settings.option.exid, true)
            .override_global("SYNACK_PROFILE", &settings.synack, true)
            .override_global("REDIRECT_ENABLED", &redirect, true)
            .override_global("PARTIAL_CHECKSUMS", &partial_checksums, true)
            .load(crate::GATE_OBJECT)
            .map_err(|source| GateError::Load { pin_dir: pin_dir.display().to_string(), source: Box::new(source) })?;
        let flows = FlowTable::open(pin_dir)?;
        let mut gate = Self { ebpf, pin_dir: pin_dir.to_owned(), links: Vec::new(), flows };
        for name in [PROGRAM_NAME, INTERNAL_PROGRAM_NAME, PASS_PROGRAM_NAME, SPLICE_V6_PROGRAM_NAME] {
            let verifying = std::time::Instant::now();
            let program = gate.program(name)?;
            program.load()?;
            // Verification is most of a start, and grows with the kernel's
            // age (docs/kernels.md): each program's share says where a
            // slow start went.
            let instructions = program.info().ok().and_then(|i| i.verified_instruction_count());
            tracing::debug!(program = name, took = ?verifying.elapsed(), ?instructions, "program verified and loaded");
        }
        gate.fill_stages()?;
        Ok(gate)
    }

    /// Puts the tail-called stages in their slots, replacing what a
    /// previous run left there (the slots are pinned).
    fn fill_stages(&mut self) -> Result<(), GateError> {
        let stage = self.program(SPLICE_V6_PROGRAM_NAME)?.fd()?.try_clone().map_err(GateError::Stage)?;
        let map = self.ebpf.map_mut(MAP_STAGES).ok_or(GateError::MissingMap(MAP_STAGES))?;
        let mut stages = ProgramArray::try_from(map).map_err(|source| GateError::Map { map: MAP_STAGES, source })?;
        stages.set(STAGE_SPLICE_V6, &stage, 0).map_err(|source| GateError::Map { map: MAP_STAGES, source })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The flow map, for work off the event loop (census, revocations);
    /// removals through any clone count toward the census.
    pub fn flow_table(&self) -> FlowTable {
        self.flows.clone()
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, GateError> {
        self.program(PROGRAM_NAME)
    }

    /// The internal interface's program.
    pub fn internal_program(&mut self) -> Result<&mut Xdp, GateError> {
        self.program(INTERNAL_PROGRAM_NAME)
    }

    /// The IPv6 splice stage.
    pub fn splice_v6_program(&mut self) -> Result<&mut Xdp, GateError> {
        self.program(SPLICE_V6_PROGRAM_NAME)
    }

    /// The do-nothing XDP program.
    pub fn pass_program(&mut self) -> Result<&mut Xdp, GateError> {
        self.program(PASS_PROGRAM_NAME)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut Xdp, GateError> {
        let prog = self.ebpf.program_mut(name).ok_or(GateError::MissingProgram(name))?;
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
        self.attach_pinned(PROGRAM_NAME, iface, mode)
    }

    /// Attaches the internal program to the interface facing the targets,
    /// pinned and replaced atomically as [`Gate::attach`] does.
    pub fn attach_internal(&mut self, iface: &str, mode: XdpMode) -> Result<(), GateError> {
        self.attach_pinned(INTERNAL_PROGRAM_NAME, iface, mode)
    }

    fn attach_pinned(&mut self, program: &'static str, iface: &str, mode: XdpMode) -> Result<(), GateError> {
        check_iface_name(iface)?;
        let attach_err = |source: ProgramError| {
            let busy =
                matches!(&source, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EBUSY));
            match busy {
                true => GateError::AlreadyAttached {
                    iface: iface.to_owned(),
                    holder: crate::netdev::attached_xdp(iface).map_or_else(
                        || "unknown program".into(),
                        |a| format!("program {} {}", a.program_id, a.program),
                    ),
                },
                false => GateError::Attach { iface: iface.to_owned(), mode, source },
            }
        };
        let path = self.pin_dir.join(format!("link-{iface}"));
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| GateError::Link(e.to_string()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| GateError::Link(e.to_string()))?;
            self.program(program)?.attach_to_link(link).map_err(attach_err)?;
            self.links.push((path, None));
            return Ok(());
        }
        let id = self.program(program)?.attach(iface, mode.aya()).map_err(attach_err)?;
        let link = self.program(program)?.take_link(id)?;
        let fd = FdLink::try_from(link)
            .map_err(|_| GateError::Link("this kernel attaches XDP without bpf_link (before 5.9)".into()))?;
        let pinned = fd.pin(&path).map_err(|e| GateError::Link(e.to_string()))?;
        self.links.push((path, Some(pinned)));
        Ok(())
    }

    /// What the links pinned in `pin_dir` hold now: for each interface a
    /// gate pinned a link for, the XDP program attached there (`None`:
    /// nothing is, the link is left from a run that is gone).
    pub fn attachments(pin_dir: &Path) -> Vec<(String, Option<crate::netdev::XdpAttachment>)> {
        let Ok(entries) = std::fs::read_dir(pin_dir) else { return Vec::new() };
        let mut found: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("link-").map(str::to_owned))
            .map(|iface| {
                let attached = crate::netdev::attached_xdp(&iface);
                (iface, attached)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Detaches the programs from the interfaces of [`Gate::attach`] and
    /// [`Gate::attach_internal`] (unpins their links; the programs go once
    /// the gate is dropped).
    pub fn detach(&mut self) -> Result<(), GateError> {
        for (path, _) in self.links.drain(..) {
            std::fs::remove_file(&path).map_err(|e| GateError::Link(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Lets spliced segments be redirected to these interfaces (by index),
    /// and to no others.
    pub fn set_redirect_interfaces(&mut self, ifindexes: &[u32]) -> Result<(), GateError> {
        let map = self.ebpf.map_mut(MAP_REDIRECT).ok_or(GateError::MissingMap(MAP_REDIRECT))?;
        let mut devs = DevMapHash::try_from(map).map_err(|source| GateError::Map { map: MAP_REDIRECT, source })?;
        let stale: Vec<u32> = devs.keys().filter_map(Result::ok).filter(|k| !ifindexes.contains(k)).collect();
        for k in stale {
            devs.remove(k).map_err(|source| GateError::Map { map: MAP_REDIRECT, source })?;
        }
        for &ifindex in ifindexes {
            devs.insert(ifindex, ifindex, None, 0).map_err(|e| GateError::Redirect(e.to_string()))?;
        }
        Ok(())
    }

    /// Makes the allowed-transit prefixes equal to `prefixes`.
    pub fn sync_transit(&mut self, prefixes: &[(std::net::IpAddr, u8)]) -> Result<(), GateError> {
        let map = self.ebpf.map_mut(MAP_TRANSIT).ok_or(GateError::MissingMap(MAP_TRANSIT))?;
        let mut trie: LpmTrie<&mut MapData, TransitKey, u8> =
            LpmTrie::try_from(map).map_err(|source| GateError::Map { map: MAP_TRANSIT, source })?;
        let wanted: Vec<LpmKey<TransitKey>> = prefixes.iter().map(|(a, len)| transit_key(*a, *len)).collect();
        let stale: Vec<LpmKey<TransitKey>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.iter().any(|w| (w.prefix_len(), w.data()) == (k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            trie.remove(&k).map_err(|source| GateError::Map { map: MAP_TRANSIT, source })?;
        }
        for k in &wanted {
            trie.insert(k, 1, 0).map_err(|source| GateError::Map { map: MAP_TRANSIT, source })?;
        }
        Ok(())
    }

    /// Writes one direction's splice entry, in its family's map.
    pub fn set_splice<A: SpliceAddr>(&mut self, key: &SpliceKey<A>, entry: &SpliceEntry<A>) -> Result<(), GateError>
    where
        SpliceKey<A>: Pod,
        SpliceEntry<A>: Pod,
    {
        let map = splice_map_name::<A>();
        self.hash_map::<SpliceKey<A>, SpliceEntry<A>>(map)?
            .insert(key, entry, 0)
            .map_err(|source| GateError::Map { map, source })
    }

    /// One direction's splice entry, if present.
    pub fn splice<A: SpliceAddr>(&mut self, key: &SpliceKey<A>) -> Result<Option<SpliceEntry<A>>, GateError>
    where
        SpliceKey<A>: Pod,
        SpliceEntry<A>: Pod,
    {
        let map = splice_map_name::<A>();
        match self.hash_map::<SpliceKey<A>, SpliceEntry<A>>(map)?.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(GateError::Map { map, source }),
        }
    }

    /// Removes one direction's splice entry (absent is fine).
    pub fn remove_splice<A: SpliceAddr>(&mut self, key: &SpliceKey<A>) -> Result<(), GateError>
    where
        SpliceKey<A>: Pod,
        SpliceEntry<A>: Pod,
    {
        let map = splice_map_name::<A>();
        absent_is_ok(self.hash_map::<SpliceKey<A>, SpliceEntry<A>>(map)?.remove(key))
            .map_err(|source| GateError::Map { map, source })
    }

    /// Every splice entry (both directions) of the family whose addresses
    /// are `A`.
    #[allow(clippy::type_complexity)]
    pub fn splices<A: SpliceAddr>(&mut self) -> Result<Vec<(SpliceKey<A>, SpliceEntry<A>)>, GateError>
    where
        SpliceKey<A>: Pod,
        SpliceEntry<A>: Pod,
    {
        let name = splice_map_name::<A>();
        let map = self.ebpf.map(name).ok_or(GateError::MissingMap(name))?;
        let splice: HashMap<&MapData, SpliceKey<A>, SpliceEntry<A>> =
            HashMap::try_from(map).map_err(|source| GateError::Map { map: name, source })?;
        Ok(splice.iter().filter_map(Result::ok).collect())
    }

    /// The splice entries of the family whose addresses are `A`, in the
    /// pinned map of a gate running with `pin_dir`.
    #[allow(clippy::type_complexity)]
    pub fn read_splices<A: SpliceAddr>(pin_dir: &Path) -> Result<Vec<(SpliceKey<A>, SpliceEntry<A>)>, GateError>
    where
        SpliceKey<A>: Pod,
        SpliceEntry<A>: Pod,
    {
        let name = splice_map_name::<A>();
        let data = MapData::from_pin(pin_dir.join(name)).map_err(|source| GateError::Map { map: name, source })?;
        let splice: HashMap<MapData, SpliceKey<A>, SpliceEntry<A>> =
            HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|source| GateError::Map { map: name, source })?;
        Ok(splice.iter().filter_map(Result::ok).collect())
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

    /// Makes the key map hold exactly `keys`: a pinned map outlives the
    /// daemon, and keys of agents revoked or deleted while it was down must
    /// not survive into the next run.
    pub fn sync_agent_keys(&mut self, keys: &[(u32, AgentKey)]) -> Result<(), GateError> {
        let map_err = |source| GateError::Map { map: MAP_AGENT_KEYS, source };
        let mut map = self.hash_map::<u32, AgentKey>(MAP_AGENT_KEYS)?;
        let stale: Vec<u32> =
            map.keys().filter_map(Result::ok).filter(|id| !keys.iter().any(|(k, _)| k == id)).collect();
        for id in stale {
            absent_is_ok(map.remove(&id)).map_err(map_err)?;
        }
        for (id, key) in keys {
            map.insert(id, key, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// The agent ids in the key map.
    pub fn agent_ids(&mut self) -> Result<Vec<u32>, GateError> {
        Ok(self.hash_map::<u32, AgentKey>(MAP_AGENT_KEYS)?.keys().filter_map(Result::ok).collect())
    }

    pub fn remove_agent_key(&mut self, agent_id: u32) -> Result<(), GateError> {
        absent_is_ok(self.hash_map::<u32, AgentKey>(MAP_AGENT_KEYS)?.remove(&agent_id))
            .map_err(|source| GateError::Map { map: MAP_AGENT_KEYS, source })
    }

    /// Writes the decision on the handshake of `decided` into its flow's
    /// entry: the state (`FLOW_*`) and, for an authorized flow, its owner.
    /// Only if the entry is still that handshake's: a newer handshake on
    /// the same 4-tuple (`ack::on_reused_tuple`) must not inherit a verdict
    /// it did not earn. The check and the write are two syscalls; the gate
    /// replacing the entry in between (microseconds) is not caught.
    pub fn set_flow_state(&mut self, decided: &GateEvent, state: u8, owner: FlowOwner) -> Result<FlowWrite, GateError> {
        let Some(mut entry) = self.flows.get(&decided.flow)? else { return Ok(FlowWrite::Gone) };
        if !decided.is_handshake_of(&entry) {
            return Ok(FlowWrite::Replaced(entry));
        }
        entry.state = state;
        entry.owner = owner;
        Ok(if self.flows.update(&decided.flow, &entry)? { FlowWrite::Written } else { FlowWrite::Gone })
    }

    /// Marks a flow denied (its target refused the splice): its next
    /// segments get the service's default response. Absent is fine.
    pub fn deny_flow(&mut self, flow: &FlowKey) -> Result<(), GateError> {
        if let Some(mut entry) = self.flows.get(flow)? {
            entry.state = ackgate_common::abi::FLOW_DENIED;
            self.flows.update(flow, &entry)?;
        }
        Ok(())
    }

    /// Forgets a flow: its next segment meets the gate as a stranger (no
    /// capability on a data segment: the service's default response).
    pub fn remove_flow(&mut self, flow: &FlowKey) -> Result<(), GateError> {
        self.flows.remove(flow).map(drop)
    }

    /// The flows in the pinned flow map of a gate running with `pin_dir`.
    pub fn read_flows(pin_dir: &Path) -> Result<Vec<(FlowKey, PendingFlow)>, GateError> {
        FlowTable::open(pin_dir)?.all()
    }

    /// Every flow the gate accepted, with its state.
    pub fn pending_flows(&mut self) -> Result<Vec<(FlowKey, PendingFlow)>, GateError> {
        self.flows.all()
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

/// The LPM key of an allowed-transit prefix (see `TransitKey`).
fn transit_key(addr: std::net::IpAddr, len: u8) -> LpmKey<TransitKey> {
    let family = |f: u8| u32::from_ne_bytes([f, 0, 0, 0]);
    let data = match addr {
        std::net::IpAddr::V4(a) => [family(FAMILY_IPV4), u32::from_ne_bytes(a.octets()), 0, 0, 0],
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [family(FAMILY_IPV6), w(0), w(4), w(8), w(12)]
        }
    };
    LpmKey::new(32 + len as u32, data)
}

fn check_iface_name(iface: &str) -> Result<(), GateError> {
    if !ackgate_common::host::is_valid_iface_name(iface) {
        return Err(GateError::BadInterfaceName(iface.to_owned()));
    }
    Ok(())
}
