//! `cargo xtask test`: every check, tallied into one `N passed, N failed`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{setup, vm};

/// Passed/failed counts across all checks and test binaries.
#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub failures: Vec<String>,
}

impl Tally {
    /// Prints the failures and the counts; an error if anything failed.
    pub fn finish(&self) -> Result<()> {
        println!();
        for f in &self.failures {
            println!("FAILED: {f}");
        }
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed > 0 {
            bail!("{} check(s) failed", self.failed);
        }
        Ok(())
    }

    fn check(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_owned());
        }
    }

    /// Adds the `test result:` lines of libtest output; a run that failed
    /// without reporting any failed test (a build error, a crash) counts as
    /// one failure under `name`.
    pub fn add_libtest(&mut self, name: &str, output: &str, success: bool) {
        let mut failed_here = 0;
        for line in output.lines() {
            let Some(rest) = line.trim().strip_prefix("test result: ") else { continue };
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
                let n: u64 = n.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
                match kind {
                    "passed" => self.passed += n,
                    "failed" => failed_here += n,
                    _ => {}
                }
            }
        }
        for line in output.lines() {
            if let Some(t) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
                self.failures.push(format!("{name}: {t}"));
            }
        }
        if !success && failed_here == 0 {
            failed_here = 1;
            self.failures.push(format!("{name}: did not complete"));
        }
        self.failed += failed_here;
    }
}

/// Runs `cmd`, echoing its output as it comes, and returns all of it.
pub fn run_tee(cmd: &mut Command) -> Result<(bool, String)> {
    run_tee_prefixed(cmd, "")
}

/// [`run_tee`] with every echoed line behind `prefix` (the output of runs
/// side by side stays readable); the returned output has no prefix.
pub fn run_tee_prefixed(cmd: &mut Command, prefix: &str) -> Result<(bool, String)> {
    println!("\n{prefix}==> {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().context("stderr pipe")?;
    let err_prefix = prefix.to_owned();
    let err_thread = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{err_prefix}{line}");
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().context("stdout pipe")?).lines().map_while(Result::ok) {
        println!("{prefix}{line}");
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait()?;
    out.push_str(&err_thread.join().unwrap_or_default());
    Ok((status.success(), out))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Everything, with the VM suite on each of `vm_kernels` (none: no VM).
pub fn run(vm_kernels: &[&'static setup::VmKernel]) -> Result<()> {
    setup::build_tools()?;
    setup::test_tools()?;
    if !vm_kernels.is_empty() {
        setup::vm_tools(vm_kernels)?;
    }
    let mut tally = Tally::default();

    let (ok, _) = run_tee(cargo().args(["fmt", "--all", "--", "--check"]))?;
    tally.check("cargo fmt --check", ok);
    let (ok, _) = run_tee(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    tally.check("clippy (host)", ok);
    let (ok, _) = run_tee(&mut ebpf_clippy())?;
    tally.check("clippy (eBPF, bpfel-unknown-none)", ok);

    // Root-only tests (BPF, namespaces) share the one machine; two at a time
    // keeps the namespace tests' timing honest on 2 cores.
    let (ok, out) = run_tee(cargo().args(["test", "--workspace", "--", "--test-threads=2"]))?;
    tally.add_libtest("cargo test", &out, ok);

    if !vm_kernels.is_empty() {
        let opts = vm::SuiteOptions { targets: Vec::new(), test_args: &[] };
        vm::run_suite(&mut tally, vm_kernels, &opts)?;
    }
    tally.finish()
}

/// Clippy over the kernel crates for their real target (the host build only
/// sees a stub `main`).
fn ebpf_clippy() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", crate::EBPF_TOOLCHAIN, "cargo", "clippy", "--release"])
        .args(["-p", "ackgate-gateway-ebpf", "-p", "ackgate-agent-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// `cargo run -p ackgate-tests --bin NAME`.
pub fn cargo_run_bin(name: &str, extra: &[&str]) -> Result<()> {
    setup::test_tools()?;
    let status = cargo()
        .args(["run", "-q", "-p", "ackgate-tests", "--bin", name])
        .args(extra)
        .status()
        .with_context(|| format!("running {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// `cargo build --release -p PACKAGE` (binaries the benchmarks start).
pub fn cargo_build_release(package: &str) -> Result<()> {
    build(package, &["--release"])
}

/// `cargo build --release -p PACKAGE --bin NAME`; returns the binary's path.
pub fn cargo_build_release_bin(package: &str, name: &str) -> Result<std::path::PathBuf> {
    build(package, &["--release", "--bin", name])?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"),
        std::path::PathBuf::from,
    );
    Ok(target.join("release").join(name))
}

/// `cargo build --workspace`: the daemons the end-to-end tests start.
pub fn cargo_build_workspace() -> Result<()> {
    let status = cargo().args(["build", "-q", "--workspace"]).status().context("building the workspace")?;
    if !status.success() {
        bail!("building the workspace failed ({status})");
    }
    Ok(())
}

/// `cargo build -p PACKAGE` (binaries the demo starts).
pub fn cargo_build(package: &str) -> Result<()> {
    build(package, &[])
}

fn build(package: &str, extra: &[&str]) -> Result<()> {
    let status = cargo()
        .args(["build", "-q", "-p", package])
        .args(extra)
        .status()
        .with_context(|| format!("building {package}"))?;
    if !status.success() {
        bail!("building {package} failed ({status})");
    }
    Ok(())
}

/// Builds the test binaries of `ackgate-tests` and returns `(name, path)`
/// for the integration targets named in `targets`.
pub fn test_binaries(targets: &[&str]) -> Result<Vec<(String, String)>> {
    let out = cargo()
        .args(["test", "-p", "ackgate-tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building test binaries")?;
    if !out.status.success() {
        bail!("building test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else { continue };
        if targets.contains(&name) {
            found.push((name.to_owned(), exe.to_owned()));
        }
    }
    if found.len() != targets.len() {
        bail!("expected test binaries {targets:?}, found {found:?}");
    }
    Ok(found)
}
