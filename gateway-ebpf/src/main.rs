//! ackgate gateway XDP program.
//!
//! The entry point only orchestrates the packet stages; each stage lives in
//! its own module:
//! - `classify`: parse (IPv4 or IPv6) and decide whether a packet concerns
//!   a protected service at all (everything else passes untouched);
//! - `family`: what differs between IPv4 and IPv6 below the stages, which
//!   are written once for both;
//! - `syn`: answer SYNs with a stateless cookie SYN/ACK (and enforce stealth);
//! - `ack`: check cookie and capability on handshake ACKs, record pending
//!   flows and notify userspace;
//! - `options`: the handshake option scan the SYN and ACK stages share;
//! - `respond`: the service's default response when the check fails;
//! - `integrity`: the checksums the kernel would verify, checked before
//!   the gate answers anything;
//! - `held`: segments of flows the gate accepted but has not spliced yet
//!   (pending, authorized, denied);
//! - `hold`: client data of flows still waiting, copied for the splice;
//! - `splice` + `forward`: the data path of spliced flows (rewrite, then
//!   redirect or kernel forwarding), on both interfaces;
//! - `stage`: the tail-called stages (IPv6's splice), verified apart;
//! - `internal`: the internal interface's program: the target side of
//!   spliced flows and the completion of the splice's handshake;
//! - `icmp`: ICMP errors about spliced segments, translated for the
//!   endpoint that sent them, on both interfaces;
//! - `transit`: default-deny forwarding for everything else on the edge;
//! - `events`, `maps`, `settings`, `stats`: events, maps, load-time
//!   settings and counters.
//!
//! Packet access (the one bounds-checked accessor), the parsers and the
//! load-time option settings come from `ackgate_common`, shared with the
//! agent's TC stamper.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod ack;
#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod held;
#[cfg(target_arch = "bpf")]
mod hold;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod integrity;
#[cfg(target_arch = "bpf")]
mod internal;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod options;
#[cfg(target_arch = "bpf")]
mod respond;
#[cfg(target_arch = "bpf")]
mod settings;
#[cfg(target_arch = "bpf")]
mod splice;
#[cfg(target_arch = "bpf")]
mod stage;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod syn;
#[cfg(target_arch = "bpf")]
mod transit;

#[cfg(target_arch = "bpf")]
mod program {
    use ackgate_common::abi::{FlowKey, ServicePolicy};
    use ackgate_common::icmp::IPPROTO_ICMP;
    use ackgate_common::net::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpSegment};
    use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    use ackgate_common::reason;
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use core::mem::size_of;

    use crate::classify::classify;
    use crate::family::Family;
    use crate::stage::STAGE_JOB_ICMP;
    use crate::{ack, held, icmp, internal, maps, stage, stats, syn, transit};
    use ackgate_common::kernel::frame::XdpFrame;

    /// What to do with the frame (low half), and why (high half). One
    /// word, so that a stage compiled as its own BPF subprogram returns it
    /// in a register: an 8-byte struct is returned through a pointer into
    /// the caller's stack, which the verifier refuses ("cannot return stack
    /// pointer to the caller").
    #[derive(Clone, Copy)]
    pub struct Verdict(u64);

    impl Verdict {
        /// Not a verdict: the stage found more to do (`classify` and
        /// `internal::parse` parsed a segment for the next stage).
        pub const CONTINUE: Verdict = Verdict(u64::MAX);
        /// Not a verdict: `classify` found an IPv6 segment to a protected
        /// service (in `Scratch::seg6`).
        pub const PROTECTED_V6: Verdict = Verdict::new(PROTECTED_V6, 0);
        /// Not a verdict: `internal::parse` found an IPv6 segment of a
        /// spliced flow (in `Scratch::seg6`), or `icmp::on_ipv6` an ICMPv6
        /// error about one; the caller tail-calls the splice stage.
        pub const SPLICE_V6: Verdict = Verdict::new(SPLICE_V6, 0);

        pub const fn new(action: u32, reason: u32) -> Self {
            Self(action as u64 | (reason as u64) << 32)
        }

        pub const fn is_continue(self) -> bool {
            self.0 == u64::MAX
        }

        /// Not a verdict: `classify` found a packet that is not for a
        /// protected service; the transit check decides it (`local` is
        /// the reason if it is for the gateway itself). The entry point
        /// makes that call, so that `classify` and `transit` do not share
        /// a call chain's stack.
        pub const fn transit(v6: bool, local: u32) -> Self {
            Self::new(if v6 { TRANSIT_V6 } else { TRANSIT_V4 }, local)
        }
    }

    pub const TRANSIT_V4: u32 = u32::MAX - 1;
    pub const TRANSIT_V6: u32 = u32::MAX - 2;
    /// Not a verdict: the internal side's parse found ICMP (its header is
    /// in the scratch map); the entry point hands it to `icmp`.
    pub const ICMP_V4: u32 = u32::MAX - 3;
    /// The action of [`Verdict::PROTECTED_V6`].
    const PROTECTED_V6: u32 = u32::MAX - 4;
    /// The action of [`Verdict::SPLICE_V6`].
    pub const SPLICE_V6: u32 = u32::MAX - 5;
    /// Not a verdict: `classify_v6` or the internal side's parse found
    /// ICMPv6 (its header in `Scratch::seg6`, `l4_off` at the ICMPv6
    /// header); the caller hands it to `icmp::on_ipv6`.
    pub const ICMP_V6: u32 = u32::MAX - 6;

    impl Verdict {
        pub const fn action(self) -> u32 {
            self.0 as u32
        }

        pub const fn reason(self) -> u32 {
            (self.0 >> 32) as u32
        }
    }

    #[xdp]
    pub fn ackgate_gate(ctx: XdpContext) -> u32 {
        let frame = XdpFrame::new(&ctx);
        let verdict = gate(&frame);
        stats::count(verdict.reason());
        verdict.action()
    }

    /// The internal interface: spliced flows' target side.
    #[xdp]
    pub fn ackgate_internal(ctx: XdpContext) -> u32 {
        let frame = XdpFrame::new(&ctx);
        let verdict = internal::internal(&frame);
        stats::count(verdict.reason());
        verdict.action()
    }

    /// The IPv6 splice stage, tail-called from both programs above.
    #[xdp]
    pub fn ackgate_splice_v6(ctx: XdpContext) -> u32 {
        let frame = XdpFrame::new(&ctx);
        let verdict = stage::splice_v6(&frame);
        stats::count(verdict.reason());
        verdict.action()
    }

    /// Passes everything. Attached to the far end of a veth pair so that
    /// native XDP_TX/redirect into that pair delivers (veth drops such
    /// frames unless the peer runs XDP), and the benchmarks' do-nothing
    /// baseline.
    #[xdp]
    pub fn ackgate_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn gate(frame: &XdpFrame) -> Verdict {
        let Some(scratch) = maps::scratch() else {
            return Verdict::new(xdp_action::XDP_DROP, reason::ERR_REPLY);
        };
        let classified = classify(frame, scratch);
        match classified.action() {
            TRANSIT_V4 => {
                let (ip, l3_off) = (&scratch.seg.ip, scratch.seg.l3_off);
                // Tagged frames belong to their VLAN's device (`classify`),
                // errors about spliced segments too.
                if ip.proto == IPPROTO_ICMP && l3_off == size_of::<EthHdr>() {
                    let translated = icmp::on_ipv4(frame, l3_off, ip, true);
                    if !translated.is_continue() {
                        return translated;
                    }
                }
                return transit::ipv4(frame, ip, classified.reason());
            }
            TRANSIT_V6 => return transit::ipv6(frame, scratch.seg.l3_off, classified.reason()),
            ICMP_V6 => {
                // As ICMP over IPv4 above (`classify_v6` sent tagged frames
                // to transit already).
                let translated = icmp::on_ipv6(frame, true);
                if translated.action() == SPLICE_V6 {
                    return stage::enter_splice_v6(frame, STAGE_JOB_ICMP);
                }
                if !translated.is_continue() {
                    return translated;
                }
                return transit::ipv6(frame, scratch.seg.l3_off, classified.reason());
            }
            PROTECTED_V6 => return protected::<Ipv6Hdr>(frame, &scratch.seg6, &scratch.policy, &scratch.key),
            _ if !classified.is_continue() => return classified,
            _ => {}
        }
        protected::<Ipv4Hdr>(frame, &scratch.seg, &scratch.policy, &scratch.key)
    }

    /// A segment to a protected service, of either family.
    #[inline(always)]
    fn protected<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, policy: &ServicePolicy, key: &FlowKey) -> Verdict {
        let flags = seg.tcp.flags;
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
            return syn::on_syn(frame, seg, policy, key);
        }
        // The splice lookup only now: SYNs, the flood path, never need it.
        if let Some(verdict) = F::spliced(frame, seg, key) {
            return verdict;
        }
        if let Some(flow) = maps::flow_mut(key) {
            // SAFETY: a map value pointer valid for this run.
            let f = unsafe { &*flow };
            // A new handshake on a reused 4-tuple acknowledges another
            // cookie; data of the held flow still acknowledges its own.
            let new_handshake = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK
                && seg.payload_len == 0
                && seg.tcp.ack_seq().wrapping_sub(1) != f.server_isn;
            if new_handshake {
                return ack::on_reused_tuple(frame, seg, key);
            }
            return held::on_segment(frame, seg, policy, key, flow);
        }
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK {
            return ack::on_ack(frame, seg, policy, key);
        }
        Verdict::new(xdp_action::XDP_DROP, reason::DROP_NO_FLOW)
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds (`cargo build --workspace`, clippy) only see this stub; the
/// real object is built for bpfel-unknown-none by gateway-user's build.rs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
