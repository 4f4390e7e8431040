//! Helpers for end-to-end tests: start real `sheep` processes through `dog cluster up`, drive
//! them with `dog` and with NBD clients nobody here wrote, kill them for real.
//!
//! The binaries are found next to the test executable's `target/<profile>/` directory (build
//! them first: `cargo build --workspace --bins`), or in `SHEEPDOG_BIN_DIR`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Directory holding `sheep` and `dog`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHEEPDOG_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf();
    for bin in ["sheep", "dog"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins`",
            dir.join(bin).display()
        );
    }
    dir
}

/// Fails the test with an install hint when an external tool is absent.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{tool} is not installed: run `apt-get install {package}` (or `.ci/setup`)"
    );
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command, returning its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed, returning its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local cluster started with `dog cluster up`, stopped when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub peer_port: u16,
    pub nbd_port: u16,
    pub pids: Vec<u32>,
}

impl Cluster {
    /// Starts a one-node cluster on free ports.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (peer_port, nbd_port) = (free_port(), free_port());
        let mut cluster = Self {
            dir,
            peer_port,
            nbd_port,
            pids: Vec::new(),
        };
        cluster.up();
        cluster
    }

    /// `dog cluster up` on this cluster's directory (starts stopped nodes again).
    pub fn up(&mut self) {
        let out = ok(&mut self.dog_raw(&[
            "cluster",
            "up",
            "--nodes",
            "1",
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--base-port",
            &self.peer_port.to_string(),
            "--nbd-base-port",
            &self.nbd_port.to_string(),
        ]));
        self.pids = out
            .lines()
            .filter_map(|l| l.split("pid=").nth(1))
            .map(|p| p.trim().parse().unwrap())
            .collect();
        assert!(
            !self.pids.is_empty(),
            "dog cluster up printed no nodes: {out}"
        );
    }

    /// `dog` with `-p PORT` of this cluster appended.
    pub fn dog(&self, args: &[&str]) -> Command {
        let mut cmd = self.dog_raw(args);
        cmd.args(["-p", &self.peer_port.to_string()]);
        cmd
    }

    fn dog_raw(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("dog"));
        cmd.args(args);
        cmd
    }

    /// Creates a volume.
    pub fn create(&self, name: &str, size: &str) {
        ok(&mut self.dog(&["vdi", "create", name, size]));
    }

    pub fn nbd_uri(&self, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.nbd_port)
    }

    pub fn nbd_unix_uri(&self, volume: &str) -> String {
        let socket = self.dir.path().join("node0").join("nbd.sock");
        format!("nbd+unix:///{volume}?socket={}", socket.display())
    }

    /// Data directory of node 0.
    pub fn node_dir(&self) -> PathBuf {
        self.dir.path().join("node0")
    }

    /// kill -9 every node, as a crash would.
    pub fn kill9(&mut self) {
        for &pid in &self.pids {
            ok(Command::new("kill").args(["-9", &pid.to_string()]));
        }
        for &pid in &self.pids {
            wait_gone(pid);
        }
        self.pids.clear();
    }

    /// Used bytes and object count of node 0, from `dog node list --json`.
    pub fn node_usage(&self) -> (u64, u64) {
        let out = ok(&mut self.dog(&["node", "list", "--json"]));
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            nodes[0]["used"].as_u64().unwrap(),
            nodes[0]["objects"].as_u64().unwrap(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .dog_raw(&[
                "cluster",
                "down",
                "--dir",
                self.dir.path().to_str().unwrap(),
            ])
            .output();
    }
}

/// Waits until process `pid` has exited (its /proc entry is gone or a zombie).
pub fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("process {pid} did not exit");
}

/// Runs qemu-io on `uri` with the given commands; returns stdout. Panics when qemu-io fails
/// or reports a failed command (it prints pattern mismatches on stderr).
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    require("qemu-io", "qemu-utils");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    let out = run(&mut cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && !stderr.contains("failed") && !stdout.contains("failed"),
        "qemu-io {commands:?} on {uri} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout.into_owned()
}

/// Like [`qemu_io`], but expects a failure and returns stdout and stderr together.
pub fn qemu_io_fails(uri: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    let out = run(&mut cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("failed"),
        "qemu-io {commands:?} should have failed:\n{text}"
    );
    text
}

/// A raw NBD client for malformed-input tests.
pub mod raw_nbd;
