//! Who an authorized flow belongs to, as the flow map records it.
//!
//! The decision writes a [`FlowOwner`] into the flow's entry in the pinned
//! map. Revocation scans the map for it, so it reaches every flow the gate
//! holds, including those authorized before the daemon restarted or
//! crashed. Tags are 64-bit hashes: the map entry stays small, and a
//! collision (about 2^-64 per pair) could only end a flow early.

use std::collections::HashMap;

use ackgate_common::abi::FlowOwner;
use sha2::{Digest, Sha256};

/// The owner tags of a flow authorized for `user` on `machine`.
pub fn owner(user: &str, machine: &[u8; 32]) -> FlowOwner {
    FlowOwner { user_tag: user_tag(user), machine_tag: machine_tag(machine) }
}

/// The flows of one user, or of one user on the machines whose fingerprint
/// starts with a hex prefix: what a revocation ends. The user's tag is
/// hashed once, not per flow (a revocation may test a million).
#[derive(Clone, Debug)]
pub struct OwnerFilter {
    user_tag: u64,
    machine_prefix: Option<String>,
}

impl OwnerFilter {
    pub fn new(user: &str, machine_prefix: Option<&str>) -> Self {
        Self { user_tag: user_tag(user), machine_prefix: machine_prefix.map(str::to_ascii_lowercase) }
    }

    /// Whether a flow with `owner` is one of them. The tag holds the
    /// fingerprint's first 16 hex digits, so a longer prefix is compared on
    /// those. An owner of zeros (not authorized) matches nothing.
    pub fn covers(&self, owner: &FlowOwner) -> bool {
        owner.user_tag != 0
            && owner.user_tag == self.user_tag
            && self.machine_prefix.as_deref().is_none_or(|p| {
                let tag = machine_hex(owner);
                tag.starts_with(p.get(..tag.len()).unwrap_or(p))
            })
    }
}

/// The part of the machine fingerprint the tag keeps, as hex.
pub fn machine_hex(owner: &FlowOwner) -> String {
    crate::store::hex(&owner.machine_tag.to_le_bytes())
}

/// Names of flow owners, from the users a store knows.
#[derive(Clone, Debug, Default)]
pub struct OwnerNames(HashMap<u64, String>);

impl OwnerNames {
    pub fn new(users: Vec<String>) -> Self {
        Self(users.into_iter().map(|u| (user_tag(&u), u)).collect())
    }

    /// Adds a user (one just authorized).
    pub fn learn(&mut self, user: &str) {
        self.0.entry(user_tag(user)).or_insert_with(|| user.to_owned());
    }

    /// The user an authorized flow belongs to, if known.
    pub fn user(&self, owner: &FlowOwner) -> Option<&str> {
        self.0.get(&owner.user_tag).map(String::as_str)
    }
}

fn user_tag(user: &str) -> u64 {
    let digest = Sha256::new_with_prefix(b"ackgate flow owner\0").chain_update(user.as_bytes()).finalize();
    first_word(&digest).max(1)
}

/// The fingerprint is a SHA-256 already: its first eight bytes.
fn machine_tag(machine: &[u8; 32]) -> u64 {
    first_word(machine)
}

fn first_word(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_belongs_to_its_user_and_machine_only() {
        let mut laptop = [0x11; 32];
        laptop[7] = 0xab;
        let o = owner("alice", &laptop);
        assert_eq!(machine_hex(&o), "11111111111111ab", "the tag keeps the fingerprint's first eight bytes");
        let belongs_to = |o: &FlowOwner, user: &str, prefix: Option<&str>| OwnerFilter::new(user, prefix).covers(o);
        assert!(belongs_to(&o, "alice", None), "all of alice's flows");
        assert!(belongs_to(&o, "alice", Some("1111")), "alice on the laptop, short prefix");
        assert!(belongs_to(&o, "alice", Some("11111111111111AB1111")), "a prefix longer than the tag");
        assert!(!belongs_to(&o, "alice", Some("2222")), "only alice's desktop was revoked");
        assert!(!belongs_to(&o, "alice", Some("11111111111111ac")), "a different machine with a shared prefix");
        assert!(!belongs_to(&o, "bob", None), "bob's revocation must not end alice's flow");
        assert!(!belongs_to(&FlowOwner::default(), "alice", None), "a flow not yet authorized has no owner");
        let names = OwnerNames::new(vec!["bob".into(), "alice".into()]);
        assert_eq!(names.user(&o), Some("alice"));
        assert_eq!(names.user(&FlowOwner::default()), None);
    }
}
