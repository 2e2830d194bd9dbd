//! Mutated frames through the real gate (`gateway-ebpf`, both programs) by
//! `BPF_PROG_TEST_RUN`, one frame per run, with the maps as a running gate
//! holds them: services of every policy, enrolled agents, flows pending,
//! authorized and denied, spliced flows established and connecting, and
//! fresh handshakes whose cookies the gate issued itself.
//!
//! Each frame starts from a valid seed (SYN, stamped or plain handshake
//! ACK, segment of a held flow, spliced segment from either side, the
//! target's SYN/ACK, an ICMP error about a spliced segment) and is bent
//! field by field, then byte by byte (`mutate`). The oracle (`oracle`)
//! reads what each frame is and may earn, and checks the verdict, the one
//! reason counted, the events, the held copies and the bytes that leave.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::time::{Duration, Instant};

use ackgate_common::abi::{
    FLOW_AUTHORIZED, FLOW_DENIED, FLOW_PENDING, FlowKey, FlowOwner, MAP_COUNTERS, MAP_PENDING, PendingFlow,
    RESPONSE_DROP, RESPONSE_PAGE, RESPONSE_RESET, SPLICE_F_TO_TARGET, SpliceEntry, SpliceKey, port_field, v4_words,
};
use ackgate_common::mac::MacKey;
use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use ackgate_common::option::OptionId;
use ackgate_common::reason;
use ackgate_common::reply::{TCP_CWR, TCP_ECE};
use ackgate_common::splice::{SpliceSetup, TargetAnswer, complete};
use ackgate_gateway::events::Events;
use ackgate_gateway::splice::HeldRing;
use aya::maps::{HashMap, MapData};
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;

use super::mutate::{self, Body, Domain, Draft, Opt, Palette};
use super::oracle::{self, Authority, Known, Outcome, Seen};
use super::{Violation, Violations, case_rng};
use crate::fixture::{AGENT_ID, AGENT_KEY, TestGate, linux_handshake, service};
use crate::packet::{IcmpFrame, TcpFrame, stamp};
use crate::table::{Program, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const OTHER_CLIENT: [u8; 4] = [10, 0, 0, 9];
const VIP: [u8; 4] = [10, 0, 0, 1];
const VIP_RESET: [u8; 4] = [10, 0, 0, 3];
const VIP_PAGE: [u8; 4] = [10, 0, 0, 4];
const VIP_STEALTH: [u8; 4] = [10, 0, 0, 5];
const VIP_STEALTH_RESET: [u8; 4] = [10, 0, 0, 6];
const PORT: u16 = 443;
const TARGET: [u8; 4] = [10, 99, 0, 2];
const TARGET_ROUTER: [u8; 4] = [10, 99, 0, 1];
const TPORT: u16 = 8443;

/// A second enrolled agent, so that a capability can name one agent and
/// carry the other's MAC.
const OTHER_AGENT: u32 = 8;
const OTHER_KEY: MacKey = MacKey { k0: 0x1111_2222_3333_4444, k1: 0x5555_6666_7777_8888 };

/// Services: (VIP, policy, stealth).
const SERVICES: [([u8; 4], u8, bool); 5] = [
    (VIP, RESPONSE_DROP, false),
    (VIP_RESET, RESPONSE_RESET, false),
    (VIP_PAGE, RESPONSE_PAGE, false),
    (VIP_STEALTH, RESPONSE_DROP, true),
    (VIP_STEALTH_RESET, RESPONSE_RESET, true),
];

/// Flows the gate holds from the start: client port, VIP, state.
const HELD_FLOWS: [(u16, [u8; 4], u8); 4] =
    [(1001, VIP, FLOW_PENDING), (1002, VIP, FLOW_AUTHORIZED), (1003, VIP, FLOW_DENIED), (1004, VIP_RESET, FLOW_DENIED)];

/// Spliced flows: client port, timestamps agreed, still connecting.
const SPLICED: [(u16, bool, bool); 3] = [(2001, true, false), (2002, false, false), (2003, true, true)];
const CLIENT_ISN: u32 = 0x1000_0000;
const COOKIE: u32 = 0xc00c_1e00;
const TARGET_ISN: u32 = 0x7a76_0000;
const CLIENT_TS: u32 = 5000;
const COOKIE_TS: u32 = 0x3000_00d7;
const TARGET_TS: u32 = 0x0900_0000;

/// Frames between two resets of the maps (flows and splices as at the
/// start) and of the handshakes the stamped ACKs answer.
const BATCH: u64 = 4096;
/// Fresh handshakes per batch.
const POOL: usize = 32;

/// Where a frame started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeedKind {
    Syn,
    Stamped,
    Ack,
    Held,
    Client,
    Target,
    SynAck,
    Icmp,
}

const SEED_KINDS: usize = 8;
const SEED_NAMES: [&str; SEED_KINDS] = ["syn", "stamped", "ack", "held", "client", "target", "synack", "icmp"];

/// A handshake the gate answered in this batch.
struct Handshake {
    syn: TcpFrame,
    cookie: u32,
    /// The cookie SYN/ACK's TSval, when the SYN had timestamps.
    tsval: Option<u32>,
}

/// Frames per (program, reason, verdict), by seed, and how many carried a
/// valid stamp.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub frames: u64,
    pub by_seed: [u64; SEED_KINDS],
    pub stamped: u64,
}

#[derive(Debug, Default)]
pub struct GateReport {
    pub seed: u64,
    pub frames: u64,
    pub elapsed: Duration,
    /// (program, reason label, verdict) → frames.
    pub rows: BTreeMap<(&'static str, &'static str, &'static str), Row>,
    pub violations: Violations,
}

impl std::fmt::Display for GateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let stamped: u64 = self.rows.values().map(|r| r.stamped).sum();
        writeln!(
            f,
            "gate: {} frames, seed {:#x}, {secs:.1} s ({:.0} frames/s); {stamped} carried a valid stamp",
            self.frames,
            self.seed,
            self.frames as f64 / secs.max(1e-9),
        )?;
        write!(f, "{:<9} {:<13} {:<27} {:>8}", "program", "verdict", "reason", "frames")?;
        for name in SEED_NAMES {
            write!(f, " {name:>8}")?;
        }
        writeln!(f, " {:>8}", "stamped")?;
        for ((program, label, verdict), row) in &self.rows {
            write!(f, "{program:<9} {verdict:<13} {label:<27} {:>8}", row.frames)?;
            for n in row.by_seed {
                write!(f, " {n:>8}")?;
            }
            writeln!(f, " {:>8}", row.stamped)?;
        }
        writeln!(f, "violations: {}", self.violations.total)?;
        for v in &self.violations.kept {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

fn verdict_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "other",
    }
}

/// The gate's reason counters, read in one `BPF_MAP_LOOKUP_BATCH` per
/// run: aya reads a per-CPU array one key per syscall, forty of them per
/// frame, which would make a million frames take minutes instead of
/// seconds.
struct ReasonCounters {
    map: MapData,
    cpus: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
}

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

impl ReasonCounters {
    fn open(gate: &TestGate) -> Self {
        let path = gate.gate.pin_dir().join(MAP_COUNTERS);
        let map = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let cpus = aya::util::nr_cpus().unwrap_or_else(|(f, e)| panic!("{f}: {e}"));
        let n = reason::COUNT as usize;
        Self { map, cpus, keys: vec![0; n], values: vec![0; n * cpus] }
    }

    /// Totals over all CPUs, indexed by reason.
    fn totals(&mut self) -> Vec<u64> {
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: (&raw mut out_batch) as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.values.as_mut_ptr() as u64,
            count: reason::COUNT,
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of `count` keys and `count`
        // per-CPU values (8 bytes per CPU each), alive for the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>() as u32) };
        // ENOENT: the walk reached the end of the array, with every entry read.
        let done = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        assert!(done && attr.count == reason::COUNT, "reading the reason counters in one batch: rc {rc}");
        let mut totals = vec![0; reason::COUNT as usize];
        for (i, &key) in self.keys.iter().enumerate() {
            totals[key as usize] = self.values[i * self.cpus..(i + 1) * self.cpus].iter().sum();
        }
        totals
    }
}

/// The gate under fuzzing, its maps as at the start of a batch, and the
/// oracle's view of them.
pub struct GateFuzz {
    gate: TestGate,
    events: Events,
    held: HeldRing,
    counters: ReasonCounters,
    last: Vec<u64>,
    known: Known,
    palette: Palette,
    held_flows: Vec<(FlowKey, PendingFlow)>,
    splices: Vec<(SpliceKey, SpliceEntry)>,
    pool: Vec<Handshake>,
    next_port: u16,
}

impl Default for GateFuzz {
    fn default() -> Self {
        Self::new()
    }
}

impl GateFuzz {
    /// Loads the gate (in a fresh network namespace for the calling
    /// thread, see `TestGate::new`) and fills its maps.
    pub fn new() -> Self {
        let services: Vec<_> =
            SERVICES.iter().map(|&(vip, policy, stealth)| service(vip, PORT, policy, stealth)).collect();
        let mut gate = TestGate::new("fuzz", &services);
        gate.gate.set_agent_key(OTHER_AGENT, OTHER_KEY).unwrap_or_else(|e| panic!("second agent key: {e}"));
        let events = Events::take(gate.gate.ebpf_mut()).unwrap_or_else(|e| panic!("event ring: {e}"));
        let held = HeldRing::take(gate.gate.ebpf_mut()).unwrap_or_else(|e| panic!("held ring: {e}"));
        let counters = ReasonCounters::open(&gate);
        let held_flows = HELD_FLOWS.iter().map(|&(port, vip, state)| held_flow(port, vip, state)).collect::<Vec<_>>();
        let splices: Vec<(SpliceKey, SpliceEntry)> =
            SPLICED.iter().flat_map(|&(port, ts, connecting)| splice_entries(port, ts, connecting)).collect();
        let option = OptionId::default();
        let known = Known {
            option,
            services: SERVICES.iter().map(|&(vip, _, stealth)| ((vip, PORT), stealth)).collect(),
            keys: vec![(AGENT_ID, AGENT_KEY), (OTHER_AGENT, OTHER_KEY)],
            splices: splices.iter().map(|(k, e)| (*k, e.flags & SPLICE_F_TO_TARGET != 0)).collect(),
            flows: HashSet::new(),
        };
        let mut ports = vec![PORT, TPORT, 22, 80];
        ports.extend(HELD_FLOWS.iter().map(|f| f.0));
        ports.extend(SPLICED.iter().map(|s| s.0));
        let palette = Palette {
            option,
            addrs: vec![CLIENT, OTHER_CLIENT, VIP, VIP_RESET, VIP_PAGE, VIP_STEALTH, VIP_STEALTH_RESET, TARGET],
            ports,
            agents: vec![
                (AGENT_ID, AGENT_KEY),
                (OTHER_AGENT, OTHER_KEY),
                (4242, AGENT_KEY),
                (AGENT_ID, AGENT_KEY.with_k0(1)),
                (OTHER_AGENT, AGENT_KEY),
            ],
        };
        let mut fuzz = Self {
            gate,
            events,
            held,
            counters,
            last: Vec::new(),
            known,
            palette,
            held_flows,
            splices,
            pool: Vec::new(),
            next_port: 3000,
        };
        fuzz.reset();
        fuzz
    }

    /// `frames` mutated frames from `seed`.
    pub fn run(&mut self, seed: u64, frames: u64) -> GateReport {
        let mut report = GateReport { seed, frames, ..GateReport::default() };
        let started = Instant::now();
        for case in 0..frames {
            if case > 0 && case % BATCH == 0 {
                self.end_batch(case, &mut report.violations);
            }
            let mut rng = case_rng(seed, case);
            let (kind, program, bytes) = self.frame(&mut rng);
            let judged = self.run_one(program, &bytes, None);
            let row =
                report.rows.entry((program_name(program), judged.label, verdict_name(judged.action))).or_default();
            row.frames += 1;
            row.by_seed[kind as usize] += 1;
            row.stamped += u64::from(judged.stamped);
            for what in judged.problems {
                let what = format!("{} frame from a {} seed: {what}", program_name(program), SEED_NAMES[kind as usize]);
                report.violations.push(Violation { target: "gate", case, what, bytes: bytes.clone() });
            }
        }
        self.end_batch(frames, &mut report.violations);
        report.elapsed = started.elapsed();
        report
    }

    /// A handshake ACK of a fresh handshake, stamped as the agent stamps it.
    pub fn stamped_ack(&mut self) -> Vec<u8> {
        let port = self.take_port();
        let h = self.handshake(VIP, port, true);
        self.last = self.counters.totals();
        let mut ack = handshake_ack(&h);
        stamp::ack(&mut ack, OptionId::default(), AGENT_ID, &AGENT_KEY);
        ack.build()
    }

    /// Runs `frame` through the edge program; what the oracle finds wrong.
    pub fn judge(&mut self, frame: &[u8]) -> Vec<String> {
        self.run_one(Program::Edge, frame, None).problems
    }

    /// As [`GateFuzz::judge`], as though the frame carried no valid stamp,
    /// whatever it carries: what the oracle says of a gate that lets an
    /// unstamped frame through.
    pub fn judge_as_unstamped(&mut self, frame: &[u8]) -> Vec<String> {
        self.run_one(Program::Edge, frame, Some(Authority::default())).problems
    }

    /// Runs one frame and judges it; `authority` overrides the oracle's.
    fn run_one(&mut self, program: Program, bytes: &[u8], authority: Option<Authority>) -> Judged {
        let out = match program {
            Program::Edge => self.gate.run(bytes),
            Program::Internal => self.gate.run_internal(bytes),
        };
        let now = self.counters.totals();
        let moved: Vec<(u32, u64)> = now
            .iter()
            .zip(&self.last)
            .enumerate()
            .filter(|(_, (n, l))| n != l)
            .map(|(i, (n, l))| (i as u32, n.wrapping_sub(*l)))
            .collect();
        self.last = now;
        let events = self.events.drain();
        let held = self.held.drain();
        let seen = Seen::of(bytes);
        let found = Authority::of(&seen, &self.known, stamp::tai_tick());
        let authority = authority.unwrap_or(found);
        let outcome = Outcome {
            program,
            input: bytes,
            action: out.action,
            out: &out.frame,
            moved: &moved,
            events: &events,
            held: &held,
        };
        let problems = oracle::judge(&outcome, &seen, &authority, &self.known);
        let reason = outcome.reason();
        if matches!(reason, Some(reason::ACK_PENDING | reason::ACK_PENDING_REPLACED))
            && let Some(s) = authority.ack
        {
            self.known.flows.insert(s.flow);
        }
        let label = reason.and_then(|r| reason::LABELS.get(r as usize).copied()).unwrap_or("(not one reason)");
        Judged { action: out.action, label, stamped: found.ack.is_some() || found.stealth_syn, problems }
    }

    /// Checks what a batch left in the maps (only stamped flows added, no
    /// splice made up), then puts the maps back as at the start and takes
    /// fresh handshakes.
    fn end_batch(&mut self, case: u64, violations: &mut Violations) {
        let keys: Vec<FlowKey> = self.flow_map().keys().filter_map(Result::ok).collect();
        for key in keys.into_iter().filter(|k| !self.known.flows.contains(k)) {
            let what = format!("the flow map holds {key:?}, which no stamped ACK announced");
            violations.push(Violation { target: "gate", case, what, bytes: Vec::new() });
        }
        let configured: HashSet<SpliceKey> = self.splices.iter().map(|(k, _)| *k).collect();
        for (key, _) in self.gate.gate.splices().unwrap_or_else(|e| panic!("reading the splice map: {e}")) {
            if !configured.contains(&key) {
                let what = format!("the splice map holds {key:?}, which nobody configured");
                violations.push(Violation { target: "gate", case, what, bytes: Vec::new() });
            }
        }
        self.reset();
    }

    fn flow_map(&mut self) -> HashMap<&mut MapData, FlowKey, PendingFlow> {
        let map = self.gate.gate.ebpf_mut().map_mut(MAP_PENDING).unwrap_or_else(|| panic!("no {MAP_PENDING}"));
        HashMap::try_from(map).unwrap_or_else(|e| panic!("{MAP_PENDING}: {e}"))
    }

    fn reset(&mut self) {
        let held_flows = self.held_flows.clone();
        let mut flows = self.flow_map();
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = flows.remove(&key);
        }
        for (key, flow) in &held_flows {
            flows.insert(key, flow, 0).unwrap_or_else(|e| panic!("writing a held flow: {e}"));
        }
        self.known.flows = held_flows.iter().map(|(k, _)| *k).collect();
        for (key, entry) in &self.splices {
            self.gate.gate.set_splice(key, entry).unwrap_or_else(|e| panic!("writing a splice entry: {e}"));
        }
        self.pool.clear();
        for i in 0..POOL {
            let (vip, _, stealth) = SERVICES[i % SERVICES.len()];
            let port = self.take_port();
            let h = self.handshake(vip, port, stealth || i % 4 != 3);
            self.pool.push(h);
        }
        self.events.drain();
        self.held.drain();
        self.last = self.counters.totals();
    }

    fn take_port(&mut self) -> u16 {
        self.next_port = if self.next_port >= 60000 { 3000 } else { self.next_port + 1 };
        self.next_port
    }

    /// A SYN to `vip` (stamped, for a stealth service) and the cookie the
    /// gate answered it with.
    fn handshake(&mut self, vip: [u8; 4], port: u16, timestamps: bool) -> Handshake {
        let mut syn = TcpFrame::new(CLIENT, port, vip, PORT, TCP_SYN);
        if timestamps {
            syn = syn.linux_syn_options();
        }
        syn.seq = 0x5000_0000 ^ u32::from(port) << 8;
        if SERVICES.iter().any(|s| s.0 == vip && s.2) {
            stamp::syn(&mut syn, OptionId::default(), AGENT_ID, &AGENT_KEY, stamp::tai_tick());
        }
        let out = self.gate.run(&syn.build());
        assert_eq!(out.action, XDP_TX, "a SYN to {vip:?} must get a cookie SYN/ACK");
        let l4 = 34;
        let word =
            |at: usize| u32::from_be_bytes([out.frame[at], out.frame[at + 1], out.frame[at + 2], out.frame[at + 3]]);
        Handshake { cookie: word(l4 + 4), tsval: timestamps.then(|| word(l4 + 28)), syn }
    }

    /// The next frame: a seed, mutated.
    fn frame(&self, rng: &mut ChaCha8Rng) -> (SeedKind, Program, Vec<u8>) {
        let (kind, mut program, mut body) = self.seed(rng);
        if rng.random_bool(0.05) {
            program = if program == Program::Edge { Program::Internal } else { Program::Edge };
        }
        let style = rng.random_range(0..20);
        if style >= 2 {
            mutate::structural(&mut body, rng, &self.palette);
        }
        let mut bytes = body.build(self.palette.option);
        if style >= 11 {
            mutate::bytes(&mut bytes, rng);
            if rng.random_bool(0.5) {
                mutate::fix_checksums(&mut bytes);
            }
        } else if rng.random_bool(0.05) {
            mutate::break_checksum(&mut bytes, rng);
        }
        (kind, program, bytes)
    }

    fn seed(&self, rng: &mut ChaCha8Rng) -> (SeedKind, Program, Body) {
        let (kind, program) = match rng.random_range(0..100) {
            0..15 => (SeedKind::Syn, Program::Edge),
            15..40 => (SeedKind::Stamped, Program::Edge),
            40..48 => (SeedKind::Ack, Program::Edge),
            48..58 => (SeedKind::Held, Program::Edge),
            58..73 => (SeedKind::Client, Program::Edge),
            73..83 => (SeedKind::Target, Program::Internal),
            83..88 => (SeedKind::SynAck, Program::Internal),
            _ => (SeedKind::Icmp, if rng.random_bool(0.5) { Program::Edge } else { Program::Internal }),
        };
        let body = match kind {
            SeedKind::Syn => Body::Tcp(syn_seed(rng)),
            SeedKind::Stamped | SeedKind::Ack => {
                let h = self.pool.choose(rng).unwrap_or_else(|| unreachable!("the pool is filled at every reset"));
                let mut ack = handshake_ack(h);
                let mut opts = Vec::new();
                if let Some(tsval) = h.tsval {
                    opts = vec![Opt::Bytes(vec![1]), Opt::Bytes(vec![1]), Opt::Bytes(timestamp(rng.random(), tsval))];
                }
                if kind == SeedKind::Stamped {
                    let (agent, key) =
                        if rng.random_bool(0.8) { (AGENT_ID, AGENT_KEY) } else { (OTHER_AGENT, OTHER_KEY) };
                    opts.push(Opt::Cap { agent, key, domain: Domain::Ack });
                }
                if rng.random_bool(0.1) {
                    ack.flags |= TCP_PSH;
                    ack.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
                }
                Body::Tcp(Draft::new(ack, opts))
            }
            SeedKind::Held => Body::Tcp(self.held_seed(rng)),
            SeedKind::Client => Body::Tcp(client_seed(rng)),
            SeedKind::Target => Body::Tcp(target_seed(rng)),
            SeedKind::SynAck => Body::Tcp(synack_seed()),
            SeedKind::Icmp => Body::Icmp(icmp_seed(rng, program)),
        };
        (kind, program, body)
    }

    /// A segment of a flow the gate holds: data, its end, or a new
    /// handshake on its 4-tuple with a stamp.
    fn held_seed(&self, rng: &mut ChaCha8Rng) -> Draft {
        let (key, flow) = self.held_flows.choose(rng).unwrap_or_else(|| unreachable!("held flows are constant"));
        let ((client, port), (vip, vport)) = (key.client_v4(), key.service_v4());
        let mut f = TcpFrame::new(client, port, vip, vport, TCP_ACK | TCP_PSH);
        f.seq = flow.client_isn.wrapping_add(1 + rng.random_range(0..3000));
        f.ack = flow.server_isn.wrapping_add(1);
        f.window = 502;
        let mut opts = Vec::new();
        match rng.random_range(0..10) {
            0 | 1 => {
                f.flags = TCP_ACK;
                f.ack = rng.random();
                opts.push(Opt::Cap { agent: AGENT_ID, key: AGENT_KEY, domain: Domain::Ack });
            }
            2 => f.flags = TCP_RST | TCP_ACK,
            3 => f.flags = TCP_FIN | TCP_ACK,
            _ => f.payload = (0..rng.random_range(1..400)).map(|_| rng.random()).collect(),
        }
        Draft::new(f, opts)
    }
}

struct Judged {
    action: u32,
    label: &'static str,
    stamped: bool,
    problems: Vec<String>,
}

fn program_name(p: Program) -> &'static str {
    match p {
        Program::Edge => "edge",
        Program::Internal => "internal",
    }
}

fn held_flow(port: u16, vip: [u8; 4], state: u8) -> (FlowKey, PendingFlow) {
    let key = FlowKey::ipv4(CLIENT, vip, port.to_be_bytes(), PORT.to_be_bytes());
    let flow = PendingFlow {
        created_ns: 0,
        owner: FlowOwner::default(),
        agent_id: AGENT_ID,
        client_isn: CLIENT_ISN ^ u32::from(port),
        server_isn: COOKIE ^ u32::from(port),
        state,
        _pad0: 0,
        _pad1: 0,
        handshake: linux_handshake(CLIENT_TS, COOKIE_TS),
        held_bytes: 0,
        _pad2: 0,
    };
    (key, flow)
}

fn splice_setup(port: u16, ts: bool) -> SpliceSetup {
    let mut handshake = linux_handshake(CLIENT_TS, COOKIE_TS);
    if !ts {
        handshake.ts_ok = 0;
    }
    SpliceSetup {
        client: FlowKey::ipv4(CLIENT, VIP, port.to_be_bytes(), PORT.to_be_bytes()),
        source_addr: v4_words(CLIENT),
        source_port: port_field(port.to_be_bytes()),
        target_addr: v4_words(TARGET),
        target_port: port_field(TPORT.to_be_bytes()),
        client_isn: CLIENT_ISN,
        cookie_isn: COOKIE,
        handshake,
        gateway_wscale: 7,
        owner: FlowOwner { user_tag: 1, machine_tag: 2 },
    }
}

/// Both directions' entries of a spliced flow.
fn splice_entries(port: u16, ts: bool, connecting: bool) -> [(SpliceKey, SpliceEntry); 2] {
    let s = splice_setup(port, ts);
    let (mut to_target, mut to_client) = s.connecting();
    if !connecting {
        let tsval = ts.then_some(TARGET_TS);
        complete(&mut to_target, &mut to_client, &TargetAnswer { isn: TARGET_ISN, wscale: 9, tsval });
    }
    [(s.client_key(), to_target), (s.target_key(), to_client)]
}

fn timestamp(tsval: u32, tsecr: u32) -> Vec<u8> {
    [&[8u8, 10][..], &tsval.to_be_bytes(), &tsecr.to_be_bytes()].concat()
}

/// The client's handshake ACK for `h`, unstamped.
fn handshake_ack(h: &Handshake) -> TcpFrame {
    let s = &h.syn;
    let mut f = TcpFrame::new(s.saddr, s.sport, s.daddr, s.dport, TCP_ACK);
    f.seq = s.seq.wrapping_add(1);
    f.ack = h.cookie.wrapping_add(1);
    f.window = 502;
    if let Some(tsval) = h.tsval {
        f.tcp_options = [&[1u8, 1][..], &timestamp(CLIENT_TS, tsval)].concat();
    }
    f
}

/// A SYN as Linux sends it (or barer) to any service; to a stealth one
/// mostly stamped.
fn syn_seed(rng: &mut ChaCha8Rng) -> Draft {
    let (vip, _, stealth) = *SERVICES.choose(rng).unwrap_or(&SERVICES[0]);
    let mut f = TcpFrame::new(CLIENT, rng.random_range(3000..60000), vip, PORT, TCP_SYN);
    f.seq = rng.random();
    let mut opts = match rng.random_range(0..10) {
        0 | 1 => Vec::new(),
        2 => vec![Opt::Bytes(vec![2, 4, 5, 0xb4])],
        _ => vec![
            Opt::Bytes(vec![2, 4, 5, 0xb4]),
            Opt::Bytes(vec![4, 2]),
            Opt::Bytes(timestamp(rng.random(), 0)),
            Opt::Bytes(vec![1]),
            Opt::Bytes(vec![3, 3, 7]),
        ],
    };
    if stealth && rng.random_bool(0.7) {
        opts.push(Opt::Cap { agent: AGENT_ID, key: AGENT_KEY, domain: Domain::Syn(stamp::tai_tick()) });
    }
    if rng.random_bool(0.1) {
        f.flags |= TCP_ECE | TCP_CWR;
    }
    if rng.random_bool(0.1) {
        f.payload = (0..rng.random_range(1..600)).map(|_| rng.random()).collect();
    }
    Draft::new(f, opts)
}

/// A client segment of a spliced flow: data, SACK, FIN or RST.
fn client_seed(rng: &mut ChaCha8Rng) -> Draft {
    let &(port, ts, _) = SPLICED.choose(rng).unwrap_or(&SPLICED[0]);
    let mut f = TcpFrame::new(CLIENT, port, VIP, PORT, TCP_ACK | TCP_PSH);
    f.seq = CLIENT_ISN.wrapping_add(1 + rng.random_range(0..5000));
    f.ack = COOKIE.wrapping_add(1 + rng.random_range(0..5000));
    f.window = rng.random_range(100..2000);
    let mut opts = Vec::new();
    if ts {
        opts = vec![Opt::Bytes(vec![1]), Opt::Bytes(vec![1]), Opt::Bytes(timestamp(CLIENT_TS + 10, COOKIE_TS + 5))];
    }
    match rng.random_range(0..8) {
        0 => {
            let left = COOKIE.wrapping_add(1000);
            let sack = [&[5u8, 10][..], &left.to_be_bytes(), &left.wrapping_add(500).to_be_bytes()].concat();
            opts.extend([Opt::Bytes(vec![1]), Opt::Bytes(vec![1]), Opt::Bytes(sack)]);
            f.flags = TCP_ACK;
        }
        1 => f.flags = TCP_FIN | TCP_ACK,
        2 => f.flags = TCP_RST | TCP_ACK,
        _ => f.payload = (0..rng.random_range(1..1400)).map(|_| rng.random()).collect(),
    }
    Draft::new(f, opts)
}

/// The target's side of an established splice.
fn target_seed(rng: &mut ChaCha8Rng) -> Draft {
    let &(port, ts, _) = SPLICED[..2].choose(rng).unwrap_or(&SPLICED[0]);
    let mut f = TcpFrame::new(TARGET, TPORT, CLIENT, port, TCP_ACK | TCP_PSH);
    f.seq = TARGET_ISN.wrapping_add(1 + rng.random_range(0..5000));
    f.ack = CLIENT_ISN.wrapping_add(1 + rng.random_range(0..5000));
    let mut opts = Vec::new();
    if ts {
        opts = vec![Opt::Bytes(vec![1]), Opt::Bytes(vec![1]), Opt::Bytes(timestamp(TARGET_TS + 7, CLIENT_TS + 10))];
    }
    match rng.random_range(0..6) {
        0 => f.flags = TCP_FIN | TCP_ACK,
        1 => f.flags = TCP_RST | TCP_ACK,
        _ => f.payload = (0..rng.random_range(1..1400)).map(|_| rng.random()).collect(),
    }
    Draft::new(f, opts)
}

/// The target's SYN/ACK to the splice that is connecting.
fn synack_seed() -> Draft {
    let &(port, _, _) = SPLICED.iter().find(|s| s.2).unwrap_or(&SPLICED[2]);
    let mut f = TcpFrame::new(TARGET, TPORT, CLIENT, port, TCP_SYN | TCP_ACK);
    f.seq = TARGET_ISN;
    f.ack = CLIENT_ISN.wrapping_add(1);
    f.window = 65160;
    let opts = vec![
        Opt::Bytes(vec![2, 4, 5, 0xb4]),
        Opt::Bytes(vec![4, 2]),
        Opt::Bytes(timestamp(TARGET_TS, CLIENT_TS)),
        Opt::Bytes(vec![1]),
        Opt::Bytes(vec![3, 3, 9]),
    ];
    Draft::new(f, opts)
}

/// "Fragmentation needed" about a segment the gateway sent on a spliced
/// flow: towards the client (arriving on the edge) or the target
/// (arriving on the internal side).
fn icmp_seed(rng: &mut ChaCha8Rng, program: Program) -> IcmpFrame {
    let &(port, _, _) = SPLICED.choose(rng).unwrap_or(&SPLICED[0]);
    let (from, quoted) = match program {
        Program::Edge => (CLIENT, TcpFrame::new(VIP, PORT, CLIENT, port, TCP_ACK | TCP_PSH)),
        Program::Internal => (TARGET_ROUTER, TcpFrame::new(CLIENT, port, TARGET, TPORT, TCP_ACK | TCP_PSH)),
    };
    let mut quoted = quoted;
    quoted.payload = vec![0x5a; 1400];
    let to = quoted.saddr;
    let quote_len = if rng.random_bool(0.5) { 28 } else { 60 };
    IcmpFrame::frag_needed(from, to, 1280, &quoted.build(), quote_len)
}
