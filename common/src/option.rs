//! The capability TCP option (docs/design.md §3) and the TCP option scanner.
//!
//! Layout, 20 bytes, a multiple of 4 so that it can follow 4-byte aligned
//! options: a handshake ACK with timestamps (20 + 12) plus this option is
//! 52 bytes, inside the 60-byte TCP header limit.
//!
//! ```text
//!  0      1      2      3      4        5..8      8..12      12..20
//! +------+------+-------------+--------+---------+----------+---------+
//! | kind | len  | ExID (BE)   | version| reserved| agent id | MAC     |
//! | 253  | 20   | 0xAC47      | 1      | 0 0 0   | u32 BE   | 8 bytes |
//! +------+------+-------------+--------+---------+----------+---------+
//! ```
//! Kind 253 is an RFC 4727 experimental kind shared through an RFC 6994
//! experiment id; both are configurable.

use core::mem::MaybeUninit;

use crate::net::{Frame, TcpSegment, Wire};

pub const DEFAULT_OPTION_KIND: u8 = 253;
pub const DEFAULT_EXPERIMENT_ID: u16 = 0xac47;
pub const CAPABILITY_VERSION: u8 = 1;
pub const CAPABILITY_LEN: usize = 20;

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOLEN_MSS: u8 = 4;
pub const TCPOPT_WINDOW: u8 = 3;
pub const TCPOLEN_WINDOW: u8 = 3;
pub const TCPOPT_SACK_PERM: u8 = 4;
pub const TCPOLEN_SACK_PERM: u8 = 2;
pub const TCPOPT_SACK: u8 = 5;
pub const TCPOPT_TIMESTAMP: u8 = 8;
pub const TCPOLEN_TIMESTAMP: u8 = 10;
/// `OptionScan::wscale` when the segment has no window-scale option.
pub const NO_WSCALE: u8 = 0xff;
/// Largest window scale RFC 7323 allows (larger values are read as 14).
pub const MAX_WSCALE: u8 = 14;
/// At most 40 bytes of options, and every step consumes at least one.
pub const MAX_OPTION_BYTES: usize = 40;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityOption {
    pub kind: u8,
    pub len: u8,
    pub exid: [u8; 2],
    pub version: u8,
    pub reserved: [u8; 3],
    pub agent_id: [u8; 4],
    pub mac: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<CapabilityOption>() == CAPABILITY_LEN);
unsafe impl Wire for CapabilityOption {}

impl CapabilityOption {
    pub fn new(kind: u8, exid: u16, agent_id: u32, mac: u64) -> Self {
        Self {
            kind,
            len: CAPABILITY_LEN as u8,
            exid: exid.to_be_bytes(),
            version: CAPABILITY_VERSION,
            reserved: [0; 3],
            agent_id: agent_id.to_be_bytes(),
            mac: mac.to_be_bytes(),
        }
    }
    #[inline(always)]
    pub fn agent_id(&self) -> u32 {
        u32::from_be_bytes(self.agent_id)
    }
    #[inline(always)]
    pub fn mac(&self) -> u64 {
        u64::from_be_bytes(self.mac)
    }
    /// Version and reserved bytes are as this release writes them.
    #[inline(always)]
    pub fn is_current(&self) -> bool {
        self.version == CAPABILITY_VERSION && self.reserved == [0; 3]
    }
}

/// Which TCP option carries the capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionId {
    pub kind: u8,
    pub exid: u16,
}

impl Default for OptionId {
    fn default() -> Self {
        Self { kind: DEFAULT_OPTION_KIND, exid: DEFAULT_EXPERIMENT_ID }
    }
}

/// The `[option]` table of the gateway's and the agent's TOML configs; both
/// ends must agree.
#[cfg(feature = "proto")]
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSection {
    /// TCP option kind: 253 or 254 (RFC 4727 experimental).
    #[serde(default = "default_kind")]
    pub kind: u8,
    /// RFC 6994 experiment id that follows the kind.
    #[serde(default = "default_exid")]
    pub experiment_id: u16,
}

#[cfg(feature = "proto")]
impl Default for OptionSection {
    fn default() -> Self {
        Self { kind: DEFAULT_OPTION_KIND, experiment_id: DEFAULT_EXPERIMENT_ID }
    }
}

#[cfg(feature = "proto")]
impl OptionSection {
    /// The option these settings name, or why they are unusable.
    pub fn option_id(&self) -> Result<OptionId, std::string::String> {
        if matches!(self.kind, 0..=1) {
            return Err(std::format!("option.kind = {} is EOL/NOP; use an experimental kind (253 or 254)", self.kind));
        }
        Ok(OptionId { kind: self.kind, exid: self.experiment_id })
    }
}

#[cfg(feature = "proto")]
fn default_kind() -> u8 {
    DEFAULT_OPTION_KIND
}

#[cfg(feature = "proto")]
fn default_exid() -> u16 {
    DEFAULT_EXPERIMENT_ID
}

/// What the option list says about the capability.
///
/// A tag only: the option's fields travel beside it in [`OptionScan`]. An
/// enum carrying a payload leaves the payload bytes undefined in the other
/// variants, and LLVM then spills an uninitialised register, which the
/// verifier refuses ("R5 !read_ok").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Absent,
    /// Exactly one capability option of our kind, ExID, length and version;
    /// its fields are in [`OptionScan`].
    Present,
    /// The option list is unparseable (an option runs past the header or
    /// has a length below 2), or the capability has the wrong length or
    /// version, non-zero reserved bytes, or appears twice. Treated as
    /// hostile, never as absent.
    Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionScan {
    /// MSS option value, 0 when absent.
    pub mss: u16,
    pub capability: Capability,
    /// Agent id of a `Present` capability, else 0.
    pub agent_id: u32,
    /// MAC of a `Present` capability, else 0.
    pub mac: u64,
}

/// The handshake options of a SYN, SYN/ACK or handshake ACK.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeOptions {
    pub tsval: u32,
    pub tsecr: u32,
    /// Window-scale shift (clamped to [`MAX_WSCALE`]), [`NO_WSCALE`] when
    /// absent.
    pub wscale: u8,
    /// 1 when SACK-permitted is present.
    pub sack_ok: u8,
    /// 1 when a timestamps option is present; then `tsval`/`tsecr` hold it.
    pub ts_ok: u8,
    pub _pad: u8,
}

impl HandshakeOptions {
    pub const NONE: Self = Self { tsval: 0, tsecr: 0, wscale: NO_WSCALE, sack_ok: 0, ts_ok: 0, _pad: 0 };

    #[inline(always)]
    fn clear(&mut self) {
        // SAFETY: plain stores into `self`.
        unsafe {
            core::ptr::write_volatile(&mut self.wscale, NO_WSCALE);
            core::ptr::write_volatile(&mut self.sack_ok, 0);
            core::ptr::write_volatile(&mut self.ts_ok, 0);
        }
    }

    #[inline(always)]
    fn set_wscale(&mut self, shift: u8) {
        // RFC 7323 §2.3: a shift above 14 is used as 14 (applied by the
        // reader, `wscale()`, so the walk itself does not branch on it).
        // SAFETY: plain store into `self`.
        unsafe { core::ptr::write_volatile(&mut self.wscale, shift) };
    }

    #[inline(always)]
    fn set_sack_ok(&mut self) {
        // SAFETY: plain store into `self`.
        unsafe { core::ptr::write_volatile(&mut self.sack_ok, 1) };
    }

    #[inline(always)]
    fn set_ts(&mut self, ts: [u8; 8]) {
        // SAFETY: plain stores into `self`.
        unsafe {
            core::ptr::write_volatile(&mut self.ts_ok, 1);
            core::ptr::write_volatile(&mut self.tsval, u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]));
            core::ptr::write_volatile(&mut self.tsecr, u32::from_be_bytes([ts[4], ts[5], ts[6], ts[7]]));
        }
    }

    /// The window scale, or [`NO_WSCALE`].
    #[inline(always)]
    pub fn wscale(&self) -> u8 {
        match self.wscale {
            NO_WSCALE => NO_WSCALE,
            s if s > MAX_WSCALE => MAX_WSCALE,
            s => s,
        }
    }
}

/// A segment's TCP options, copied out of the frame.
///
/// Stored as words so that zeroing it is five stores (see `read_into`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct OptionBytes {
    words: [u64; MAX_OPTION_BYTES / 8],
    pub len: usize,
}

impl OptionBytes {
    /// The options of `seg`, copied into `slot`; `None` if the frame is
    /// shorter than its header says (the parser has already ruled that out).
    ///
    /// Filled in place: zeroing a value and returning it lets LLVM rewrite
    /// the copy as a memset call, which the BPF backend lowers to a
    /// byte-at-a-time loop (most of the unstamped-ACK cost). Five volatile
    /// word stores into the caller's slot cannot be merged that way.
    #[inline(always)]
    pub fn read_into<'a, F: Frame + ?Sized, I>(
        slot: &'a mut MaybeUninit<Self>,
        frame: &F,
        seg: &TcpSegment<I>,
    ) -> Option<&'a mut Self> {
        Self::read_span(slot, frame, seg.options_off(), seg.options_len())
    }

    /// The `len` option bytes at `off` in `frame`, copied into `slot`
    /// ([`OptionBytes::read_into`] for a caller that has no segment, only
    /// its offsets).
    #[inline(always)]
    pub fn read_span<'a, F: Frame + ?Sized>(
        slot: &'a mut MaybeUninit<Self>,
        frame: &F,
        off: usize,
        len: usize,
    ) -> Option<&'a mut Self> {
        if len > MAX_OPTION_BYTES {
            return None;
        }
        let p = slot.as_mut_ptr();
        // SAFETY: every field is written before the slot is read.
        let out = unsafe {
            let words = core::ptr::addr_of_mut!((*p).words).cast::<u64>();
            for i in 0..MAX_OPTION_BYTES / 8 {
                core::ptr::write_volatile(words.add(i), 0);
            }
            core::ptr::addr_of_mut!((*p).len).write(len);
            slot.assume_init_mut()
        };
        if len != 0 {
            frame.load_bytes(off, len, out.bytes_mut())?;
        }
        Some(out)
    }

    /// Options given as bytes (tests, userspace).
    pub fn from_slice(opts: &[u8]) -> Option<Self> {
        let mut out = Self { words: [0; MAX_OPTION_BYTES / 8], len: opts.len() };
        out.bytes_mut().get_mut(..opts.len())?.copy_from_slice(opts);
        Some(out)
    }

    #[inline(always)]
    pub fn bytes(&self) -> &[u8; MAX_OPTION_BYTES] {
        // SAFETY: same size, and u8 has no alignment or validity demands.
        unsafe { &*self.words.as_ptr().cast::<[u8; MAX_OPTION_BYTES]>() }
    }

    /// One's-complement sum of the option bytes as 16-bit words (bytes
    /// past `len` are zero), for incremental checksum updates.
    #[inline(always)]
    pub fn word_sum(&self) -> u32 {
        crate::csum::sum_words(self.bytes(), 0)
    }

    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8; MAX_OPTION_BYTES] {
        // SAFETY: as in `bytes`.
        unsafe { &mut *self.words.as_mut_ptr().cast::<[u8; MAX_OPTION_BYTES]>() }
    }

    /// Shifts the sequence-space fields a splice translates: the timestamp
    /// option's TSval by `tsval_add` and TSecr by `tsecr_add`, and both
    /// edges of every SACK block by `edge_add` (SACK edges are
    /// acknowledgement numbers: they move with the ACK field, as
    /// `nf_ct_sack_block_adjust` in net/netfilter/nf_conntrack_seqadj.c
    /// does). Returns whether it rewrote anything (a timestamp or SACK
    /// option was there).
    ///
    /// The same position walk as [`OptionBytes::scan`], for the same
    /// verifier reasons; an option list that does not parse is left as it
    /// is (the endpoint will drop it too).
    #[inline(always)]
    pub fn shift_for_splice(&mut self, tsval_add: u32, tsecr_add: u32, edge_add: u32) -> bool {
        // Bytes past `len` are zero, i.e. EOL, so the walk stops there by
        // itself; comparing `len` at each position would split the
        // verifier's states per length value.
        let opts = self.bytes_mut();
        let mut changed = false;
        let mut skip = 0usize;
        for pos in 0..MAX_OPTION_BYTES {
            if skip != 0 {
                skip -= 1;
                continue;
            }
            let kind = opts[..].load::<u8>(pos).unwrap_or(TCPOPT_EOL);
            if kind == TCPOPT_EOL {
                break;
            }
            if kind == TCPOPT_NOP {
                continue;
            }
            let opt_len = match opts[..].load::<u8>(pos + 1) {
                Some(l) if l >= 2 && (l as usize) <= MAX_OPTION_BYTES - pos => l as usize,
                _ => break,
            };
            if kind == TCPOPT_TIMESTAMP && opt_len == TCPOLEN_TIMESTAMP as usize {
                changed |= add_be32(opts, pos + 2, tsval_add);
                changed |= add_be32(opts, pos + 6, tsecr_add);
            } else if kind == TCPOPT_SACK && opt_len >= 10 && (opt_len - 2) % 8 == 0 {
                for block in 0..4 {
                    if 2 + 8 * block < opt_len {
                        changed |= add_be32(opts, pos + 2 + 8 * block, edge_add);
                        changed |= add_be32(opts, pos + 6 + 8 * block, edge_add);
                    }
                }
            }
            skip = opt_len - 1;
        }
        changed
    }

    /// Walks the option list once.
    ///
    /// Survives any option soup: NOPs, EOL (ends the list; what follows is
    /// padding), lengths below 2, options running past the header, unknown
    /// kinds (skipped by length), experimental options with other ExIDs
    /// (skipped), and duplicate capabilities (malformed).
    ///
    /// Shaped for the BPF verifier, which must explore every path:
    /// - the loop visits every byte position in order and acts only where an
    ///   option starts, so every buffer read is at a position the verifier
    ///   knows exactly, and the packet-derived skip count never addresses
    ///   memory (a walk that jumps `i += len` makes `i` a range and each
    ///   chain of lengths a separate path);
    /// - the option length `len` is compared once, after the loop: it also
    ///   sizes the copy helper, so the verifier tracks it precisely, and
    ///   comparing it at every position split it into one path per value.
    ///   Bytes past `len` are zero, i.e. EOL, so the walk stops there anyway.
    ///
    /// Together these keep verification to a few thousand instructions
    /// instead of the 1M-instruction limit.
    ///
    /// The handshake options (window scale, SACK-permitted, timestamps)
    /// go to `hs`, through volatile stores: in the gate `hs` lives in a
    /// per-CPU map value, whose contents the verifier does not track, so
    /// these values do not multiply the walk's states (tracked on the
    /// stack, they pushed verification past the 1M-instruction limit).
    #[inline(always)]
    pub fn scan_handshake(&self, id: OptionId, hs: &mut HandshakeOptions) -> OptionScan {
        hs.clear();
        self.walk(id, hs)
    }

    /// As [`OptionBytes::scan_handshake`], ignoring the handshake options.
    #[inline(always)]
    pub fn scan(&self, id: OptionId) -> OptionScan {
        let mut ignored = HandshakeOptions::NONE;
        self.walk(id, &mut ignored)
    }

    #[inline(always)]
    fn walk(&self, id: OptionId, hs: &mut HandshakeOptions) -> OptionScan {
        let opts = &self.bytes()[..];
        let exid = id.exid.to_be_bytes();
        let mut scan = OptionScan { mss: 0, capability: Capability::Absent, agent_id: 0, mac: 0 };
        // Bytes still to skip before the next option starts. Counting down
        // (rather than comparing `pos` with a start index) matters: after
        // `pos == start` LLVM may address the buffer through either value,
        // and a packet-derived address is one the verifier must track
        // exactly.
        let mut skip = 0usize;
        // Furthest byte any option claims; past `len` means "runs past the
        // header".
        let mut claimed = 0usize;
        for pos in 0..MAX_OPTION_BYTES {
            if skip != 0 {
                skip -= 1;
                continue;
            }
            let kind = opts.load::<u8>(pos).unwrap_or(TCPOPT_EOL);
            if kind == TCPOPT_EOL {
                break;
            }
            if kind == TCPOPT_NOP {
                claimed = pos + 1;
                continue;
            }
            let opt_len = match opts.load::<u8>(pos + 1) {
                Some(l) if l >= 2 && (l as usize) <= MAX_OPTION_BYTES - pos => l as usize,
                _ => {
                    scan.capability = Capability::Malformed;
                    break;
                }
            };
            if kind == TCPOPT_MSS && opt_len == TCPOLEN_MSS as usize {
                if let Some(mss) = opts.load::<[u8; 2]>(pos + 2) {
                    scan.mss = u16::from_be_bytes(mss);
                }
            } else if kind == TCPOPT_WINDOW && opt_len == TCPOLEN_WINDOW as usize {
                if let Some(shift) = opts.load::<u8>(pos + 2) {
                    hs.set_wscale(shift);
                }
            } else if kind == TCPOPT_SACK_PERM && opt_len == TCPOLEN_SACK_PERM as usize {
                hs.set_sack_ok();
            } else if kind == TCPOPT_TIMESTAMP && opt_len == TCPOLEN_TIMESTAMP as usize {
                if let Some(ts) = opts.load::<[u8; 8]>(pos + 2) {
                    hs.set_ts(ts);
                }
            } else if kind == id.kind && opt_len >= 4 && opts.load::<[u8; 2]>(pos + 2) == Some(exid) {
                match (scan.capability, opts.load::<CapabilityOption>(pos)) {
                    (Capability::Absent, Some(cap)) if opt_len == CAPABILITY_LEN && cap.is_current() => {
                        scan.capability = Capability::Present;
                        scan.agent_id = cap.agent_id();
                        scan.mac = cap.mac();
                    }
                    _ => {
                        scan.capability = Capability::Malformed;
                        break;
                    }
                }
            }
            skip = opt_len - 1;
            claimed = pos + opt_len;
        }
        if claimed > self.len {
            scan.capability = Capability::Malformed;
        }
        scan
    }
}

/// Adds `v` to the big-endian u32 at `at` (if it lies inside `buf`);
/// whether it was written. Written even when `v` is 0: branching on the
/// value would split the verifier's states at every option position.
#[inline(always)]
fn add_be32(buf: &mut [u8; MAX_OPTION_BYTES], at: usize, v: u32) -> bool {
    match buf.get_mut(at..at + 4) {
        Some(field) => {
            let old = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            field.copy_from_slice(&old.wrapping_add(v).to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::mac::{Binding, DOMAIN_ACK, DOMAIN_SYN, MacKey};
    use crate::net::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, IP_DF, IPPROTO_TCP, Parsed, parse_ipv4_tcp};
    use proptest::collection::vec as vec_of;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::{TestCaseError, TestRunner};

    const ID: OptionId = OptionId { kind: DEFAULT_OPTION_KIND, exid: DEFAULT_EXPERIMENT_ID };
    const KEY: MacKey = MacKey { k0: 11, k1: 22 };

    fn cap_bytes(agent: u32, mac: u64) -> Vec<u8> {
        let o = CapabilityOption::new(ID.kind, ID.exid, agent, mac);
        let mut v = vec![o.kind, o.len, o.exid[0], o.exid[1], o.version, 0, 0, 0];
        v.extend_from_slice(&o.agent_id);
        v.extend_from_slice(&o.mac);
        v
    }

    fn scan(opts: &[u8]) -> OptionScan {
        OptionBytes::from_slice(opts).expect("<= 40 bytes").scan(ID)
    }

    #[test]
    fn option_soup_table() {
        let cap = cap_bytes(7, 0x1122_3344_5566_7788);
        let with = |prefix: &[u8], suffix: &[u8]| [prefix, &cap[..], suffix].concat();
        let cases: Vec<(&str, Vec<u8>, Capability, u16)> = vec![
            ("empty", vec![], Capability::Absent, 0),
            ("MSS only", vec![2, 4, 5, 180], Capability::Absent, 1460),
            ("capability only", cap.clone(), Capability::Present, 0),
            ("after timestamps", with(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], &[]), Capability::Present, 0),
            ("after MSS, before EOL padding", with(&[2, 4, 5, 180], &[0, 0, 0, 0]), Capability::Present, 1460),
            ("after EOL is padding", [&[0u8, 0, 0, 0][..], &cap[..]].concat(), Capability::Absent, 0),
            ("duplicate", [&cap[..], &cap[..]].concat(), Capability::Malformed, 0),
            ("length 0", vec![30, 0, 1, 1], Capability::Malformed, 0),
            ("length 1", vec![30, 1, 1, 1], Capability::Malformed, 0),
            ("runs past the header", vec![1, 1, 30, 8], Capability::Malformed, 0),
            ("kind byte last", vec![1, 1, 1, 30], Capability::Malformed, 0),
            (
                "capability of length 16",
                {
                    let mut c = cap[..16].to_vec();
                    c[1] = 16;
                    c
                },
                Capability::Malformed,
                0,
            ),
            (
                "version 2",
                {
                    let mut c = cap.clone();
                    c[4] = 2;
                    c
                },
                Capability::Malformed,
                0,
            ),
            (
                "reserved byte set",
                {
                    let mut c = cap.clone();
                    c[6] = 1;
                    c
                },
                Capability::Malformed,
                0,
            ),
            ("other ExID skipped", vec![253, 4, 0x12, 0x34], Capability::Absent, 0),
            ("unknown kind skipped", with(&[99, 4, 0, 0], &[]), Capability::Present, 0),
        ];
        for (name, opts, want, mss) in cases {
            let got = scan(&opts);
            assert_eq!(got.capability, want, "{name}: capability status for {opts:?}");
            assert_eq!(got.mss, mss, "{name}: MSS for {opts:?}");
            if want == Capability::Present {
                assert_eq!(got.agent_id, 7, "{name}: agent id");
                assert_eq!(got.mac, 0x1122_3344_5566_7788, "{name}: MAC");
            }
        }
    }

    /// A valid stamped ACK frame for the property tests.
    fn stamped_ack() -> Vec<u8> {
        let b = Binding {
            saddr: [10, 0, 0, 2],
            daddr: [10, 0, 0, 1],
            sport: [0x9c, 0x40],
            dport: [1, 187],
            client_isn: 99,
            second: 1234,
            agent_id: 7,
            domain: DOMAIN_ACK,
            exid: ID.exid,
        };
        let cap = cap_bytes(7, b.mac(&KEY));
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let tcp_len = 20 + cap.len();
        f.extend_from_slice(&[0x45, 0, 0, (20 + tcp_len) as u8, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
        f.extend_from_slice(&[0x9c, 0x40, 1, 187]);
        f.extend_from_slice(&100u32.to_be_bytes());
        f.extend_from_slice(&1235u32.to_be_bytes());
        f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, 0x10, 0, 100, 0, 0, 0, 0]);
        f.extend_from_slice(&cap);
        f
    }

    /// What the gate would decide about the capability: true only for a
    /// well-formed option whose MAC verifies for this exact handshake.
    fn gate_accepts(frame: &[u8]) -> bool {
        let Parsed::Tcp(seg) = parse_ipv4_tcp(frame) else { return false };
        let mut slot = MaybeUninit::uninit();
        let Some(opts) = OptionBytes::read_into(&mut slot, frame, &seg) else { return false };
        let scan = opts.scan(ID);
        if scan.capability != Capability::Present {
            return false;
        }
        let b = Binding::handshake_ack(&seg, scan.agent_id, ID.exid);
        b.mac(&KEY) == scan.mac
    }

    #[test]
    fn the_reference_ack_is_accepted() {
        assert!(gate_accepts(&stamped_ack()), "the unmodified stamped ACK must verify");
    }

    /// A TCP option, or bytes posing as one, for the frame generator.
    #[derive(Clone, Debug)]
    enum Opt {
        Nop,
        /// End of the list: what follows is padding.
        Eol,
        Mss(u16),
        Wscale(u8),
        SackPerm,
        Timestamps(u32, u32),
        /// One to four blocks.
        Sack(Vec<(u32, u32)>),
        /// A kind the scanner does not read, skipped by its length.
        Unknown(u8, Vec<u8>),
        /// Our kind with another experiment id.
        OtherExid(u16, Vec<u8>),
        /// Our kind, length, ExID and version, with this agent id and MAC.
        Capability(u32, Mac),
        /// Any bytes: bent capabilities, stray bytes.
        Raw(Vec<u8>),
    }

    /// The MAC a generated capability carries.
    #[derive(Clone, Copy, Debug)]
    enum Mac {
        /// This handshake's MAC under the gate's key (only in frames that
        /// must pass).
        Right,
        Random(u64),
        /// This handshake's MAC under another key.
        OtherKey(MacKey),
        /// The MAC under the gate's key of a handshake that differs from
        /// this one in one field (see `near`).
        Near(u8, u32),
    }

    /// `b` with field `field` (0..9) changed by the non-zero `d`.
    fn near(mut b: Binding, field: u8, d: u32) -> Binding {
        let d16 = (d as u16).max(1);
        match field {
            0 => b.saddr = (u32::from_be_bytes(b.saddr) ^ d).to_be_bytes(),
            1 => b.daddr = (u32::from_be_bytes(b.daddr) ^ d).to_be_bytes(),
            2 => b.sport = (u16::from_be_bytes(b.sport) ^ d16).to_be_bytes(),
            3 => b.dport = (u16::from_be_bytes(b.dport) ^ d16).to_be_bytes(),
            4 => b.client_isn ^= d,
            5 => b.second ^= d,
            6 => b.agent_id ^= d,
            7 => b.domain = DOMAIN_SYN,
            _ => b.exid ^= d16,
        }
        b
    }

    /// An Ethernet frame carrying a TCP segment over IPv4, as the
    /// generator draws it; `frame` builds the bytes.
    #[derive(Clone, Debug)]
    struct Segment {
        macs: [u8; 12],
        /// Per tag: 802.1ad (else 802.1Q), TCI.
        vlans: Vec<(bool, u16)>,
        tos: u8,
        id: u16,
        df: bool,
        ttl: u8,
        saddr: [u8; 4],
        daddr: [u8; 4],
        /// A multiple of 4 bytes, at most 40.
        ip_options: Vec<u8>,
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        /// The low nibble of the data-offset byte.
        reserved: u8,
        flags: u8,
        window: u16,
        urg: u16,
        options: Vec<Opt>,
        /// Fills the option bytes up to a multiple of 4.
        pad: u8,
        payload: Vec<u8>,
        /// Bytes after the IPv4 packet (Ethernet padding).
        trailer: Vec<u8>,
    }

    impl Segment {
        fn binding(&self, agent_id: u32) -> Binding {
            Binding {
                saddr: self.saddr,
                daddr: self.daddr,
                sport: self.sport.to_be_bytes(),
                dport: self.dport.to_be_bytes(),
                client_isn: self.seq.wrapping_sub(1),
                second: self.ack.wrapping_sub(1),
                agent_id,
                domain: DOMAIN_ACK,
                exid: ID.exid,
            }
        }

        fn encode(&self, o: &Opt) -> Vec<u8> {
            match o {
                Opt::Nop => vec![TCPOPT_NOP],
                Opt::Eol => vec![TCPOPT_EOL],
                Opt::Mss(mss) => [&[TCPOPT_MSS, TCPOLEN_MSS][..], &mss.to_be_bytes()].concat(),
                Opt::Wscale(shift) => vec![TCPOPT_WINDOW, TCPOLEN_WINDOW, *shift],
                Opt::SackPerm => vec![TCPOPT_SACK_PERM, TCPOLEN_SACK_PERM],
                Opt::Timestamps(val, ecr) => {
                    [&[TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP][..], &val.to_be_bytes(), &ecr.to_be_bytes()].concat()
                }
                Opt::Sack(blocks) => {
                    let mut v = vec![TCPOPT_SACK, (2 + 8 * blocks.len()) as u8];
                    for (left, right) in blocks {
                        v.extend_from_slice(&left.to_be_bytes());
                        v.extend_from_slice(&right.to_be_bytes());
                    }
                    v
                }
                Opt::Unknown(kind, data) => [&[*kind, (2 + data.len()) as u8][..], data].concat(),
                Opt::OtherExid(exid, data) => {
                    [&[ID.kind, (4 + data.len()) as u8][..], &exid.to_be_bytes(), data].concat()
                }
                Opt::Capability(agent, mac) => {
                    let b = self.binding(*agent);
                    let mac = match *mac {
                        Mac::Right => b.mac(&KEY),
                        Mac::Random(m) => m,
                        Mac::OtherKey(key) => b.mac(&key),
                        Mac::Near(field, d) => near(b, field, d).mac(&KEY),
                    };
                    cap_bytes(*agent, mac)
                }
                Opt::Raw(bytes) => bytes.clone(),
            }
        }

        /// The options in order, cut at 40 bytes, padded to a multiple of 4.
        fn option_bytes(&self) -> Vec<u8> {
            let mut out: Vec<u8> = self.options.iter().flat_map(|o| self.encode(o)).collect();
            out.truncate(MAX_OPTION_BYTES);
            while !out.len().is_multiple_of(4) {
                out.push(self.pad);
            }
            out
        }

        fn frame(&self) -> Vec<u8> {
            let opts = self.option_bytes();
            let mut f = self.macs.to_vec();
            for &(outer, tci) in &self.vlans {
                f.extend_from_slice(&if outer { ETH_P_8021AD } else { ETH_P_8021Q }.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
            let l3 = f.len();
            let ihl = 20 + self.ip_options.len();
            let tcp_len = 20 + opts.len() + self.payload.len();
            f.extend_from_slice(&[0x40 | (ihl / 4) as u8, self.tos]);
            f.extend_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&self.id.to_be_bytes());
            f.extend_from_slice(&if self.df { IP_DF } else { 0 }.to_be_bytes());
            f.extend_from_slice(&[self.ttl, IPPROTO_TCP, 0, 0]);
            f.extend_from_slice(&self.saddr);
            f.extend_from_slice(&self.daddr);
            f.extend_from_slice(&self.ip_options);
            let check = checksum(word_sum(&f[l3..]));
            f[l3 + 10..l3 + 12].copy_from_slice(&check);
            let l4 = f.len();
            f.extend_from_slice(&self.sport.to_be_bytes());
            f.extend_from_slice(&self.dport.to_be_bytes());
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            f.extend_from_slice(&[(((20 + opts.len()) / 4) as u8) << 4 | self.reserved & 0x0f, self.flags]);
            f.extend_from_slice(&self.window.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&self.urg.to_be_bytes());
            f.extend_from_slice(&opts);
            f.extend_from_slice(&self.payload);
            let pseudo = [&self.saddr[..], &self.daddr, &[0, IPPROTO_TCP], &(tcp_len as u16).to_be_bytes()].concat();
            let check = checksum(word_sum(&pseudo) + word_sum(&f[l4..]));
            f[l4 + 16..l4 + 18].copy_from_slice(&check);
            f.extend_from_slice(&self.trailer);
            f
        }
    }
    /// `bytes` summed as big-endian 16-bit words (an odd last byte padded).
    fn word_sum(bytes: &[u8]) -> u32 {
        bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))).sum()
    }

    /// The Internet checksum (RFC 1071) of words summing to `sum`.
    fn checksum(mut sum: u32) -> [u8; 2] {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (!(sum as u16)).to_be_bytes()
    }

    /// Kinds the scanner reads, or that end the list or carry the
    /// capability.
    fn is_read_kind(kind: u8) -> bool {
        matches!(
            kind,
            TCPOPT_EOL | TCPOPT_NOP | TCPOPT_MSS | TCPOPT_WINDOW | TCPOPT_SACK_PERM | TCPOPT_SACK | TCPOPT_TIMESTAMP
        ) || kind == ID.kind
    }

    /// Well-formed options other than the capability, each whole.
    fn plain_option() -> impl Strategy<Value = Opt> {
        prop_oneof![
            Just(Opt::Nop),
            any::<u16>().prop_map(Opt::Mss),
            any::<u8>().prop_map(Opt::Wscale),
            Just(Opt::SackPerm),
            (any::<u32>(), any::<u32>()).prop_map(|(val, ecr)| Opt::Timestamps(val, ecr)),
            vec_of((any::<u32>(), any::<u32>()), 1..=4).prop_map(Opt::Sack),
            (any::<u8>().prop_filter("a kind the scanner skips", |k| !is_read_kind(*k)), vec_of(any::<u8>(), 0..=6))
                .prop_map(|(kind, data)| Opt::Unknown(kind, data)),
            (any::<u16>().prop_filter("another experiment", |e| *e != ID.exid), vec_of(any::<u8>(), 0..=6))
                .prop_map(|(exid, data)| Opt::OtherExid(exid, data)),
        ]
    }

    /// Any MAC but the right one.
    fn wrong_mac() -> impl Strategy<Value = Mac> {
        prop_oneof![
            any::<u64>().prop_map(Mac::Random),
            (any::<u64>(), any::<u64>())
                .prop_map(|(k0, k1)| MacKey { k0, k1 })
                .prop_filter("another key", |k| *k != KEY)
                .prop_map(Mac::OtherKey),
            (0u8..9, 1u32..=u32::MAX).prop_map(|(field, d)| Mac::Near(field, d)),
        ]
    }

    /// A capability of our kind and ExID that is bent: another length or
    /// version, a reserved byte set, or cut short.
    fn bent_capability() -> impl Strategy<Value = Vec<u8>> {
        (any::<u32>(), any::<u64>(), 0u8..4, any::<u8>(), 1usize..CAPABILITY_LEN).prop_map(
            |(agent, mac, how, v, cut)| {
                let mut c = cap_bytes(agent, mac);
                match how {
                    0 => c[1] = if usize::from(v) == CAPABILITY_LEN { v + 1 } else { v },
                    1 => c[4] = if v == CAPABILITY_VERSION { v + 1 } else { v },
                    2 => c[5 + usize::from(v % 3)] = v.max(1),
                    _ => c.truncate(cut),
                }
                c
            },
        )
    }

    /// Option lists of every sort: whole options around one capability
    /// with a wrong MAC, or any mix of real options, such capabilities,
    /// EOL, bent capabilities and stray bytes (cut at 40 bytes).
    fn option_soup() -> impl Strategy<Value = Vec<Opt>> {
        let one = prop_oneof![
            4 => plain_option(),
            3 => (any::<u32>(), wrong_mac()).prop_map(|(agent, mac)| Opt::Capability(agent, mac)),
            1 => Just(Opt::Eol),
            1 => bent_capability().prop_map(Opt::Raw),
            1 => vec_of(any::<u8>(), 1..=8).prop_map(Opt::Raw),
        ];
        prop_oneof![
            1 => options_around(wrong_mac()),
            1 => vec_of(one, 0..=5),
        ]
    }

    /// Whole options before and after one capability with a MAC from
    /// `mac`, in 40 bytes.
    fn options_around(mac: impl Strategy<Value = Mac>) -> impl Strategy<Value = Vec<Opt>> {
        (vec_of(plain_option(), 0..=4), any::<usize>(), any::<u32>(), mac).prop_map(|(plain, at, agent, mac)| {
            let mut room = MAX_OPTION_BYTES - CAPABILITY_LEN;
            let mut opts: Vec<Opt> = Vec::new();
            for o in plain {
                // The length `encode` gives it.
                let len = match &o {
                    Opt::Nop => 1,
                    Opt::Mss(_) => 4,
                    Opt::Wscale(_) => 3,
                    Opt::SackPerm => 2,
                    Opt::Timestamps(..) => 10,
                    Opt::Sack(blocks) => 2 + 8 * blocks.len(),
                    Opt::Unknown(_, data) => 2 + data.len(),
                    Opt::OtherExid(_, data) => 4 + data.len(),
                    _ => unreachable!("not a plain option"),
                };
                if len <= room {
                    room -= len;
                    opts.push(o);
                }
            }
            opts.insert(at % (opts.len() + 1), Opt::Capability(agent, mac));
            opts
        })
    }

    /// IPv4 options of consistent lengths, padded with EOL to a multiple
    /// of 4, at most 40 bytes.
    fn ip_options() -> impl Strategy<Value = Vec<u8>> {
        let one = prop_oneof![
            Just(vec![1u8]),
            // Router alert.
            Just(vec![148u8, 4, 0, 0]),
            (2u8..=255, vec_of(any::<u8>(), 0..=8))
                .prop_map(|(kind, data)| [&[kind, 2 + data.len() as u8][..], &data].concat()),
        ];
        vec_of(one, 0..=4).prop_map(|opts| {
            let mut out = opts.concat();
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            out
        })
    }

    /// Frames the parser takes for TCP over IPv4: 0 to 2 VLAN tags, IPv4
    /// with options, not a fragment, any addresses and header fields,
    /// `options` in the TCP header, any payload and Ethernet padding.
    fn segment(
        options: impl Strategy<Value = Vec<Opt>>,
        pad: impl Strategy<Value = u8>,
    ) -> impl Strategy<Value = Segment> {
        let link = (any::<[u8; 12]>(), vec_of((any::<bool>(), any::<u16>()), 0..=2));
        let ip =
            (any::<u8>(), any::<u16>(), any::<bool>(), any::<u8>(), any::<[u8; 4]>(), any::<[u8; 4]>(), ip_options());
        let tcp =
            (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), 0u8..16, any::<u8>(), any::<u16>(), any::<u16>());
        let rest = (options, pad, vec_of(any::<u8>(), 0..64), vec_of(any::<u8>(), 0..8));
        (link, ip, tcp, rest).prop_map(
            |(
                (macs, vlans),
                (tos, id, df, ttl, saddr, daddr, ip_options),
                (sport, dport, seq, ack, reserved, flags, window, urg),
                (options, pad, payload, trailer),
            )| Segment {
                macs,
                vlans,
                tos,
                id,
                df,
                ttl,
                saddr,
                daddr,
                ip_options,
                sport,
                dport,
                seq,
                ack,
                reserved,
                flags,
                window,
                urg,
                options,
                pad,
                payload,
                trailer,
            },
        )
    }

    /// Frames whose capability, if any, carries a wrong MAC.
    fn unstamped_segment() -> impl Strategy<Value = Segment> {
        segment(option_soup(), prop_oneof![Just(TCPOPT_EOL), Just(TCPOPT_NOP), any::<u8>()])
    }

    /// The parser finds in `frame` the segment `seg` describes. Without
    /// this, a generator gone wrong would make the properties below pass
    /// on frames that never reach the option scan.
    fn check_parsed(seg: &Segment, frame: &[u8]) -> Result<(), TestCaseError> {
        let Parsed::Tcp(p) = parse_ipv4_tcp(frame) else {
            return Err(TestCaseError::fail(std::format!("not parsed as TCP: {frame:02x?}")));
        };
        let l3 = 14 + 4 * seg.vlans.len();
        prop_assert_eq!((p.l3_off, p.l4_off), (l3, l3 + 20 + seg.ip_options.len()));
        prop_assert_eq!(p.options_len(), seg.option_bytes().len());
        prop_assert_eq!(p.payload_len, seg.payload.len());
        prop_assert_eq!(
            (p.ip.saddr, p.ip.daddr, p.tcp.sport, p.tcp.dport, p.tcp.seq(), p.tcp.ack_seq()),
            (seg.saddr, seg.daddr, seg.sport.to_be_bytes(), seg.dport.to_be_bytes(), seg.seq, seg.ack)
        );
        Ok(())
    }

    /// What the option scan makes of a frame the parser takes for TCP.
    fn capability_of(frame: &[u8]) -> Capability {
        let Parsed::Tcp(seg) = parse_ipv4_tcp(frame) else { panic!("not parsed as TCP: {frame:02x?}") };
        let mut slot = MaybeUninit::uninit();
        OptionBytes::read_into(&mut slot, frame, &seg).expect("options inside the frame").scan(ID).capability
    }

    /// The generator of unstamped frames reaches every outcome of the
    /// option scan, a well-formed capability (whose MAC the gate then
    /// compares) in a good share of frames.
    #[test]
    fn unstamped_frames_cover_the_option_scan() {
        let mut runner = TestRunner::deterministic();
        let strategy = unstamped_segment();
        let n = 2000;
        let (mut present, mut malformed, mut absent) = (0, 0, 0);
        for _ in 0..n {
            let frame = strategy.new_tree(&mut runner).expect("a frame").current().frame();
            match capability_of(&frame) {
                Capability::Present => present += 1,
                Capability::Malformed => malformed += 1,
                Capability::Absent => absent += 1,
            }
        }
        assert!(
            present * 4 >= n && malformed * 10 >= n && absent * 10 >= n,
            "of {n} frames, {present} with a capability, {malformed} malformed, {absent} without"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A frame of any shape whose TCP options are any mix of real
        /// options, capabilities with a wrong MAC (random, under another
        /// key, or for a handshake one field away), bent capabilities and
        /// stray bytes never verifies.
        #[test]
        fn frames_without_the_right_mac_never_pass(seg in unstamped_segment()) {
            let frame = seg.frame();
            check_parsed(&seg, &frame)?;
            prop_assert!(!gate_accepts(&frame), "accepted {:?}", seg);
        }

        /// The same frames with one capability stamped with the gate's key
        /// among whole options verify: the MAC alone is what fails above.
        #[test]
        fn frames_with_the_right_mac_pass(seg in segment(options_around(Just(Mac::Right)), prop_oneof![Just(TCPOPT_EOL), Just(TCPOPT_NOP)])) {
            let frame = seg.frame();
            check_parsed(&seg, &frame)?;
            prop_assert!(gate_accepts(&frame), "refused {:?}", seg);
        }

        /// Arbitrary bytes never crash the parsers and never verify.
        #[test]
        fn arbitrary_bytes_never_pass(bytes in vec_of(any::<u8>(), 0..128)) {
            prop_assert!(!gate_accepts(&bytes));
        }

        /// Arbitrary option bytes never crash the scanner.
        #[test]
        fn option_scan_is_total(opts in proptest::collection::vec(any::<u8>(), 0..=40)) {
            let s = scan(&opts);
            if s.capability != Capability::Present {
                prop_assert_eq!((s.agent_id, s.mac), (0, 0));
            }
        }

        /// Mutating any byte a MAC or the parser depends on makes the ACK
        /// fail; mutations elsewhere (TTL, checksums, window) keep it valid.
        #[test]
        fn mutations_of_a_stamped_ack(pos in 0usize..74, xor in 1u8..=255) {
            let mut f = stamped_ack();
            f[pos] ^= xor;
            // Bytes outside the binding and the parsed structure: MACs,
            // IP id/frag/TTL/checksum, TCP flags/window/checksum/urg.
            let irrelevant = matches!(pos, 0..=11 | 15 | 18..=19 | 22 | 24..=25 | 47..=53);
            // The frag field only matters when it makes a fragment.
            let frag_still_whole = matches!(pos, 20..=21) && u16::from_be_bytes([f[20], f[21]]) & 0x3fff == 0;
            // The low nibble next to the data offset is reserved.
            let reserved_bits = pos == 46 && xor & 0xf0 == 0;
            let accepted = gate_accepts(&f);
            if irrelevant || frag_still_whole || reserved_bits {
                prop_assert!(accepted, "mutating byte {} (^{:#x}) should not matter", pos, xor);
            } else {
                prop_assert!(!accepted, "mutating byte {} (^{:#x}) must break the capability", pos, xor);
            }
        }
    }
}
