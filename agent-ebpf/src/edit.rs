//! Applies a [`StampPlan`]: grow the segment by the option, write it and the
//! changed header fields, and update both checksums incrementally. And
//! applies a [`PureAckPlan`]: cut a data segment down to the pure ACK that
//! the stamp then goes on.

use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::net::{Frame, IpHeader, TcpSegment};
use ackgate_common::option::{CAPABILITY_LEN, CapabilityOption, OptionBytes};
use ackgate_common::stamp::{self, PureAckPlan, StampPlan, reason};
use aya_ebpf::bindings::BPF_F_PSEUDO_HDR;
use aya_ebpf::helpers::bpf_skb_change_tail;

/// Size operand of the csum helpers for a 16-bit replacement.
const CSUM_16: u64 = 2;

#[inline(always)]
pub fn stamp<I: IpHeader>(frame: &SkbFrame, seg: &TcpSegment<I>, option: CapabilityOption) -> Result<(), u32> {
    let plan = stamp::plan(seg, frame.len(), option)?;
    let ctx = frame.ctx();
    // The segment has no payload (the plan checked), so the new tail is
    // exactly where the option goes: right after the existing options.
    // SAFETY: helper on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (plan.tail + CAPABILITY_LEN) as u32, 0) } != 0 {
        return Err(reason::ERR_RESIZE);
    }
    write(frame, &plan).map_err(|_| reason::ERR_WRITE)
}

#[inline(always)]
fn write(frame: &SkbFrame, plan: &StampPlan) -> Result<(), i64> {
    let ctx = frame.ctx();
    ctx.store(plan.tail, &plan.option, 0)?;
    ctx.store(plan.doff_off, &plan.doff_byte, 0)?;
    ctx.store(plan.total_len_off, &plan.total_len.to, 0)?;
    // IPv6 has no header checksum (`ip_check_off` 0).
    if plan.ip_check_off != 0 {
        let (from, to) = plan.total_len.helper_args();
        ctx.l3_csum_replace(plan.ip_check_off, from, to, CSUM_16)?;
    }
    let (from, to) = plan.tcp_word.helper_args();
    ctx.l4_csum_replace(plan.tcp_check_off, from, to, CSUM_16)?;
    let (from, to) = plan.pseudo_len.helper_args();
    ctx.l4_csum_replace(plan.tcp_check_off, from, to, BPF_F_PSEUDO_HDR as u64 | CSUM_16)
}

/// Cuts the segment down to its headers and writes the pure ACK's fields;
/// the plan says what the segment is now (`PureAckPlan::segment`).
#[inline(always)]
pub fn cut_to_pure_ack<I: IpHeader>(
    frame: &SkbFrame,
    seg: &TcpSegment<I>,
    options: &OptionBytes,
) -> Result<PureAckPlan, u32> {
    let plan = stamp::pure_ack(seg, options);
    // SAFETY: helper on our own skb.
    if unsafe { bpf_skb_change_tail(frame.ctx().skb.skb, plan.frame_len as u32, 0) } != 0 {
        return Err(reason::ERR_RESIZE);
    }
    write_pure_ack(frame, &plan).map_err(|_| reason::ERR_WRITE)?;
    Ok(plan)
}

#[inline(always)]
fn write_pure_ack(frame: &SkbFrame, plan: &PureAckPlan) -> Result<(), i64> {
    let ctx = frame.ctx();
    ctx.store(plan.total_len_off, &plan.total_len, 0)?;
    if plan.ip_check_off != 0 {
        ctx.store(plan.ip_check_off, &plan.ip_check, 0)?;
    }
    ctx.store(plan.flags_off, &plan.flags, 0)?;
    ctx.store(plan.tcp_check_off, &plan.tcp_check, 0)
}
