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

/// `count` consecutive free ports, the first one preceded by another free port. They lie
/// below Linux's ephemeral range (32768 and up), which the tests' own client connections
/// draw their source ports from: a node binding its port later cannot find it taken by one.
pub fn free_ports(count: u16) -> u16 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let seed = u64::from(std::process::id()) ^ clock.as_nanos() as u64;
    for attempt in 0..200u64 {
        let mixed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(attempt * 7919);
        let base = 20_000 + (mixed % u64::from(12_700 - count)) as u16;
        if (base - 1..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {count} free ports found");
}

/// A local cluster started with `dog cluster up`, stopped when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// gRPC port of node 0; node i uses peer_port + i, the coordinator peer_port - 1.
    pub peer_port: u16,
    /// NBD port of node 0; node i uses nbd_port + i.
    pub nbd_port: u16,
    pub nodes: u16,
    pub failure_timeout: String,
    pub pids: Vec<u32>,
    /// Nodes started by hand with `add_node`, stopped when the cluster is dropped.
    pub extra: Vec<std::process::Child>,
    /// Environment of the nodes `dog cluster up` starts, e.g. `SHEEP_RECOVERY_BANDWIDTH`.
    pub sheep_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a one-node cluster on free ports.
    pub fn start() -> Self {
        Self::start_with(1, "10s")
    }

    /// Starts a cluster of `nodes` nodes that removes silent nodes after `failure_timeout`.
    pub fn start_with(nodes: u16, failure_timeout: &str) -> Self {
        Self::start_with_env(nodes, failure_timeout, &[])
    }

    /// Like [`Cluster::start_with`], every node started with `env` set (sheep reads each
    /// flag from a `SHEEP_*` variable, e.g. `("SHEEP_RECOVERY_BANDWIDTH", "1M")`).
    pub fn start_with_env(nodes: u16, failure_timeout: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // One block for the peer ports (the coordinator just below) and the NBD ports: two
        // blocks picked separately can overlap.
        let peer_port = free_ports(2 * nodes);
        let nbd_port = peer_port + nodes;
        let failure_timeout = failure_timeout.to_owned();
        let mut cluster = Self {
            dir,
            peer_port,
            nbd_port,
            nodes,
            failure_timeout,
            pids: Vec::new(),
            extra: Vec::new(),
            sheep_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        cluster.up();
        cluster
    }

    /// `dog cluster up` on this cluster's directory (starts stopped nodes again).
    pub fn up(&mut self) {
        let (nodes, dir) = (
            self.nodes.to_string(),
            self.dir.path().to_str().unwrap().to_owned(),
        );
        let (peer, nbd) = (self.peer_port.to_string(), self.nbd_port.to_string());
        let mut up = self.dog_raw(&[
            "cluster",
            "up",
            "--nodes",
            &nodes,
            "--dir",
            &dir,
            "--base-port",
            &peer,
            "--nbd-base-port",
            &nbd,
            "--failure-timeout",
            &self.failure_timeout,
        ]);
        // The nodes inherit dog's environment.
        up.envs(self.sheep_env.iter().map(|(k, v)| (k, v)));
        let out = ok(&mut up);
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

    /// `dog` with `-p PORT` of node 0 appended.
    pub fn dog(&self, args: &[&str]) -> Command {
        self.dog_on(0, args)
    }

    /// `dog` with `-p PORT` of node `node` appended.
    pub fn dog_on(&self, node: u16, args: &[&str]) -> Command {
        let mut cmd = self.dog_raw(args);
        cmd.args(["-p", &(self.peer_port + node).to_string()]);
        cmd
    }

    /// NBD URI of `volume` on node `node`.
    pub fn nbd_uri_on(&self, node: u16, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.nbd_port + node)
    }

    /// Starts one more `sheep` by hand, pointed only at the coordinator: it joins with no
    /// other configuration. Returns its (gRPC, NBD) ports.
    pub fn add_node(&mut self, id: &str) -> (u16, u16) {
        self.add_node_with(id, &[])
    }

    /// Like [`Cluster::add_node`], with extra `sheep` flags such as
    /// `["--recovery-bandwidth", "256K"]`.
    pub fn add_node_with(&mut self, id: &str, extra_args: &[&str]) -> (u16, u16) {
        let peer = free_ports(2);
        let nbd = peer + 1;
        let dir = self.dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("sheep.log")).unwrap();
        let child = Command::new(bin_dir().join("sheep"))
            .args(["--dir", dir.to_str().unwrap(), "--id", id])
            .args([
                "--listen",
                &format!("127.0.0.1:{peer}"),
                "--nbd",
                &format!("127.0.0.1:{nbd}"),
            ])
            .args([
                "--coordinator",
                &format!("127.0.0.1:{}", self.peer_port - 1),
            ])
            .args(extra_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.extra.push(child);
        (peer, nbd)
    }

    /// kill -9 the `index`th node started with [`Cluster::add_node`] (0 for the first).
    pub fn kill9_added(&mut self, index: usize) {
        let child = &mut self.extra[index];
        ok(Command::new("kill").args(["-9", &child.id().to_string()]));
        child.wait().unwrap();
    }

    /// The whole content of `volume`, read with `dog vdi read` through node `node`. Panics
    /// when the read fails.
    pub fn volume_bytes(&self, node: u16, volume: &str) -> Vec<u8> {
        let out = run(&mut self.dog_on(node, &["vdi", "read", volume]));
        assert!(
            out.status.success(),
            "dog vdi read {volume} through node {node} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// MD5 (hex) of the whole content of `volume`, read with `dog vdi read` through node
    /// `node`. Panics when the read fails.
    pub fn volume_md5(&self, node: u16, volume: &str) -> String {
        md5(&self.volume_bytes(node, volume))
    }

    /// Pid of node `node`, from its pid file.
    pub fn pid(&self, node: u16) -> u32 {
        let file = self
            .dir
            .path()
            .join(format!("node{node}"))
            .join("sheep.pid");
        std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// kill -9 one node, as a crash would.
    pub fn kill9_node(&mut self, node: u16) {
        let pid = self.pid(node);
        ok(Command::new("kill").args(["-9", &pid.to_string()]));
        wait_gone(pid);
        self.pids.retain(|&p| p != pid);
    }

    /// The cluster as node `node` describes it (`dog cluster info --json`).
    pub fn info(&self, node: u16) -> serde_json::Value {
        serde_json::from_str(&ok(&mut self.dog_on(node, &["cluster", "info", "--json"]))).unwrap()
    }

    /// Whether node `via` sees `n` members, every one recovered to the current epoch, and the
    /// live nodes together hold exactly `copies` copies of `objects` objects.
    pub fn redundant(&self, via: u16, n: usize, objects: u64, copies: u64) -> bool {
        let state = || -> Option<bool> {
            let epoch = self.info(via)["epoch"].as_u64()?;
            let recovery: serde_json::Value =
                serde_json::from_str(&ok(&mut self.dog_on(via, &["node", "recovery", "--json"])))
                    .ok()?;
            let rows = recovery.as_array()?;
            let all_recovered = rows.len() == n
                && rows.iter().all(|r| {
                    r["reachable"] == true
                        && r["epoch"].as_u64() == Some(epoch)
                        && r["recoveredEpoch"].as_u64() == Some(epoch)
                });
            let per_node = self.objects_per_node(via)?;
            let total: u64 = per_node.iter().map(|(_, o)| o).sum();
            Some(all_recovered && per_node.len() == n && total == objects * copies)
        };
        state().unwrap_or(false)
    }

    /// Objects held by each node of the map, as asked through node `via`; `None` while any
    /// node cannot say.
    pub fn objects_per_node(&self, via: u16) -> Option<Vec<(String, u64)>> {
        let info = self.info(via);
        info["nodes"]
            .as_array()?
            .iter()
            .map(|n| Some((n["id"].as_str()?.to_owned(), n["objects"].as_u64()?)))
            .collect()
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
        for child in &mut self.extra {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self
            .dog_raw(&[
                "cluster",
                "down",
                "--dir",
                self.dir.path().to_str().unwrap(),
            ])
            .output();
        // Volume files a killed node left mounted.
        csi::detach_mounts_under(self.dir.path());
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

/// `qemu-io -f raw -c CMD... URI`.
fn qemu_io_command(uri: &str, commands: &[&str]) -> Command {
    require("qemu-io", "qemu-utils");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    cmd
}

/// Runs qemu-io on `uri` with the given commands; returns stdout. Panics when qemu-io fails
/// or reports a failed command (it prints pattern mismatches on stderr).
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let out = run(&mut qemu_io_command(uri, commands));
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
    let out = run(&mut qemu_io_command(uri, commands));
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

/// MD5 (hex) of `data`, computed by `md5sum`.
pub fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils)");
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(data).unwrap());
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "md5sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Long-lived NBD connections held open by `e2e/checker/two_gateways.py` (libnbd), driven
/// one command line at a time: see the script for the commands.
pub struct NbdSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl NbdSession {
    pub fn start() -> Self {
        require("nbdsh", "python3-libnbd");
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("checker")
            .join("two_gateways.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns its answer line.
    pub fn send(&mut self, command: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "two_gateways.py exited while running {command:?}"
        );
        line.trim().to_owned()
    }

    /// Sends a command that must answer "ok..."; panics otherwise.
    pub fn ok(&mut self, command: &str) -> String {
        let answer = self.send(command);
        assert!(answer.starts_with("ok"), "{command:?} answered {answer:?}");
        answer
    }
}

impl Drop for NbdSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw NBD client for malformed-input tests.
pub mod csi;
pub mod raw_nbd;

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The versioned-block workload checker (`e2e/checker/workload.py`, libnbd).
pub fn workload(args: &[&str]) -> Command {
    require("nbdsh", "python3-libnbd");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("checker")
        .join("workload.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).args(args);
    cmd
}

/// Runs the checker to completion and parses its JSON summary.
pub fn workload_result(cmd: &mut Command) -> serde_json::Value {
    let out = ok(cmd);
    serde_json::from_str(out.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("checker printed {out:?}: {e}"))
}

/// Starts the checker writing to `uri` for `seconds` over `blocks` blocks, in the background.
pub fn start_workload(uri: &str, state: &Path, seconds: u32, blocks: u32) -> std::process::Child {
    let (seconds, blocks) = (seconds.to_string(), blocks.to_string());
    workload(&["write", uri, state.to_str().unwrap(), &seconds, &blocks])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a checker started with [`start_workload`] and parses its JSON summary.
pub fn finish_workload(writer: std::process::Child) -> serde_json::Value {
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "checker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

/// A cluster whose nodes live in network namespaces of their own, for real partitions.
pub mod lab;

/// A `lazyfs` mount (`e2e/lazyfs`): a FUSE file system over [`PowerCutFs::backing`] that keeps
/// every write not yet fsynced in memory, so that [`PowerCutFs::cut`] drops exactly the
/// writes that were not made durable. Unmounted when dropped (SIGTERM to the `lazyfs` this
/// started, by pid).
pub struct PowerCutFs {
    dir: tempfile::TempDir,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    cuts: u64,
}

impl PowerCutFs {
    /// Mounts a fresh `lazyfs` with the strict POSIX model of namespace changes: a new,
    /// removed or renamed entry survives a cut only once its directory was fsynced.
    pub fn start() -> Self {
        Self::start_with("strict")
    }

    /// Mounts a fresh `lazyfs` with `--metadata MODEL`: `strict`, `journal` (any fsync makes
    /// every earlier namespace change durable, as ext4 and XFS do) or `eager`.
    pub fn start_with(metadata: &str) -> Self {
        let bin = bin_dir().join("lazyfs");
        assert!(
            bin.exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins`",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let (backing, mount) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mount).unwrap();
        let log = std::fs::File::create(dir.path().join("lazyfs.log")).unwrap();
        let mut child = Command::new(bin)
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(&mount)
            .arg("--control")
            .arg(dir.path().join("control"))
            .args(["--metadata", metadata])
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fs = Self {
            dir,
            child,
            lines,
            cuts: 0,
        };
        fs.wait_line("ready");
        fs
    }

    /// Where the file system is mounted.
    pub fn mount(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The backing directory: what is durable.
    pub fn backing(&self) -> PathBuf {
        self.dir.path().join("backing")
    }

    /// A directory outside the mount for logs and scratch files.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Cuts the power: every write not fsynced is dropped, every namespace change not durable
    /// undone, and handles opened before fail with EIO. Returns `lazyfs`'s report, e.g.
    /// `cut 1 files=2 bytes=8192 undone=1 handles=0 kept=0`.
    pub fn cut(&mut self) -> String {
        ok(Command::new("kill").args(["-USR1", &self.child.id().to_string()]));
        self.cuts += 1;
        self.wait_line(&format!("cut {} ", self.cuts))
    }

    /// A torn power cut: first, about half of the unsynced 4 KiB pages of each file, chosen by
    /// `seed`, reach the backing file (as the kernel's write-back could have done), then
    /// [`PowerCutFs::cut`]. Returns `lazyfs`'s report (`kept=` counts the pages written back).
    pub fn cut_torn(&mut self, seed: u64) -> String {
        use std::io::Write;
        let mut control = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("control"))
            .unwrap();
        writeln!(control, "cut torn {seed}").unwrap();
        self.cuts += 1;
        self.wait_line(&format!("cut {} ", self.cuts))
    }

    /// Makes the next `count` fsyncs fail with EIO, each dropping its file's unsynced writes,
    /// as a failing disk does on Linux.
    pub fn fail_fsyncs(&mut self, count: u64) {
        use std::io::Write;
        let mut control = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("control"))
            .unwrap();
        writeln!(control, "fail-fsync {count}").unwrap();
        self.wait_line(&format!("fail-fsync {count}"));
    }

    /// `lazyfs`'s log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lazyfs.log")).unwrap_or_default()
    }

    /// Waits for a line of `lazyfs`'s stdout starting with `prefix`.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "lazyfs printed no {prefix:?} line ({e}); exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed lazyfs leaves a dead mount: detach it so that the directory can go.
        let _ = Command::new("umount").arg("-l").arg(self.mount()).output();
    }
}
