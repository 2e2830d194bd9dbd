//! RSTs sent from userspace: ending a live flow whose user was revoked
//! (docs/design.md §6), or whose target refused the splice, when the service's
//! policy is not silence.

use std::net::SocketAddrV4;

use ackgate_common::net::Wire as _;
use ackgate_common::net::{Ipv4Hdr, TCP_ACK, TcpHdr};
use ackgate_common::reply::{Reply, reset_for_ack};
use socket2::{Domain, Protocol, Socket, Type};

/// Sends the client of a held flow the RST its stack accepts at once: from
/// the service, with SEQ = server ISN + 1, the only sequence number the
/// client expects while the gateway holds the flow (RFC 5961 §3.2 accepts
/// an exactly in-window RST without a challenge ACK).
pub fn reset_client(client: SocketAddrV4, service: SocketAddrV4, server_isn: u32) -> std::io::Result<()> {
    reset(service, client, server_isn.wrapping_add(1))
}

/// Sends `to` a RST from `from` with sequence number `seq` (the one `to`
/// expects next), built as Linux builds the RST for an ACK-bearing segment
/// (net/ipv4/tcp_ipv4.c, tcp_v4_send_reset).
pub fn reset(from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> std::io::Result<()> {
    // The RST the gate sends for an ACK, built from the ACK `to` would send.
    let ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        total_len: 40u16.to_be_bytes(),
        id: [0, 0],
        frag: [0x40, 0],
        ttl: 64,
        proto: ackgate_common::net::IPPROTO_TCP,
        check: [0, 0],
        saddr: to.ip().octets(),
        daddr: from.ip().octets(),
    };
    let ack = TcpHdr {
        sport: to.port().to_be_bytes(),
        dport: from.port().to_be_bytes(),
        seq: [0; 4],
        ack: seq.to_be_bytes(),
        doff_res: 5 << 4,
        flags: TCP_ACK,
        window: [0, 0],
        check: [0, 0],
        urg: [0, 0],
    };
    let mut rst = Reply::zeroed();
    // IPv4 carries no flow label.
    reset_for_ack(&ip, &ack, 0, &mut rst);
    let packet = rst.as_bytes();
    // IPPROTO_RAW implies IP_HDRINCL: the kernel sends our header as is.
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    socket.send_to(packet, &SocketAddrV4::new(*to.ip(), 0).into())?;
    Ok(())
}
