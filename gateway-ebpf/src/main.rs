//! ackgate gateway XDP program.
//!
//! The entry point only orchestrates the packet stages; each stage lives in
//! its own module:
//! - `classify`: parse and decide whether a packet concerns a protected
//!   service at all (everything else passes untouched);
//! - `syn`: answer SYNs with a stateless cookie SYN/ACK (and enforce stealth);
//! - `ack`: check cookie and capability on handshake ACKs, record pending
//!   flows and notify userspace;
//! - `respond`: the service's default response when the check fails;
//! - `maps`, `stats`: maps and counters.
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
mod maps;
#[cfg(target_arch = "bpf")]
mod respond;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod syn;

#[cfg(target_arch = "bpf")]
mod program {
    use ackgate_common::abi::{FLOW_AUTHORIZED, FLOW_DENIED};
    use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    use ackgate_common::reason;
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    use crate::classify::{Class, classify};
    use crate::{ack, maps, respond, stats, syn};
    use ackgate_common::kernel::frame::XdpFrame;

    /// What to do with the frame, and why.
    pub struct Verdict {
        pub action: u32,
        pub reason: u32,
    }

    impl Verdict {
        pub const fn new(action: u32, reason: u32) -> Self {
            Self { action, reason }
        }
    }

    #[xdp]
    pub fn ackgate_gate(ctx: XdpContext) -> u32 {
        let frame = XdpFrame::new(&ctx);
        let verdict = gate(&frame);
        stats::count(verdict.reason);
        verdict.action
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
        let (seg, policy) = match classify(frame) {
            Class::Protected { seg, policy } => (seg, policy),
            Class::Other(verdict) => return verdict,
        };
        let flags = seg.tcp.flags;
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
            return syn::on_syn(frame, &seg, &policy);
        }
        if let Some(flow) = maps::flow(&seg) {
            // A new handshake on a reused 4-tuple acknowledges another
            // cookie; data of the held flow still acknowledges its own.
            let new_handshake = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK
                && seg.payload_len == 0
                && seg.tcp.ack_seq().wrapping_sub(1) != flow.server_isn;
            return match flow.state {
                _ if new_handshake => ack::on_reused_tuple(frame, &seg),
                // Never answer a RST with a RST (RFC 9293 §3.10.7.1).
                FLOW_DENIED if flags & TCP_RST != 0 => Verdict::new(xdp_action::XDP_DROP, reason::FLOW_DENIED),
                FLOW_DENIED => respond::refuse(frame, &seg, &policy, reason::FLOW_DENIED),
                FLOW_AUTHORIZED => Verdict::new(xdp_action::XDP_DROP, reason::AUTHORIZED_HOLD),
                _ => Verdict::new(xdp_action::XDP_DROP, reason::PENDING_HOLD),
            };
        }
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK {
            return ack::on_ack(frame, &seg, &policy);
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
