//! ackgate agent TC egress program.
//!
//! The entry point only orchestrates; each concern has its own module:
//! - `classify`: parse (IPv4 or IPv6), and find the agent's target for the
//!   destination (everything else leaves untouched);
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
    use ackgate_common::abi::{FlowKey, TargetPolicy};
    use ackgate_common::kernel::frame::SkbFrame;
    use ackgate_common::mac::BoundAddr;
    use ackgate_common::net::{IpHeader, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpSegment};
    use ackgate_common::stamp::reason;
    use aya_ebpf::bindings::TC_ACT_OK;
    use aya_ebpf::macros::classifier;
    use aya_ebpf::programs::TcContext;

    use crate::classify::{Class, classify};
    use crate::{handshake, maps, stats};

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
        let Some(scratch) = maps::scratch() else {
            return reason::ERR_SCRATCH;
        };
        match classify(&frame, scratch) {
            Class::Target(target) => handshake(&frame, &scratch.seg, &scratch.flow, &target),
            Class::TargetV6(target) => handshake(&frame, &scratch.seg6, &scratch.flow, &target),
            Class::Other(why) => why,
        }
    }

    /// A segment to a target, of either family.
    #[inline(always)]
    fn handshake<I: IpHeader<Addr: BoundAddr>>(
        frame: &SkbFrame,
        seg: &TcpSegment<I>,
        flow: &FlowKey,
        target: &TargetPolicy,
    ) -> u32 {
        match seg.tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) {
            TCP_SYN => handshake::on_syn(frame, seg, flow, target),
            TCP_ACK | ACK_FIN => handshake::on_ack(frame, seg, flow),
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
