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
    pub const ZERO: Self =
        Self { kind: 0, len: 0, exid: [0; 2], version: 0, reserved: [0; 3], agent_id: [0; 4], mac: [0; 8] };

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

/// What the option list says about the capability.
///
/// A tag only: the option itself travels beside it in [`OptionScan`]. An
/// enum carrying the 20-byte payload leaves the payload bytes undefined in
/// the other variants, and LLVM then spills an uninitialised register, which
/// the verifier refuses ("R5 !read_ok").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Absent,
    /// Exactly one capability option of our kind and ExID, 20 bytes long;
    /// it is in [`OptionScan::option`].
    Present,
    /// The option list is unparseable (an option runs past the header or
    /// has a length below 2), the capability has the wrong length, or it
    /// appears twice. Treated as hostile, never as absent.
    Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionScan {
    /// MSS option value, 0 when absent.
    pub mss: u16,
    pub capability: Capability,
    /// The capability option when `capability` is `Present`, else zeroes.
    pub option: CapabilityOption,
}

/// A segment's TCP options, copied out of the frame.
#[derive(Clone, Copy, Debug)]
pub struct OptionBytes {
    pub bytes: [u8; MAX_OPTION_BYTES],
    pub len: usize,
}

impl OptionBytes {
    /// The options of `seg`, or `None` if the frame is shorter than its
    /// header says (the parser has already ruled that out).
    #[inline(always)]
    pub fn read<F: Frame + ?Sized>(frame: &F, seg: &Ipv4Tcp) -> Option<Self> {
        let mut out = Self { bytes: [0; MAX_OPTION_BYTES], len: seg.options_len() };
        if out.len > MAX_OPTION_BYTES {
            return None;
        }
        if out.len != 0 {
            frame.load_bytes(seg.options_off(), out.len, &mut out.bytes)?;
        }
        Some(out)
    }

    /// Options given as bytes (tests, userspace).
    pub fn from_slice(opts: &[u8]) -> Option<Self> {
        let mut out = Self { bytes: [0; MAX_OPTION_BYTES], len: opts.len() };
        out.bytes.get_mut(..opts.len())?.copy_from_slice(opts);
        Some(out)
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
    /// Together these keep verification to a few thousand instructions
    /// instead of the 1M-instruction limit.
    #[inline(always)]
    pub fn scan(&self, id: OptionId) -> OptionScan {
        let opts = &self.bytes[..];
        let exid = id.exid.to_be_bytes();
        let mut scan = OptionScan { mss: 0, capability: Capability::Absent, option: CapabilityOption::ZERO };
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
                    (Capability::Absent, Some(cap)) if opt_len == CAPABILITY_LEN => {
                        scan.capability = Capability::Present;
                        scan.option = cap;
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
