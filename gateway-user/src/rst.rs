//! RSTs sent from userspace: ending a live flow whose user was revoked
//! (docs/design.md §6), or whose target refused the splice, when the service's
//! policy is not silence.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use ackgate_common::net::Wire as _;
use ackgate_common::net::{TCP_ACK, TcpHdr};
use ackgate_common::reply::{Reply, ReplyHeader, reset_for_ack, tcp_ipv4_header, tcp_ipv6_header};
use socket2::{Domain, Protocol, Socket, Type};

/// Sends the client of a held flow the RST its stack accepts at once: from
/// the service, with SEQ = server ISN + 1, the only sequence number the
/// client expects while the gateway holds the flow (RFC 5961 §3.2 accepts
/// an exactly in-window RST without a challenge ACK).
pub fn reset_client(client: SocketAddr, service: SocketAddr, server_isn: u32) -> std::io::Result<()> {
    reset(service, client, server_isn.wrapping_add(1))
}

/// Sends `to` a RST from `from` (both of one family) with sequence number
/// `seq` (the one `to` expects next), built as Linux builds the RST for an
/// ACK-bearing segment (tcp_v4_send_reset in net/ipv4/tcp_ipv4.c,
/// tcp_v6_send_reset in net/ipv6/tcp_ipv6.c).
pub fn reset(from: SocketAddr, to: SocketAddr, seq: u32) -> std::io::Result<()> {
    // The RST the gate sends for an ACK, built from the ACK `to` would send.
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
    // IPPROTO_RAW implies IP_HDRINCL, and IPV6_HDRINCL for IPv6
    // (inet6_create in net/ipv6/af_inet6.c): the kernel sends our header as
    // is.
    match (to.ip(), from.ip()) {
        (IpAddr::V4(to_ip), IpAddr::V4(from_ip)) => {
            let ip = tcp_ipv4_header(to_ip.octets(), from_ip.octets(), 20);
            send(Domain::IPV4, &rst(&ip, &ack), SocketAddr::new(to.ip(), 0))
        }
        (IpAddr::V6(to_ip), IpAddr::V6(from_ip)) => {
            // Flow label 0: a userspace RST has no socket whose label it
            // could carry.
            let ip = tcp_ipv6_header(to_ip.octets(), from_ip.octets(), 20, 0, 0);
            send(Domain::IPV6, &rst(&ip, &ack), SocketAddrV6::new(to_ip, 0, 0, 0).into())
        }
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("RST from {from} to {to}"))),
    }
}

/// The RST answering the ACK `ack` under `ip`.
fn rst<I: ReplyHeader>(ip: &I, ack: &TcpHdr) -> Vec<u8> {
    let mut rst = Reply::<I, 0>::zeroed();
    reset_for_ack(ip, ack, 0, &mut rst);
    rst.as_bytes().to_vec()
}

fn send(domain: Domain, packet: &[u8], to: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    socket.send_to(packet, &to.into())?;
    Ok(())
}
