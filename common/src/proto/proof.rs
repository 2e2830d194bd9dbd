//! The per-flow profile proof: HMAC-SHA256 under the login's proof key
//! (derived on both ends from the OPAQUE session key, [`super::pake`]) over the request's id and nonce, the flow, and the profile
//! fields. A captured answer verifies for no other request.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Profile, ProfileRequest};

const PROOF_DOMAIN: &[u8] = b"ackgate profile proof v1";

fn mac(key: &[u8; 32], request: &ProfileRequest, profile: &Profile) -> Hmac<Sha256> {
    // An HMAC accepts keys of any length; 32 bytes cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    m.update(PROOF_DOMAIN);
    m.update(&request.request_id.to_be_bytes());
    m.update(&request.nonce);
    let f = &request.flow;
    // The family, then addresses as 16 bytes, IPv4 ones mapped
    // (::ffff:a.b.c.d): the same length for both families.
    let bytes = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    m.update(&[if f.client.is_ipv4() { crate::abi::FAMILY_IPV4 } else { crate::abi::FAMILY_IPV6 }]);
    m.update(&bytes(f.client));
    m.update(&f.client.port().to_be_bytes());
    m.update(&bytes(f.service));
    m.update(&f.service.port().to_be_bytes());
    m.update(&f.client_isn.to_be_bytes());
    m.update(&f.server_isn.to_be_bytes());
    // Length-prefixed so that no two field splits hash alike.
    m.update(&(profile.user.len() as u32).to_be_bytes());
    m.update(profile.user.as_bytes());
    m.update(&profile.account.to_be_bytes());
    m.update(&profile.machine);
    m.update(&(profile.install_serial.len() as u32).to_be_bytes());
    m.update(profile.install_serial.as_bytes());
    m
}

/// The proof an agent puts in its answer to `request`.
pub fn profile_proof(key: &[u8; 32], request: &ProfileRequest, profile: &Profile) -> [u8; 32] {
    mac(key, request, profile).finalize().into_bytes().into()
}

/// Constant-time check of `profile.proof` for `request`.
pub fn verify_profile_proof(key: &[u8; 32], request: &ProfileRequest, profile: &Profile) -> bool {
    mac(key, request, profile).verify_slice(&profile.proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FlowSummary;

    #[test]
    fn proof_binds_nonce_flow_and_profile() {
        let key = [9u8; 32];
        let flow = FlowSummary {
            client: "10.0.0.2:40000".parse().expect("address"),
            service: "10.0.0.1:443".parse().expect("address"),
            client_isn: 1,
            server_isn: 2,
        };
        let req = ProfileRequest { request_id: 1, nonce: [1; 16], flow };
        let mut profile = Profile {
            user: "alice".into(),
            account: 1000,
            proof: [0; 32],
            machine: [3; 32],
            install_serial: "s".into(),
        };
        profile.proof = profile_proof(&key, &req, &profile);
        assert!(verify_profile_proof(&key, &req, &profile));
        let replayed = ProfileRequest { nonce: [2; 16], ..req.clone() };
        assert!(!verify_profile_proof(&key, &replayed, &profile), "a new nonce must invalidate the old proof");
        let other_flow = ProfileRequest {
            flow: FlowSummary { client: "10.0.0.2:40001".parse().expect("address"), ..flow },
            ..req.clone()
        };
        assert!(!verify_profile_proof(&key, &other_flow, &profile));
        let mapped = FlowSummary {
            client: "[::ffff:10.0.0.2]:40000".parse().expect("address"),
            service: "[::ffff:10.0.0.1]:443".parse().expect("address"),
            ..flow
        };
        let mapped = ProfileRequest { flow: mapped, ..req.clone() };
        assert!(!verify_profile_proof(&key, &mapped, &profile), "the family is bound too");
        let other_user = Profile { user: "mallory".into(), ..profile.clone() };
        assert!(!verify_profile_proof(&key, &req, &other_user));
        let other_account = Profile { account: 1001, ..profile.clone() };
        assert!(!verify_profile_proof(&key, &req, &other_account), "the account is bound too");
        assert!(!verify_profile_proof(&[8; 32], &req, &profile), "another session key must not verify");
    }
}
