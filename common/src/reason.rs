//! Why the gate did what it did: every packet the XDP program sees bumps
//! exactly one of these per-CPU counters.

/// Declares numbered reasons, their count and their labels.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $val:expr, $label:literal; )*) => {
        $( $(#[$doc])* pub const $name: u32 = $val; )*
        /// Number of reasons; the size of the counter array.
        pub const COUNT: u32 = [$($val),*].len() as u32;
        /// Stable snake_case labels, indexed by reason (for status output and
        /// metrics).
        pub const LABELS: [&str; COUNT as usize] = [$($label),*];
    };
}
pub(crate) use reasons;

reasons! {
    /// Not IP (ARP, LLDP, ...), or IPv6 to a link-local or multicast
    /// address (neighbour discovery): passed to the stack.
    PASS_NOT_IPV4 = 0, "pass_not_ipv4";
    /// IPv4 or IPv6 to the gateway itself, not TCP (ping to the gateway
    /// or a VIP): passed.
    PASS_NOT_TCP = 1, "pass_not_tcp";
    /// TCP to the gateway itself, not to a protected VIP:port: passed
    /// untouched.
    PASS_NOT_SERVICE = 2, "pass_not_service";
    /// Truncated or inconsistent headers: dropped.
    DROP_MALFORMED = 3, "drop_malformed";
    /// IPv4 fragment, or IPv6 packet with a fragment header, to a VIP:
    /// dropped (a handshake never needs one, and a non-first fragment would
    /// slip past the port check).
    DROP_FRAGMENT = 4, "drop_fragment";
    /// SYN answered with a cookie SYN/ACK.
    SYN_COOKIE = 5, "syn_cookie";
    /// Stealth service: SYN without a valid stamp, dropped silently.
    SYN_STEALTH_REFUSED = 6, "syn_stealth_refused";
    /// Stamped ACK with a valid MAC whose cookie does not verify (stale,
    /// or a handshake the gate never answered).
    ACK_BAD_COOKIE = 7, "ack_bad_cookie";
    /// No capability option (checked before the cookie: cheaper).
    ACK_NO_OPTION = 8, "ack_no_option";
    /// Capability option malformed, duplicated or of another version.
    ACK_BAD_OPTION = 9, "ack_bad_option";
    /// Capability from an agent id the gateway does not know.
    ACK_UNKNOWN_AGENT = 10, "ack_unknown_agent";
    /// Capability MAC does not verify.
    ACK_BAD_MAC = 11, "ack_bad_mac";
    /// Valid capability: a new flow, pending; event sent to the control
    /// plane.
    ACK_PENDING = 12, "ack_pending";
    /// Segment of a pending flow: held (its data copied to the held ring
    /// for the splice, the segment dropped).
    PENDING_HOLD = 13, "pending_hold";
    /// RST, FIN-only or other segment with no handshake and no flow: dropped.
    DROP_NO_FLOW = 14, "drop_no_flow";
    /// The reply could not be built (frame resize refused): dropped.
    ERR_REPLY = 15, "err_reply";
    /// The event ring buffer was full: flow not recorded, ACK dropped.
    ERR_EVENT_LOST = 16, "err_event_lost";
    /// The pending map refused the insert: ACK dropped.
    ERR_PENDING_FULL = 17, "err_pending_full";
    /// Segment of a flow the control plane denied (or whose profile timed
    /// out): the service's default response.
    FLOW_DENIED = 18, "flow_denied";
    /// Segment of an authorized flow whose splice is not set up yet: held
    /// as a pending one.
    AUTHORIZED_HOLD = 19, "authorized_hold";
    /// Spliced segment rewritten and redirected to the other interface.
    SPLICE_REDIRECT = 20, "splice_redirect";
    /// Spliced segment rewritten and handed to the kernel to forward (no
    /// redirect to that interface, or no neighbour entry yet).
    SPLICE_KERNEL = 21, "splice_kernel";
    /// Segment of a flow whose target handshake is under way: held.
    SPLICE_HOLD = 22, "splice_hold";
    /// Spliced segment with TTL <= 1: dropped (a router would too).
    SPLICE_TTL_EXPIRED = 23, "splice_ttl_expired";
    /// A held segment could not be copied (held ring full, per-flow bound
    /// reached, or larger than a 1500-byte packet): dropped; the client
    /// retransmits it after the splice.
    HOLD_FULL = 24, "hold_full";
    /// From the edge to an address that is neither the gateway's nor
    /// allowed transit: dropped (default-deny forwarding).
    DROP_TRANSIT = 25, "drop_transit";
    /// From the edge to an allowed-transit prefix: passed to the kernel.
    PASS_TRANSIT = 26, "pass_transit";
    /// Internal interface: not a spliced flow: passed.
    INTERNAL_PASS = 27, "internal_pass";
    /// Internal interface: the target's SYN/ACK; the gate answered with the
    /// handshake's ACK and the flow is spliced.
    INTERNAL_SPLICED = 28, "internal_spliced";
    /// Internal interface: a SYN/ACK that does not acknowledge the splice's
    /// SYN: dropped.
    INTERNAL_SYNACK_MISMATCH = 29, "internal_synack_mismatch";
    /// Internal interface: the target refused the splice's SYN (RST):
    /// dropped, the control plane gives the client the default response.
    INTERNAL_TARGET_REFUSED = 30, "internal_target_refused";
    /// Segment of a splice that is being set up, other than the SYN/ACK
    /// or a RST (internal), or a SYN on a spliced 4-tuple: dropped.
    SPLICE_UNEXPECTED = 31, "splice_unexpected";
    /// An ICMP error about a spliced segment, translated for the endpoint
    /// that sent the segment (`common::icmp`) and redirected to it.
    ICMP_TRANSLATED = 32, "icmp_translated";
    /// As `icmp_translated`, handed to the kernel to forward.
    ICMP_TRANSLATED_KERNEL = 33, "icmp_translated_kernel";
    /// Internal interface: an ICMP error (unreachable, time exceeded)
    /// answered the splice's SYN: dropped, the control plane gives the
    /// client the default response.
    INTERNAL_TARGET_UNREACHABLE = 34, "internal_target_unreachable";
    /// Spliced segment with DF larger than the next hop's MTU: answered
    /// with ICMP "fragmentation needed" from the address it was sent to.
    SPLICE_FRAG_NEEDED = 35, "splice_frag_needed";
    /// The TCP options could not be copied out of the frame for the scan,
    /// though the parser found them in it: a helper failure, not the
    /// client's doing. Dropped.
    ERR_OPTIONS_COPY = 36, "err_options_copy";
    /// The SYN cookie helper refused a SYN the parser accepted
    /// (`bpf_tcp_raw_gen_syncookie_ipv4`): dropped, unanswered.
    ERR_COOKIE = 37, "err_cookie";
    /// A pure ACK on the 4-tuple of a flow the gate holds, acknowledging
    /// another SYN/ACK, without a valid stamp: dropped without a response,
    /// so that a forged ACK cannot make the gate answer for a live flow.
    DROP_REUSED_TUPLE = 38, "drop_reused_tuple";
    /// A SYN, or a handshake ACK the gate would reset, whose IPv4 header or
    /// TCP checksum does not verify: dropped unanswered, as the kernel
    /// drops it before any socket sees it.
    DROP_BAD_CHECKSUM = 39, "drop_bad_checksum";
    /// Stealth service with the `reset` response: a SYN without a valid
    /// stamp, answered with RST+ACK exactly as a closed port answers it.
    SYN_STEALTH_RESET = 40, "syn_stealth_reset";
    /// A valid capability on the 4-tuple of a flow the gate holds (a new
    /// connection reusing it): the new flow replaces the old entry and is
    /// pending. Apart from `ack_pending`, which counts new flow-map keys,
    /// so that the two together tell flows recorded from keys added (the
    /// census's eviction count rests on that).
    ACK_PENDING_REPLACED = 41, "ack_pending_replaced";
    /// IPv6 to a VIP with a routing header that has segments left: this
    /// host is not its final destination, so its address and port say
    /// nothing about where it goes. Dropped.
    DROP_IPV6_ROUTED = 42, "drop_ipv6_routed";
    /// IPv6 to a VIP with hop-by-hop or destination options other than 8
    /// bytes of padding (router alert, jumbo payload, options with
    /// per-option actions): nothing a handshake uses. Dropped.
    DROP_IPV6_OPTIONS = 43, "drop_ipv6_options";
    /// IPv6 to a VIP with more extension headers than the gate walks
    /// (`net::MAX_IPV6_EXTENSIONS`): dropped.
    DROP_IPV6_EXTENSIONS = 44, "drop_ipv6_extensions";
    /// A segment of an IPv6 spliced flow, but the splice stage's slot was
    /// empty (a gate object loaded without it): dropped.
    ERR_STAGE_MISSING = 45, "err_stage_missing";
}
