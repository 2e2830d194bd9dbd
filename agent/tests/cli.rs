//! The `ackgate-agent` binary end to end: bad input gets a clear error; and
//! in a network namespace of its own, with the real agent listener of the
//! gateway in-process: enroll, run (stamper attached to a veth),
//! login over the control socket, status, and a clean stop on SIGTERM.
//! Runs as root.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ackgate_gateway::agents::{AgentServer, MemoryDirectory, ServerConfig};
use ackgate_gateway::pki::Ca;

const BIN: &str = env!("CARGO_BIN_EXE_ackgate-agent");
static NEXT: AtomicU32 = AtomicU32::new(0);

struct Scratch {
    dir: PathBuf,
    netns: String,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ackgate-agent-cli-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let netns = format!("agacli{}x{n}", std::process::id() % 100_000);
        let out = Command::new("ip").args(["netns", "add", &netns]).output().expect("running ip");
        assert!(out.status.success(), "ip netns add {netns}: {}", String::from_utf8_lossy(&out.stderr));
        let scratch = Self { dir, netns };
        let ns = scratch.netns.as_str();
        for args in [
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            vec!["-n", ns, "link", "set", "d0", "up"],
            vec!["-n", ns, "link", "set", "d1", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("running ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        scratch
    }

    fn config(&self, extra: &str) -> PathBuf {
        let text = format!(
            "state_dir = \"{0}/state\"\ncontrol_socket = \"{0}/ctl.sock\"\ninterfaces = [\"d0\"]\n{extra}",
            self.dir.display()
        );
        let path = self.dir.join("agent.toml");
        std::fs::write(&path, text).expect("config");
        path
    }

    /// `ackgate-agent --config CONFIG ARGS` inside the namespace.
    fn agent(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, BIN, "--config"]).arg(self.dir.join("agent.toml")).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/var/run/netns/{}", self.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("netns file");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_input_gets_a_clear_error() {
    let s = Scratch::new("bad");
    let missing = Command::new(BIN).args(["--config", "/nonexistent/agent.toml", "status"]).output().expect("run");
    assert!(!missing.status.success() && stderr(&missing).contains("cannot read config"), "{}", stderr(&missing));
    s.config("colour = 1\n");
    let bad_key = s.agent(&["status"]).output().expect("run");
    assert!(stderr(&bad_key).contains("unknown field"), "unknown key: {}", stderr(&bad_key));
    s.config("");
    let not_enrolled = s.agent(&["run"]).output().expect("run");
    assert!(stderr(&not_enrolled).contains("not enrolled"), "run before enroll: {}", stderr(&not_enrolled));
    let garbage = s.agent(&["enroll", "hello"]).output().expect("run");
    assert!(stderr(&garbage).contains("not an ackgate invite"), "garbage invite: {}", stderr(&garbage));
    let no_daemon = s.agent(&["status"]).output().expect("run");
    assert!(stderr(&no_daemon).contains("is `ackgate-agent run` running?"), "status: {}", stderr(&no_daemon));
    for o in [&missing, &bad_key, &not_enrolled, &garbage, &no_daemon] {
        assert_eq!(o.status.code(), Some(1), "errors exit with 1, never a panic: {}", stderr(o));
    }
}

/// The daemon a test started; killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn enroll_run_login_status_and_clean_stop() {
    let s = Scratch::new("life");
    s.config("");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = s.run_in(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let directory = Arc::new(MemoryDirectory::default());
    directory.add_user("alice", "s3cret");
    let ca = Ca::generate().expect("CA");
    let fingerprint = ca.fingerprint();
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = AgentServer::new(ca, directory.clone(), directory.logins(), config).expect("server");
    let l = rt.block_on(async { tokio::net::TcpListener::from_std(listener) }).expect("tokio listener");
    rt.spawn(server.clone().serve(l));

    let invite = directory.create_invite(&addr.to_string(), fingerprint, Duration::from_secs(60)).encode();
    let enrolled = s.agent(&["enroll", &invite, "--hostname", "cli-test"]).output().expect("enroll");
    assert!(enrolled.status.success(), "enroll failed: {}", stderr(&enrolled));
    let mut daemon = Running(s.agent(&["run"]).stderr(Stdio::piped()).spawn().expect("starting run"));
    let daemon = &mut daemon.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.connected().is_empty() {
        assert!(Instant::now() < deadline, "the agent did not open its session");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut login = s
        .agent(&["login", "--user", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("login");
    login.stdin.take().expect("stdin").write_all(b"s3cret\n").expect("password");
    let login = login.wait_with_output().expect("login output");
    assert!(login.status.success(), "login failed: {}", stderr(&login));
    assert!(String::from_utf8_lossy(&login.stdout).contains("logged in as alice"));

    let status = s.agent(&["status", "--json"]).output().expect("status");
    assert!(status.status.success(), "status failed: {}", stderr(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(report["session"]["state"], "connected", "{report}");
    let login = &report["session"]["logins"][0];
    assert_eq!(
        (&login["user"], &login["account"]),
        (&"alice".into(), &0.into()),
        "root logs in for its own account: {report}"
    );
    assert_eq!(report["interfaces"][0], "d0", "{report}");
    // `ackgate-agent status --json | head`: a reader that goes away ends
    // the command quietly, by SIGPIPE, never with a panic.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let piped = s.agent(&["status", "--json"]).stdout(writer).output().expect("status into a closed pipe");
    assert!(!stderr(&piped).contains("panicked"), "{}", stderr(&piped));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&piped.status), Some(libc::SIGPIPE), "{:?}", piped.status);

    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(st) = daemon.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the agent did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().expect("stderr"), &mut log).expect("log");
    assert!(code.success(), "the agent must exit 0 on SIGTERM: {code:?}\n{log}");
    assert!(!s.dir.join("ctl.sock").exists(), "the control socket must be removed on exit");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.connected().is_empty() {
        assert!(Instant::now() < deadline, "the gateway still holds the session after the agent stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}
