//! The machine fingerprint sent in every profile (docs/agent.md).
//!
//! SHA-256 over, in this order, each length-prefixed (absent = 0xffffffff):
//! - `/etc/machine-id` (systemd's per-installation id);
//! - `/sys/class/dmi/id/product_uuid` and `product_serial` (root-readable
//!   firmware ids; absent in most VMs and containers);
//! - the MAC addresses of physical interfaces (those with a `device` link in
//!   sysfs) whose address is the burned-in one (`addr_assign_type` 0), sorted.
//!
//! Only the hash leaves the machine. It changes when the OS is reinstalled
//! (new machine-id) or a network card is replaced, which is the point: the
//! gateway then sees an unknown machine that an administrator must approve.

use std::path::Path;

use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"ackgate machine fingerprint v1";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub machine_id: Option<String>,
    pub product_uuid: Option<String>,
    pub product_serial: Option<String>,
    pub permanent_macs: Vec<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Reads the inputs from the running system (`root` is `/` outside tests).
pub fn collect(root: &Path) -> Inputs {
    let mut macs = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("sys/class/net")) {
        for entry in dir.flatten() {
            let dev = entry.path();
            let physical = dev.join("device").exists();
            let permanent = read_trimmed(&dev.join("addr_assign_type")).as_deref() == Some("0");
            if physical
                && permanent
                && let Some(mac) = read_trimmed(&dev.join("address"))
            {
                macs.push(mac);
            }
        }
    }
    macs.sort();
    macs.dedup();
    Inputs {
        machine_id: read_trimmed(&root.join("etc/machine-id")),
        product_uuid: read_trimmed(&root.join("sys/class/dmi/id/product_uuid")),
        product_serial: read_trimmed(&root.join("sys/class/dmi/id/product_serial")),
        permanent_macs: macs,
    }
}

pub fn digest(inputs: &Inputs) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    let mut field = |v: Option<&str>| match v {
        Some(s) => {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        None => h.update(u32::MAX.to_be_bytes()),
    };
    field(inputs.machine_id.as_deref());
    field(inputs.product_uuid.as_deref());
    field(inputs.product_serial.as_deref());
    for mac in &inputs.permanent_macs {
        field(Some(mac));
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_fingerprint() {
        let base = Inputs {
            machine_id: Some("a".into()),
            product_uuid: Some("b".into()),
            product_serial: None,
            permanent_macs: vec!["02:00:00:00:00:01".into()],
        };
        let d = digest(&base);
        let variants = [
            Inputs { machine_id: Some("x".into()), ..base.clone() },
            Inputs { product_uuid: None, ..base.clone() },
            Inputs { product_serial: Some("".into()), ..base.clone() },
            Inputs { permanent_macs: vec![], ..base.clone() },
            // Field boundaries matter: "ab" + absent differs from "a" + "b".
            Inputs { machine_id: Some("ab".into()), product_uuid: None, ..base.clone() },
        ];
        for v in variants {
            assert_ne!(digest(&v), d, "{v:?} hashed like {base:?}");
        }
    }

    #[test]
    fn reads_a_system_tree() {
        let root = std::env::temp_dir().join(format!("ackgate-fp-{}", std::process::id()));
        let nic = root.join("sys/class/net/eth0");
        std::fs::create_dir_all(nic.join("device")).expect("mkdir");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/machine-id"), "abc\n").expect("write");
        std::fs::write(nic.join("addr_assign_type"), "0\n").expect("write");
        std::fs::write(nic.join("address"), "02:00:00:00:00:09\n").expect("write");
        let got = collect(&root);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(got.machine_id.as_deref(), Some("abc"));
        assert_eq!(got.permanent_macs, vec!["02:00:00:00:00:09".to_owned()]);
    }
}
