//! The real daemons for end-to-end tests: `ackgate` in the gateway
//! namespace and `ackgate-agent` in the client namespace, run from the
//! workspace's target directory, stopped (SIGTERM) and reaped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary of the running executable's profile:
/// `target/<profile>/NAME`, the running binary being there itself (bench,
/// demo) or in `target/<profile>/deps` (tests); or `$ACKGATE_BIN_DIR/NAME`
/// when that is set. The VM run sets it to a copy in the guest's memory:
/// the guest reads the host's files over 9p, and each start of a daemon or
/// admin command from there costs it some 1.5 s of page-ins under
/// emulation, against 0.3 s from memory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let profile_dir = match std::env::var_os("ACKGATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap_or_else(|e| panic!("locating the running executable: {e}"));
            let dir = exe.parent().unwrap_or_else(|| panic!("unexpected executable path {exe:?}")).to_path_buf();
            if dir.ends_with("deps") { dir.parent().map_or(dir.clone(), Path::to_path_buf) } else { dir }
        }
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo test --workspace` or `cargo build`)",
        path.display()
    );
    path
}

/// A command inside network namespace `ns`. `nsenter --net` rather than
/// `ip netns exec`, which also remounts /sys and would hide the pinned maps
/// under /sys/fs/bpf.
pub fn in_netns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}")).arg(program);
    c.stdin(Stdio::null());
    c
}

/// Prints how long a step of a test took: captured with the test's output,
/// so a slow or failing test shows where its time went (`--nocapture`
/// shows it always; in the emulated VMs, daemon start-up dominates).
fn took(what: &str, started: Instant) {
    eprintln!("[{:>9.3?}] {what}", started.elapsed());
}

/// Runs `cmd` with `input` on stdin; panics with its stderr if it fails.
pub fn run_ok(mut cmd: Command, input: Option<&str>, what: &str) -> Output {
    use std::io::Write as _;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if let Some(text) = input {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing stdin");
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{what}: {e}"));
    took(what, started);
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A long-running daemon, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stderr going to `log`.
    pub fn start(mut cmd: Command, name: &str, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        cmd.stderr(file).stdout(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            // Each gate program's verification time: the first suspect of
            // a start that does not come up in time.
            cmd.env("RUST_LOG", "info,ackgate_gateway::gate=debug");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, name: name.to_owned(), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the log contains `needle`; panics (with the log) after
    /// `within`, or if the daemon exits.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) {
        let started = Instant::now();
        let deadline = started + within;
        loop {
            if self.log().contains(needle) {
                took(&format!("{}: {needle:?} logged", self.name), started);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before logging {needle:?}:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {within:?}:\n{}\nwhere its threads wait in the kernel:\n{}\n{}",
                self.name,
                self.log(),
                kernel_stacks(self.pid()),
                memory_and_bpf()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Each thread of `pid`: its state, CPU ticks and kernel stack
/// (`/proc/PID/task/TID/{stat,stack}`, root only): whether a daemon that
/// stopped making progress is busy or waiting, and where.
fn kernel_stacks(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(process {pid} is gone)");
    };
    let mut out = String::new();
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        // stat: "tid (comm) state ... utime stime" (fields 3, 14 and 15).
        let stat = read("stat");
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or("?");
        out.push_str(&format!(
            "thread {} ({}) state {} utime {} stime {} ticks:\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            field(3),
            field(14),
            field(15),
            read("stack")
        ));
    }
    out
}

/// The machine's free memory and the BPF programs it holds: a start that
/// slows down as a run goes on points at something earlier tests left.
fn memory_and_bpf() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory: Vec<&str> = meminfo
        .lines()
        .filter(|l| ["MemFree", "MemAvailable", "Slab", "Percpu", "VmallocUsed"].iter().any(|k| l.starts_with(k)))
        .collect();
    let programs = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("name ")).count().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    format!("memory: {}\nBPF programs loaded: {programs}", memory.join(", "))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the child this harness started (SIGCONT first
        // in case a test stopped it).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                took(&format!("{} stopped", self.name), started);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        if let Some(v) = f() {
            took(what, started);
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
