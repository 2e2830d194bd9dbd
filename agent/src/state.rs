//! The enrolled identity on disk: a root-only directory (mode 0700) whose
//! files are replaced atomically (write a temporary file, fsync, rename,
//! fsync the directory), so a crash leaves the old or the new identity,
//! never a torn one.
//!
//! | file | mode | content |
//! |---|---|---|
//! | `agent.toml` | 0600 | agent id, gateway address, install serial, host name |
//! | `mac.key` | 0600 | the capability MAC key, 32 hex digits |
//! | `client.pem` / `client.key` | 0644 / 0600 | TLS client certificate and key |
//! | `ca.pem` | 0644 | the gateway CA the invite named |
//!
//! No password is ever written here.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ackgate_common::mac::MacKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("this agent is not enrolled ({dir} has no agent.toml): run `ackgate-agent enroll INVITE` first")]
    NotEnrolled { dir: String },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error("{dir} is readable by other users (mode {mode:o}); it holds keys: chmod 700 it")]
    Permissions { dir: String, mode: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_id: u32,
    /// `host:port` of the gateway's agent listener.
    pub gateway: String,
    pub install_serial: String,
    pub hostname: String,
    pub enrolled_unix: u64,
}

/// Everything enrollment produced.
pub struct Enrollment {
    pub info: AgentInfo,
    pub mac_key: MacKey,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

pub struct StateDir {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.display().to_string(), source }
}

fn damaged(path: &Path, reason: impl ToString) -> StateError {
    StateError::Damaged { path: path.display().to_string(), reason: reason.to_string() }
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes a whole enrollment, file by file, each atomically;
    /// `agent.toml` last, so a half-written enrollment never looks complete.
    pub fn store(&self, e: &Enrollment) -> Result<(), StateError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))?;
        let key_hex: String = key_bytes(&e.mac_key).iter().map(|b| format!("{b:02x}")).collect();
        self.write("mac.key", key_hex.as_bytes(), 0o600)?;
        self.write("client.pem", pem("CERTIFICATE", &e.cert).as_bytes(), 0o644)?;
        self.write("client.key", pem("PRIVATE KEY", e.key.secret_der()).as_bytes(), 0o600)?;
        self.write("ca.pem", pem("CERTIFICATE", &e.ca).as_bytes(), 0o644)?;
        let info = toml::to_string(&e.info).map_err(|err| damaged(&self.dir.join("agent.toml"), err))?;
        self.write("agent.toml", info.as_bytes(), 0o600)
    }

    pub fn is_enrolled(&self) -> bool {
        self.dir.join("agent.toml").exists()
    }

    pub fn load(&self) -> Result<Enrollment, StateError> {
        if !self.is_enrolled() {
            return Err(StateError::NotEnrolled { dir: self.dir.display().to_string() });
        }
        let meta = std::fs::metadata(&self.dir).map_err(io(&self.dir))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::Permissions { dir: self.dir.display().to_string(), mode });
        }
        self.finish_renewal()?;
        let info_path = self.dir.join("agent.toml");
        let info: AgentInfo = toml::from_str(&std::fs::read_to_string(&info_path).map_err(io(&info_path))?)
            .map_err(|e| damaged(&info_path, e))?;
        let key_path = self.dir.join("mac.key");
        let hex = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let mac_key = parse_key(hex.trim()).ok_or_else(|| damaged(&key_path, "expected 32 hex digits"))?;
        let cert_path = self.dir.join("client.pem");
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| damaged(&cert_path, e))?;
        let tls_key_path = self.dir.join("client.key");
        let key = PrivateKeyDer::from_pem_file(&tls_key_path).map_err(|e| damaged(&tls_key_path, e))?;
        let ca_path = self.dir.join("ca.pem");
        let ca = CertificateDer::from_pem_file(&ca_path).map_err(|e| damaged(&ca_path, e))?;
        Ok(Enrollment { info, mac_key, cert, key, ca })
    }

    /// Replaces the session certificate and its key. Both new files are
    /// written in full first (`*.renewed`), then renamed key first; a crash
    /// between the renames is finished by the next [`StateDir::load`], so
    /// the pair on disk always matches.
    pub fn store_renewed(&self, cert: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Result<(), StateError> {
        self.write(RENEWED_KEY, pem("PRIVATE KEY", key.secret_der()).as_bytes(), 0o600)?;
        self.write(RENEWED_CERT, pem("CERTIFICATE", cert).as_bytes(), 0o644)?;
        self.finish_renewal()
    }

    /// Moves a fully written renewal into place; drops a half-written one
    /// (a key without its certificate: the old pair is still whole).
    fn finish_renewal(&self) -> Result<(), StateError> {
        let (cert, key) = (self.dir.join(RENEWED_CERT), self.dir.join(RENEWED_KEY));
        if !cert.exists() {
            let _ = std::fs::remove_file(&key);
            return Ok(());
        }
        if key.exists() {
            let to = self.dir.join("client.key");
            std::fs::rename(&key, &to).map_err(io(&to))?;
        }
        let to = self.dir.join("client.pem");
        std::fs::rename(&cert, &to).map_err(io(&to))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
    }

    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
        let path = self.dir.join(name);
        ackgate_common::host::replace_file(&path, bytes, mode).map_err(io(&path))
    }
}

const RENEWED_CERT: &str = "client.pem.renewed";
const RENEWED_KEY: &str = "client.key.renewed";

fn key_bytes(k: &MacKey) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&k.k0.to_le_bytes());
    b[8..].copy_from_slice(&k.k1.to_le_bytes());
    b
}

fn parse_key(hex: &str) -> Option<MacKey> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(MacKey::from_bytes(b))
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_key_text_roundtrips() {
        let k = MacKey { k0: 0x0102_0304_0506_0708, k1: 0x1112_1314_1516_1718 };
        let hex: String = key_bytes(&k).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_key(&hex), Some(k));
        assert_eq!(parse_key("zz"), None);
        assert_eq!(parse_key(&"é".repeat(16)), None);
    }
}
