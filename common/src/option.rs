//! The capability TCP option (DESIGN.md §3) and the TCP option scanner.
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

use crate::net::{Frame, Ipv4Tcp, Wire};

pub const DEFAULT_OPTION_KIND: u8 = 253;
pub const DEFAULT_EXPERIMENT_ID: u16 = 0xac47;
pub const CAPABILITY_VERSION: u8 = 1;
pub const CAPABILITY_LEN: usize = 20;

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOLEN_MSS: u8 = 4;
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
    pub fn read_into<'a, F: Frame + ?Sized>(
        slot: &'a mut MaybeUninit<Self>,
        frame: &F,
        seg: &Ipv4Tcp,
    ) -> Option<&'a Self> {
        let len = seg.options_len();
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
            frame.load_bytes(seg.options_off(), len, out.bytes_mut())?;
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

    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8; MAX_OPTION_BYTES] {
        // SAFETY: as in `bytes`.
        unsafe { &mut *self.words.as_mut_ptr().cast::<[u8; MAX_OPTION_BYTES]>() }
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
    #[inline(always)]
    pub fn scan(&self, id: OptionId) -> OptionScan {
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

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::mac::{Binding, DOMAIN_ACK, MacKey};
    use crate::net::{Parsed, parse_ipv4_tcp};
    use proptest::prelude::*;

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Arbitrary bytes never crash the parsers and never verify.
        #[test]
        fn arbitrary_bytes_never_pass(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
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
