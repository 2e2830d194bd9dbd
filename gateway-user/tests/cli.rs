//! The `ackgate` binary end to end: bad input gets a clear error, and
//! `run` attaches, serves `status`, and detaches on SIGTERM. Runs as root;
//! the lifecycle test works inside a network namespace of its own.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ackgate");
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch directory (and optionally a network namespace) removed on drop.
struct Scratch {
    dir: PathBuf,
    netns: Option<String>,
    pin_dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("ackgate-cli-{id}"));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self { dir, netns: None, pin_dir: PathBuf::from(format!("/sys/fs/bpf/ackgate-cli-{id}")) }
    }

    fn with_netns(mut self) -> Self {
        let name = format!("agcli{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("running ip netns add");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        // Recorded at once, so that Drop deletes it whatever fails next.
        self.netns = Some(name.clone());
        let up = Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).output().expect("ip link");
        assert!(up.status.success(), "bringing lo up in {name}");
        // The internal interface the splice needs: one end of a veth pair
        // will do here.
        for args in [
            &["link", "add", INTERNAL, "type", "veth", "peer", "name", "agint1"][..],
            &["link", "set", INTERNAL, "up"],
            &["link", "set", "agint1", "up"],
        ] {
            let out = Command::new("ip").args(["-n", &name]).args(args).output().expect("ip link");
            assert!(out.status.success(), "ip {args:?} in {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        self
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("writing a scratch file");
        p
    }

    /// `ackgate ARGS`, inside the namespace if there is one. `nsenter
    /// --net` rather than `ip netns exec`: the latter also remounts /sys,
    /// which hides the host's /sys/fs/bpf and its pinned maps.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running ackgate")
    }

    fn config(&self, iface: &str, mode: &str, extra: &str) -> PathBuf {
        self.write(
            "gateway.toml",
            &format!(
                "[gateway]\nedge_interface = \"{iface}\"\ninternal_interface = \"{INTERNAL}\"\nxdp_mode = \"{mode}\"\n\
                 pin_dir = \"{}\"\n{extra}",
                self.pin_dir.display()
            ),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns {
            // A test that failed before stopping its daemon leaves it running
            // in the namespace: only processes this test started are there.
            let _ = Command::new("ip").args(["netns", "pids", ns]).output().map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            });
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The internal interface of the namespaced runs.
const INTERNAL: &str = "agint0";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "bad input must not panic:\n{err}");
}

#[test]
fn help_teaches_the_commands() {
    let o = Command::new(BIN).arg("--help").output().expect("running ackgate --help");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "--help must succeed");
    for cmd in ["init", "run", "invite", "users", "agents", "services", "flows", "validator", "status"] {
        assert!(text.contains(cmd), "--help should list {cmd}:\n{text}");
    }
    // Every command's own help works (clap checks each command's
    // definition only when it is parsed).
    for cmd in [
        "init",
        "run",
        "invite",
        "flows",
        "status",
        "users add",
        "users list",
        "users pending",
        "users approve",
        "users revoke",
        "users show",
        "agents list",
        "agents show",
        "agents revoke",
        "services list",
        "services add",
        "services remove",
        "validator run",
        "validator credentials",
    ] {
        let o = Command::new(BIN).args(cmd.split(' ')).arg("--help").output().expect("running --help");
        assert!(o.status.success(), "`ackgate {cmd} --help` failed: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let s = Scratch::new("bad");
    let missing = s.dir.join("nope.toml");
    assert_fails_with(
        &s.run(&["run", "--config", missing.to_str().expect("utf-8")]),
        &["cannot read config", "nope.toml"],
    );

    let syntax = s.write("syntax.toml", "[gateway\nedge_interface = 1\n");
    assert_fails_with(&s.run(&["run", "--config", syntax.to_str().expect("utf-8")]), &["syntax.toml"]);

    let no_iface = s.config("ackgate-none0", "generic", "");
    assert_fails_with(&s.run(&["run", "--config", no_iface.to_str().expect("utf-8")]), &["ackgate-none0"]);

    let key = s.write("agent.key", "00112233445566778899aabbccddeeff\n");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let loose = s.config("lo", "generic", &format!("[[static_agents]]\nid = 1\nkey_file = \"{}\"\n", key.display()));
    assert_fails_with(&s.run(&["run", "--config", loose.to_str().expect("utf-8")]), &["chmod 600"]);

    assert_fails_with(&s.run(&["run", "--bogus"]), &["--bogus"]);
    assert_fails_with(&s.run(&["status", "--pin-dir", "/sys/fs/bpf/ackgate-no-such-dir"]), &["ackgate run"]);
}

/// `run` refuses a state directory or user store others can read (the CA
/// key, password records and agent keys are in there); `init` creates both
/// private.
#[test]
fn run_refuses_state_that_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Scratch::new("exposed");
    let state = s.dir.join("state");
    let config = s.config("lo", "generic", &format!("[control]\nstate_dir = \"{}\"\n", state.display()));
    let config = config.to_str().expect("utf-8");
    let init = s.run(&["init", "--config", config]);
    assert!(init.status.success(), "ackgate init: {}", stderr(&init));
    let store = state.join("users.db");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "init must create the state directory private");
    assert_eq!(mode(&store), 0o600, "init must create the user store private");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_fails_with(&s.run(&["run", "--config", config]), &["users.db", "644", "chmod go-rwx"]);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_fails_with(&s.run(&["run", "--config", config]), &["state", "755", "chmod go-rwx"]);
}

/// A start that fails after the gate's maps were pinned (here: the
/// internal interface does not exist) leaves no pinned maps behind, and
/// `status` then finds no gate rather than a gate's counters.
#[test]
fn a_failed_start_leaves_no_pinned_gate_behind() {
    let s = Scratch::new("debris").with_netns();
    let config = s.write(
        "gateway.toml",
        &format!(
            "[gateway]\nedge_interface = \"lo\"\ninternal_interface = \"nope0\"\nxdp_mode = \"generic\"\n\
             pin_dir = \"{}\"\n",
            s.pin_dir.display()
        ),
    );
    assert_fails_with(&s.run(&["run", "--config", config.to_str().expect("utf-8")]), &["nope0"]);
    let left: Vec<_> = std::fs::read_dir(&s.pin_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed start must remove what it pinned: {left:?}");
    assert!(!xdp_attached(&s, "lo"), "nothing may stay attached");
    let status = s.run(&["status", "--pin-dir", s.pin_dir.to_str().expect("utf-8")]);
    assert!(
        !status.status.success(),
        "status must not report a gate that is not there: {}",
        String::from_utf8_lossy(&status.stdout)
    );
}

fn xdp_attached(s: &Scratch, iface: &str) -> bool {
    let ns = s.netns.as_deref().expect("namespace");
    let o = Command::new("ip").args(["-n", ns, "link", "show", iface]).output().expect("ip link show");
    String::from_utf8_lossy(&o.stdout).contains("xdp")
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("opening the namespace");
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the namespace");
}

/// The protected service's address in the lifecycle test.
const VIP_PORT: &str = "127.0.0.1:8443";
/// What the listener on [`VIP_PORT`] answers.
const ANSWER: &[u8] = b"the listener answers\n";

/// A server on [`VIP_PORT`] inside a namespace: answers each connection
/// with [`ANSWER`] and counts them. Stopped on drop.
struct Listener {
    accepted: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &str) -> Self {
        let accepted = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, is_ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (ns, accepted, stop) = (ns.to_owned(), accepted.clone(), stop.clone());
            move || {
                enter_netns(&ns);
                let listener = TcpListener::bind(VIP_PORT).expect("binding the listener");
                listener.set_nonblocking(true).expect("a non-blocking listener");
                ready.send(()).expect("announcing the listener");
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = conn.read(&mut [0; 64]);
                            let _ = conn.write_all(ANSWER);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => panic!("the listener's accept failed: {e}"),
                    }
                }
            }
        });
        is_ready.recv_timeout(Duration::from_secs(5)).expect("the listener never came up");
        Self { accepted, stop, thread: Some(thread) }
    }

    fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client in namespace `ns`, as any unstamped kernel client: connects to
/// [`VIP_PORT`], sends a line and reads the answer to its end.
fn probe(ns: &str) -> std::io::Result<Vec<u8>> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let addr: SocketAddr = VIP_PORT.parse().expect("an address");
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"hi\n")?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .join()
    .expect("the probe thread")
}

/// The gate's counter `reason`, from `status --json`.
fn gate_count(s: &Scratch, reason: &str) -> u64 {
    let o = s.run(&["status", "--json", "--pin-dir", s.pin_dir.to_str().expect("utf-8")]);
    assert!(o.status.success(), "status --json failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json prints JSON");
    v["gate_packets"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("status --json has no counter {reason}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Waits until the child's stderr says the gate is attached.
fn wait_attached(child: &mut Child) -> Vec<String> {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("gate attached");
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("ackgate run exited early with {status}: {seen:#?}");
                }
            }
            Err(_) => break,
        }
    }
    panic!("ackgate run never reported the gate attached: {seen:#?}");
}

#[test]
fn run_attaches_reports_and_detaches_on_sigterm() {
    let s = Scratch::new("life").with_netns();
    let key = s.write("agent.key", "00112233445566778899aabbccddeeff\n");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let config = s.config(
        "lo",
        "generic",
        &format!(
            "[[services]]\nname = \"web\"\nvip = \"127.0.0.1\"\nport = 8443\ntarget = \"127.0.0.2:80\"\n\
             default_response = \"reset\"\n[[static_agents]]\nid = 7\nkey_file = \"{}\"\n",
            key.display()
        ),
    );
    // Without the gate, a kernel client gets a working connection to the
    // port the service will protect.
    let ns = s.netns.clone().expect("namespace");
    let listener = Listener::start(&ns);
    let answer = probe(&ns).expect("before the gate, the probe must connect and get an answer");
    assert_eq!(answer, ANSWER, "before the gate, the listener must answer the probe");
    assert_eq!(listener.accepted(), 1, "before the gate, the listener must see the probe");

    let mut child = s
        .command(&["run", "--config", config.to_str().expect("utf-8")])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting ackgate run");
    wait_attached(&mut child);
    assert!(xdp_attached(&s, "lo"), "XDP must be attached to lo while ackgate runs");
    assert!(xdp_attached(&s, INTERNAL), "the internal program must be attached while ackgate runs");

    // The same client now: its SYN gets a cookie SYN/ACK from the gate, so
    // it connects, and its unstamped ACK a RST (default_response = reset);
    // the listener never sees a packet of it.
    assert_eq!((gate_count(&s, "syn_cookie"), gate_count(&s, "ack_no_option")), (0, 0), "nothing counted yet");
    let refused = probe(&ns).expect_err("an unstamped client must not get a working connection");
    assert!(
        matches!(refused.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        "the gate must complete the handshake and then reset the connection, not refuse it: {refused}"
    );
    assert_eq!(listener.accepted(), 1, "the listener behind the gate must not see the unstamped client");
    assert_eq!(gate_count(&s, "syn_cookie"), 1, "the gate must answer the probe's SYN with a cookie");
    assert!(gate_count(&s, "ack_no_option") >= 1, "the gate must count the probe's unstamped ACK");
    let status = s.run(&["status", "--pin-dir", s.pin_dir.to_str().expect("utf-8")]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status failed: {}", stderr(&status));
    assert!(table.contains("syn_cookie"), "status must count the cookie SYN/ACK:\n{table}");
    assert!(
        table.contains("gate: attached: program") && table.contains("ackgate_gate (generic XDP on lo)"),
        "status must say where and how the gate is attached:\n{table}"
    );
    assert!(table.contains("ack_no_option"), "status must count the refused ACK:\n{table}");

    // A second instance on the same config refuses before it touches the
    // running gate; on another pin directory, it names the interface and
    // the program already there.
    let second = s.run(&["run", "--config", config.to_str().expect("utf-8")]);
    assert_fails_with(&second, &["another `ackgate run` holds the pin directory"]);
    let elsewhere = s.write(
        "elsewhere.toml",
        &std::fs::read_to_string(&config).expect("config").replace(
            &format!("pin_dir = \"{}\"", s.pin_dir.display()),
            &format!("pin_dir = \"{}-other\"", s.pin_dir.display()),
        ),
    );
    let other = s.run(&["run", "--config", elsewhere.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(format!("{}-other", s.pin_dir.display()));
    assert_fails_with(&other, &["already runs an XDP program (program ", "ackgate_"]);
    assert!(xdp_attached(&s, "lo"), "the first gate must still be attached");
    let status = s.run(&["status", "--pin-dir", s.pin_dir.to_str().expect("utf-8")]);
    assert!(status.status.success(), "the first gate's status must still answer: {}", stderr(&status));

    // nsenter execs ackgate, so the child's pid is ackgate's.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("sending SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(st) = child.try_wait().expect("waiting for ackgate") {
            break st;
        }
        assert!(Instant::now() < deadline, "ackgate did not exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "ackgate must exit cleanly on SIGTERM, got {exit}");
    assert!(!xdp_attached(&s, "lo"), "XDP must be detached after SIGTERM");
    assert!(!xdp_attached(&s, INTERNAL), "the internal program must be detached after SIGTERM");
    assert!(Path::new(&s.pin_dir).join("ACKGATE_COUNTERS").exists(), "pinned maps must survive the exit");
    let after = s.run(&["status", "--pin-dir", s.pin_dir.to_str().expect("utf-8")]);
    let after = String::from_utf8_lossy(&after.stdout);
    assert!(after.contains("gate: not attached"), "after the stop, status must not pretend a gate runs:\n{after}");
    let answer = probe(&ns).expect("after the stop, the probe must connect again");
    assert_eq!((answer.as_slice(), listener.accepted()), (ANSWER, 2), "after the stop, the listener answers again");
}

/// `ackgate users list | head` and the like: when the reader goes away,
/// the command ends quietly (SIGPIPE, as Unix tools do), never with a
/// panic about printing.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let s = Scratch::new("pipe");
    let store = s.dir.join("users.db");
    let store = store.to_str().expect("UTF-8 path");
    let mut add = s.command(&["users", "add", "alice", "--password-stdin", "--store", store]);
    add.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut add = add.spawn().expect("users add");
    std::io::Write::write_all(&mut add.stdin.take().expect("stdin"), b"pw\n").expect("password");
    assert!(add.wait().expect("users add").success(), "users add --store");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = s.command(&["users", "list", "--store", store]).stdout(writer).output().expect("users list");
    assert!(!stderr(&out).contains("panicked"), "a closed pipe must not panic: {}", stderr(&out));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGPIPE),
        "the command must end by SIGPIPE, as Unix tools do: {:?}",
        out.status
    );
}
