//! The CSI driver under test: `sheepdog-csi all` on a unix socket of its own, against a
//! cluster's node (node 0 unless told), and the conformance suite csi-sanity to run against it.

use crate::{Cluster, bin_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Csi {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub node_id: String,
}

impl Csi {
    /// Starts the driver (every service) for `cluster`'s node 0, as CSI node `node_id`; waits
    /// for its socket.
    pub fn start(cluster: &Cluster, node_id: &str) -> Self {
        Self::start_on(cluster, 0, node_id)
    }

    /// Starts the driver against the cluster's node `node` (its local sheep), as `node_id`.
    pub fn start_on(cluster: &Cluster, node: u16, node_id: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let log = std::fs::File::create(dir.path().join("csi.log")).unwrap();
        let binary = bin_dir().join("sheepdog-csi");
        assert!(
            binary.exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins`",
            binary.display()
        );
        let child = Command::new(binary)
            .arg("all")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--node-id", node_id])
            .args([
                "--cluster",
                &format!("127.0.0.1:{}", cluster.peer_port + node),
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "sheepdog-csi did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            dir,
            socket,
            node_id: node_id.to_owned(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// What the driver logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("csi.log")).unwrap_or_default()
    }
}

impl Drop for Csi {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        detach_mounts_under(self.dir.path());
    }
}

/// The csi-sanity binary: `CSI_SANITY`, else the one `.ci/setup` installed with Go
/// (`target/tools`), else the project's `../shared/tools/csi-sanity`.
pub fn csi_sanity() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let installed = root.join("target/tools/csi-sanity");
    let path = std::env::var_os("CSI_SANITY")
        .map(PathBuf::from)
        .or_else(|| installed.exists().then_some(installed))
        .unwrap_or_else(|| root.join("../shared/tools/csi-sanity"));
    assert!(
        path.exists(),
        "csi-sanity is missing at {}: run `make setup` (with Go, it installs csi-sanity v5.4.0 into target/tools) or set CSI_SANITY",
        path.display()
    );
    path
}

/// Lazily unmounts everything mounted under `dir` (a test that failed half-way).
pub fn detach_mounts_under(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounted: Vec<&str> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mountpoint in mounted {
        let _ = Command::new("umount").args(["-l", mountpoint]).status();
    }
}
