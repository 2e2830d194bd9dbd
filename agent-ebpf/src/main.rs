//! ackgate agent TC egress program.
//!
//! The entry point only orchestrates; each concern has its own module:
//! - `classify`: parse, and find the agent's target for the destination
//!   (everything else leaves untouched);
//! - `handshake`: remember a target SYN's ISN, recognise the flow's
//!   handshake ACK, and compute the capability for either;
//! - `edit`: grow the segment and write the option, header fields and
//!   checksum updates that `ackgate_common::stamp` planned;
//! - `maps`, `stats`: maps and counters.
//!
//! Packet access, the parser, the option scanner and the MAC are the very
//! code the gateway's XDP gate runs (`ackgate_common`). The program never
//! drops or redirects: whatever happens, the packet leaves (TC_ACT_OK).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod edit;
#[cfg(target_arch = "bpf")]
mod handshake;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
mod program {
    use ackgate_common::kernel::frame::SkbFrame;
    use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    use ackgate_common::stamp::reason;
    use aya_ebpf::bindings::TC_ACT_OK;
    use aya_ebpf::macros::classifier;
    use aya_ebpf::programs::TcContext;

    use crate::classify::{Class, classify};
    use crate::{handshake, stats};

    #[classifier]
    pub fn ackgate_stamp(ctx: TcContext) -> i32 {
        let why = stamp(&ctx);
        stats::count(why);
        TC_ACT_OK
    }

    /// Passes everything: the benchmarks' do-nothing baseline.
    #[classifier]
    pub fn ackgate_tc_pass(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// A FIN as the flow's first segment may have to become its stamped ACK.
    const ACK_FIN: u8 = TCP_ACK | TCP_FIN;

    #[inline(always)]
    fn stamp(ctx: &TcContext) -> u32 {
        let frame = SkbFrame::new(ctx);
        let (seg, target) = match classify(&frame) {
            Class::Target { seg, policy } => (seg, policy),
            Class::Other(why) => return why,
        };
        match seg.tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) {
            TCP_SYN => handshake::on_syn(&frame, &seg, &target),
            TCP_ACK | ACK_FIN => handshake::on_ack(&frame, &seg),
            _ => reason::PASS_NOT_HANDSHAKE,
        }
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds (`cargo build --workspace`, clippy) only see this stub; the
/// real object is built for bpfel-unknown-none by the agent's build.rs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
