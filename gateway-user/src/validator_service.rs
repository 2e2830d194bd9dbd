//! The validator as its own service (DESIGN.md §4): the same framing as the
//! agent protocol, over mutual TLS 1.3 between one gateway and the
//! validator. Both certificates come from the gateway's CA
//! (`ackgate validator credentials`); the validator accepts only the one
//! gateway certificate it was given, so an agent (whose certificate the same
//! CA signed) cannot query it.
//!
//! Files in a credentials directory: `ca.pem`, `validator.pem` +
//! `validator.key` (server), `gateway.pem` + `gateway.key` (client).

use std::path::Path;
use std::sync::Arc;

use ackgate_common::proto::{CheckLogin, LoginChecked, Message, MessageCodec, ProtoError, Validate, Validated};
use futures_util::{SinkExt, StreamExt};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use crate::agents::ProfileOutcome;
use crate::pki::{Ca, ExtendedKeyUsagePurpose, PkiError, certificate_pem};
use crate::validator::{Decider, ServiceRule, Verdict};

/// The name the validator's certificate carries and the gateway checks.
pub const VALIDATOR_SERVER_NAME: &str = "validator.ackgate.invalid";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("validator credentials {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Protocol(#[from] ProtoError),
    #[error("cannot reach the validator at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_cert(dir: &Path, name: &str) -> Result<CertificateDer<'static>, LinkError> {
    let path = dir.join(name);
    CertificateDer::from_pem_file(&path)
        .map_err(|e| LinkError::Credentials { path: path.display().to_string(), reason: e.to_string() })
}

fn read_key(dir: &Path, name: &str) -> Result<PrivateKeyDer<'static>, LinkError> {
    let path = dir.join(name);
    PrivateKeyDer::from_pem_file(&path)
        .map_err(|e| LinkError::Credentials { path: path.display().to_string(), reason: e.to_string() })
}

/// Writes a credentials directory for one gateway–validator pair.
pub fn write_credentials(ca: &Ca, dir: &Path) -> Result<(), LinkError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path, e: std::io::Error| LinkError::Credentials {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    let server = ca.issue(VALIDATOR_SERVER_NAME, "ackgate validator", ExtendedKeyUsagePurpose::ServerAuth)?;
    let client =
        ca.issue("gateway.client.ackgate.invalid", "ackgate gateway client", ExtendedKeyUsagePurpose::ClientAuth)?;
    let key_pem = |k: &PrivateKeyDer<'_>| pem::encode(&pem::Pem::new("PRIVATE KEY", k.secret_der().to_vec()));
    let files: [(&str, String, u32); 5] = [
        ("ca.pem", certificate_pem(ca.cert_der()), 0o644),
        ("validator.pem", certificate_pem(&server.chain[0]), 0o644),
        ("validator.key", key_pem(&server.key), 0o600),
        ("gateway.pem", certificate_pem(&client.chain[0]), 0o644),
        ("gateway.key", key_pem(&client.key), 0o600),
    ];
    for (name, text, mode) in files {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// Serves validation requests with `decider` until the task is dropped.
pub async fn serve(listener: TcpListener, credentials: &Path, decider: Arc<dyn Decider>) -> Result<(), LinkError> {
    let ca = read_cert(credentials, "ca.pem")?;
    let allowed: [u8; 32] = Sha256::digest(read_cert(credentials, "gateway.pem")?).into();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| LinkError::Tls(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let (cert, key) = (read_cert(credentials, "validator.pem")?, read_key(credentials, "validator.key")?);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| b.with_client_cert_verifier(verifier).with_single_cert(vec![cert, ca], key))
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let (acceptor, decider) = (acceptor.clone(), decider.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let cert: Option<[u8; 32]> =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Sha256::digest(c).into());
                    if cert != Some(allowed) {
                        tracing::warn!(%peer, "validator: refused a client that is not the configured gateway");
                        return;
                    }
                    if let Err(e) = answer(Framed::new(tls, MessageCodec::default()), decider).await {
                        tracing::info!(%peer, "validator link ended: {e}");
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn answer(
    mut conn: Framed<tokio_rustls::server::TlsStream<TcpStream>, MessageCodec>,
    decider: Arc<dyn Decider>,
) -> Result<(), ProtoError> {
    while let Some(msg) = conn.next().await {
        let d = decider.clone();
        let reply = match msg? {
            Message::CheckLogin(c) => {
                let accepted =
                    tokio::task::spawn_blocking(move || d.check_login(&c.user, &c.password)).await.unwrap_or(false);
                Message::LoginChecked(LoginChecked { request_id: c.request_id, accepted })
            }
            Message::Validate(v) => {
                let request_id = v.request_id;
                let outcome = ProfileOutcome { agent_id: v.agent_id, profile: v.profile, proof_valid: v.proof_valid };
                let rule = ServiceRule { name: v.service, allow_groups: v.allow_groups };
                let verdict = tokio::task::spawn_blocking(move || d.decide(&outcome, &rule, &v.source))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                let (authorized, reason, recorded) = match verdict {
                    Ok(Verdict::Authorized) => (true, "valid user on an approved machine".to_owned(), false),
                    Ok(Verdict::Denied { reason, recorded }) => (false, reason, recorded),
                    Err(e) => (false, format!("validator failed: {e}"), false),
                };
                Message::Validated(Validated { request_id, authorized, reason, recorded })
            }
            Message::Ping(n) => Message::Pong(n),
            other => return Err(ProtoError::Unexpected { want: "CheckLogin or Validate", got: other.name() }),
        };
        conn.send(reply).await?;
    }
    Ok(())
}

type Link = Framed<tokio_rustls::client::TlsStream<TcpStream>, MessageCodec>;

/// The gateway's side: a [`Decider`] that asks the remote validator. One
/// connection, requests in turn, reconnected after any failure.
pub struct RemoteValidator {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    link: tokio::sync::Mutex<Option<Link>>,
    next: std::sync::atomic::AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl RemoteValidator {
    /// `credentials` holds `ca.pem`, `gateway.pem`, `gateway.key`. Must be
    /// created inside the runtime it will use.
    pub fn new(addr: &str, credentials: &Path) -> Result<Self, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(read_cert(credentials, "ca.pem")?).map_err(|e| LinkError::Tls(e.to_string()))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![read_cert(credentials, "gateway.pem")?], read_key(credentials, "gateway.key")?)
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        Ok(Self {
            addr: addr.to_owned(),
            tls: Arc::new(tls),
            link: tokio::sync::Mutex::new(None),
            next: std::sync::atomic::AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    async fn connect(&self) -> Result<Link, LinkError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| LinkError::Connect { addr: self.addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(VALIDATOR_SERVER_NAME).map_err(|e| LinkError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| LinkError::Connect { addr: self.addr.clone(), source })?;
        Ok(Framed::new(tls, MessageCodec::default()))
    }

    /// One request and its answer; reconnects and retries once.
    async fn call(&self, request: Message) -> Result<Message, LinkError> {
        let mut link = self.link.lock().await;
        for attempt in 0..2 {
            if link.is_none() {
                *link = Some(self.connect().await?);
            }
            let Some(conn) = link.as_mut() else { continue };
            let result = async {
                conn.send(request.clone()).await?;
                conn.next().await.ok_or(ProtoError::Closed)?
            }
            .await;
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt == 0 => {
                    tracing::info!("validator link: {e}; reconnecting");
                    *link = None;
                }
                Err(e) => {
                    *link = None;
                    return Err(e.into());
                }
            }
        }
        Err(ProtoError::Closed.into())
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Decider for RemoteValidator {
    fn check_login(&self, user: &str, password: &str) -> bool {
        let request_id = self.id();
        let msg = Message::CheckLogin(CheckLogin {
            request_id,
            user: user.to_owned(),
            password: zeroize::Zeroizing::new(password.to_owned()),
        });
        match self.runtime.block_on(self.call(msg)) {
            Ok(Message::LoginChecked(r)) if r.request_id == request_id => r.accepted,
            Ok(other) => {
                tracing::warn!("validator answered a login check with {}", other.name());
                false
            }
            Err(e) => {
                tracing::warn!("validator: {e}");
                false
            }
        }
    }

    fn decide(&self, outcome: &ProfileOutcome, service: &ServiceRule, source: &str) -> Result<Verdict, String> {
        let request_id = self.id();
        let msg = Message::Validate(Validate {
            request_id,
            agent_id: outcome.agent_id,
            profile: outcome.profile.clone(),
            proof_valid: outcome.proof_valid,
            service: service.name.clone(),
            allow_groups: service.allow_groups.clone(),
            source: source.to_owned(),
        });
        match self.runtime.block_on(self.call(msg)) {
            Ok(Message::Validated(v)) if v.request_id == request_id => Ok(if v.authorized {
                Verdict::Authorized
            } else {
                Verdict::Denied { reason: v.reason, recorded: v.recorded }
            }),
            Ok(other) => Err(format!("unexpected answer {}", other.name())),
            Err(e) => Err(e.to_string()),
        }
    }
}
