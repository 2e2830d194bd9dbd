//! The `page` decoy next to the server it imitates: a stock nginx and the
//! decoy's own responder in one fresh network namespace, and a client that
//! records what each answers to the same bytes, and how the connection
//! ends.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ackgate_gateway::page::{self, PageService, Timeouts};

use crate::topology::run_in_netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh network namespace with its loopback up, removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!("agpg{}n{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        for args in [vec!["netns", "add", &name], vec!["-n", &name, "link", "set", "lo", "up"]] {
            let out = Command::new("ip").args(&args).output().expect("running ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self { name }
    }

    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in_netns(&self.name, f)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The nginx binary: `ACKGATE_NGINX`, else the one `cargo xtask setup`
/// unpacked into its cache (`ACKGATE_CACHE`, default ~/.cache/ackgate),
/// else `nginx` on PATH or in /usr/sbin.
pub fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ACKGATE_NGINX") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("ACKGATE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/ackgate")
    });
    let path = std::env::var_os("PATH").unwrap_or_default();
    [cache.join("nginx/usr/sbin")]
        .into_iter()
        .chain(std::env::split_paths(&path))
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no nginx binary (the decoy is compared with a real one): run `cargo xtask setup`, or set ACKGATE_NGINX"
            )
        })
}

/// nginx in the foreground (`daemon off`) in a namespace, stopped on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with the `http { }` block `http` (paths inside it may
    /// use `{dir}`, a scratch directory), and waits until `ports` accept.
    pub fn start(ns: &Netns, http: &str, ports: &[u16]) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-nginx", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx scratch dir");
        let d = dir.display().to_string();
        // Temporary paths, pid file and logs in the scratch directory: the
        // binary's compiled-in ones belong to a system install.
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
            http.replace("{dir}", &d)
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg(nginx_binary())
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let mut nginx = Self { child, dir };
        for &port in ports {
            nginx.wait_listening(ns, port);
        }
        nginx
    }

    fn wait_listening(&mut self, ns: &Netns, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            if ns.run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(1))).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// `nginx -v`.
    pub fn version() -> String {
        let out = Command::new(nginx_binary()).arg("-v").output().expect("running nginx -v");
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling the nginx master this harness started; it
        // stops its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The decoy's responders, on loopback ports of a namespace, served by a
/// runtime of their own until dropped.
pub struct Decoy {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Decoy {
    /// Serves each (port, service) on 127.0.0.1 in `ns` with `timeouts`.
    pub fn start(ns: &Netns, services: Vec<(u16, PageService)>, timeouts: Timeouts) -> Self {
        let listeners: Vec<(std::net::TcpListener, PageService)> = ns.run_in(|| {
            services
                .into_iter()
                .map(|(port, s)| {
                    let l = std::net::TcpListener::bind(("127.0.0.1", port))
                        .unwrap_or_else(|e| panic!("binding the decoy on {port}: {e}"));
                    l.set_nonblocking(true).expect("non-blocking listener");
                    (l, s)
                })
                .collect()
        });
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("decoy runtime");
        let counters = Arc::new(page::Counters::default());
        for (listener, service) in listeners {
            let counters = counters.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                page::serve(listener, service, 256, timeouts, counters).await;
            });
        }
        Self { runtime: Some(runtime) }
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// One step of a client.
#[derive(Clone, Debug)]
pub enum Step {
    Send(Vec<u8>),
    Pause(Duration),
    /// Half-close (the client's FIN).
    ShutWrite,
}

/// How a connection ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The server's FIN.
    Fin,
    /// A reset.
    Reset,
    /// Still open when the client stopped watching.
    Open,
}

/// What a client saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub end: End,
    /// From the connect to the end (or to when watching stopped).
    pub after: Duration,
}

/// Connects to `to` from inside `ns`, plays `steps`, then reads until the
/// connection ends or `watch` has passed since the connect.
pub fn exchange(ns: &Netns, to: SocketAddr, steps: &[Step], watch: Duration) -> Seen {
    ns.run_in(|| {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        let mut bytes = Vec::new();
        let mut buf = [0u8; 65536];
        for step in steps {
            match step {
                Step::Send(b) => {
                    if s.write_all(b).is_err() {
                        break;
                    }
                }
                Step::Pause(d) => std::thread::sleep(*d),
                Step::ShutWrite => {
                    let _ = s.shutdown(Shutdown::Write);
                }
            }
        }
        loop {
            let left = watch.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Seen { bytes, end: End::Open, after: start.elapsed() };
            }
            s.set_read_timeout(Some(left)).expect("read timeout");
            match s.read(&mut buf) {
                Ok(0) => return Seen { bytes, end: End::Fin, after: start.elapsed() },
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Seen { bytes, end: End::Reset, after: start.elapsed() };
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from {to}: {e}"),
            }
        }
    })
}

/// `bytes` with every `Date:` header's value replaced, so that answers
/// from different moments compare.
pub fn undated(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(8).position(|w| w == b"\r\nDate: ") {
        out.extend_from_slice(&rest[..at + 8]);
        out.extend_from_slice(b"<date>");
        rest = &rest[at + 8..];
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

/// A page file in `dir` with a fixed modification time, so that its ETag
/// is known.
pub fn page_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("page file dir");
    let path = dir.join("404.html");
    std::fs::write(&path, "<html><body><h1>Nothing here</h1></body></html>\n").expect("page file");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)))
        .expect("page file time");
    path
}

/// A TLS ClientHello in one handshake record, from its parts.
#[derive(Clone, Debug)]
pub struct Hello {
    pub record_version: u16,
    pub legacy_version: u16,
    pub session_id: Vec<u8>,
    pub suites: Vec<u16>,
    pub compressions: Vec<u8>,
    /// (type, body); None: no extensions block at all.
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Hello {
    /// A TLS 1.2 ClientHello naming `sni`, as a browser's would look in
    /// outline.
    pub fn tls12(sni: &str) -> Self {
        Self {
            record_version: 0x0301,
            legacy_version: 0x0303,
            session_id: Vec::new(),
            suites: vec![0xc02b, 0xc02f, 0xc02c, 0xc030, 0x009e, 0x00ff],
            compressions: vec![0],
            extensions: Some(vec![
                (0, ext::sni(sni)),
                (11, vec![1, 0]),
                (10, ext::list16(&[29, 23, 24])),
                (13, ext::list16(&[0x0403, 0x0804, 0x0401])),
                (23, Vec::new()),
                (16, ext::alpn(&["h2", "http/1.1"])),
            ]),
        }
    }

    /// A TLS 1.3 ClientHello (with an x25519 key share) naming `sni`.
    pub fn tls13(sni: &str) -> Self {
        let mut h = Self::tls12(sni);
        h.session_id = vec![0x5a; 32];
        h.suites = [vec![0x1301, 0x1302, 0x1303], h.suites].concat();
        let exts = h.extensions.get_or_insert_with(Vec::new);
        exts.push((43, ext::list8_16(&[0x0304, 0x0303])));
        exts.push((45, vec![1, 1]));
        exts.push((51, ext::key_share(&[(29, vec![0x42; 32])])));
        h
    }

    pub fn with_ext(mut self, kind: u16, body: Vec<u8>) -> Self {
        self.extensions.get_or_insert_with(Vec::new).push((kind, body));
        self
    }

    pub fn without_ext(mut self, kind: u16) -> Self {
        if let Some(e) = self.extensions.as_mut() {
            e.retain(|(k, _)| *k != kind);
        }
        self
    }

    /// The handshake message (header included).
    pub fn message(&self) -> Vec<u8> {
        let mut body = self.legacy_version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x17; 32]);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&((self.suites.len() * 2) as u16).to_be_bytes());
        for s in &self.suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.push(self.compressions.len() as u8);
        body.extend_from_slice(&self.compressions);
        if let Some(exts) = &self.extensions {
            let mut e = Vec::new();
            for (kind, data) in exts {
                e.extend_from_slice(&kind.to_be_bytes());
                e.extend_from_slice(&(data.len() as u16).to_be_bytes());
                e.extend_from_slice(data);
            }
            body.extend_from_slice(&(e.len() as u16).to_be_bytes());
            body.extend_from_slice(&e);
        }
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// The message in one record.
    pub fn record(&self) -> Vec<u8> {
        record(22, self.record_version, &self.message())
    }
}

/// A TLS record.
pub fn record(kind: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// Extension bodies.
pub mod ext {
    pub fn sni(name: &str) -> Vec<u8> {
        let mut v = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v
    }

    pub fn list16(items: &[u16]) -> Vec<u8> {
        let mut v = ((items.len() * 2) as u16).to_be_bytes().to_vec();
        for i in items {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    pub fn list8_16(items: &[u16]) -> Vec<u8> {
        let mut v = vec![(items.len() * 2) as u8];
        for i in items {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    pub fn alpn(names: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(n.len() as u8);
            list.extend_from_slice(n.as_bytes());
        }
        let mut v = (list.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&list);
        v
    }

    pub fn key_share(shares: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut list = Vec::new();
        for (group, key) in shares {
            list.extend_from_slice(&group.to_be_bytes());
            list.extend_from_slice(&(key.len() as u16).to_be_bytes());
            list.extend_from_slice(key);
        }
        let mut v = (list.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&list);
        v
    }
}

/// The ClientHello a rustls client sends for `versions` (its first
/// flight, as bytes).
pub fn rustls_hello(sni: &str, versions: &[&'static rustls::SupportedProtocolVersion]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("rustls client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("ClientHello");
    out
}
