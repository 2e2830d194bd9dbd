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
    /// Not IPv4 (ARP, IPv6, ...): passed to the stack.
    PASS_NOT_IPV4 = 0, "pass_not_ipv4";
    /// IPv4, not TCP (ping to the gateway or a VIP): passed.
    PASS_NOT_TCP = 1, "pass_not_tcp";
    /// TCP, but not to a protected VIP:port: passed untouched.
    PASS_NOT_SERVICE = 2, "pass_not_service";
    /// Truncated or inconsistent headers: dropped.
    DROP_MALFORMED = 3, "drop_malformed";
    /// IPv4 fragment to a VIP: dropped (a handshake never needs one, and a
    /// non-first fragment would slip past the port check).
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
    /// Valid capability: flow pending, event sent to the control plane.
    ACK_PENDING = 12, "ack_pending";
    /// Segment of a pending flow: held (dropped; the client retransmits).
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
    /// Segment of an authorized flow: held until the splice carries it.
    AUTHORIZED_HOLD = 19, "authorized_hold";
}
