//! A cluster of real `sheep` processes on a real network: each node runs in a network
//! namespace of its own, joined by a veth pair to a bridge in the root namespace, where the
//! coordinator and the clients run. Cutting a node's veth link is a real network partition.
//!
//! Everything the lab creates (namespaces, links, processes) it removes or stops when dropped,
//! by name or pid; nothing else is touched.

use crate::{PowerCutFs, bin_dir, ok, require, run, wait_gone};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Port of every node's gRPC service (each node has an address of its own).
pub const PEER_PORT: u16 = 7000;
/// Port of every node's NBD server.
pub const NBD_PORT: u16 = 10809;
const COORDINATOR_PORT: u16 = 6999;

/// One storage node of the lab.
pub struct LabNode {
    pub id: u16,
    netns: String,
    /// The veth end in the root namespace: setting it down partitions the node.
    link: String,
    /// The veth end inside the node's namespace.
    inner: String,
    pub ip: String,
    pub dir: PathBuf,
    child: Option<Child>,
    pub partitioned: bool,
    /// The lazyfs under `dir`, when the lab cuts power.
    power: Option<PowerCutFs>,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    /// Keep the directory (logs, data) after the lab stops, to look at a failure.
    pub keep: bool,
    bridge: String,
    subnet: String,
    coordinator: Option<Child>,
    pub nodes: Vec<LabNode>,
    failure_timeout: String,
    /// Extra `sheep` flags for every node.
    pub sheep_args: Vec<String>,
    /// Whether every node's data directory is on a lazyfs of its own (see [`Lab::power_cut`]).
    on_lazyfs: bool,
}

impl Lab {
    /// A bridge, the coordinator, and `nodes` started nodes.
    pub fn start(nodes: u16, failure_timeout: &str, sheep_args: &[&str]) -> Self {
        Self::start_on(nodes, failure_timeout, sheep_args, false)
    }

    /// Like [`Lab::start`]; with `on_lazyfs`, every node keeps its data on a lazyfs of its
    /// own (strict POSIX model), so that [`Lab::power_cut`] loses what it did not fsync.
    pub fn start_on(
        nodes: u16,
        failure_timeout: &str,
        sheep_args: &[&str],
        on_lazyfs: bool,
    ) -> Self {
        require("ip", "iproute2");
        let tag = std::process::id() % 100_000;
        let subnet = format!("10.211.{}", tag % 250);
        let bridge = format!("sdlab{tag}");
        ok(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        let mut lab = Self {
            dir: tempfile::tempdir().unwrap(),
            keep: false,
            bridge,
            subnet,
            coordinator: None,
            nodes: Vec::new(),
            failure_timeout: failure_timeout.to_owned(),
            sheep_args: sheep_args.iter().map(|s| s.to_string()).collect(),
            on_lazyfs,
        };
        let host = format!("{}.1/24", lab.subnet);
        ok(Command::new("ip").args(["addr", "add", &host, "dev", &lab.bridge]));
        ok(Command::new("ip").args(["link", "set", &lab.bridge, "up"]));
        lab.start_coordinator();
        for _ in 0..nodes {
            lab.add_node();
        }
        lab
    }

    fn start_coordinator(&mut self) {
        let dir = self.dir.path().join("coordinator");
        std::fs::create_dir_all(&dir).unwrap();
        let listen = format!("{}.1:{COORDINATOR_PORT}", self.subnet);
        let mut cmd = Command::new(bin_dir().join("sheep"));
        cmd.args([
            "coordinator",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
        ])
        .args(["--failure-timeout", &self.failure_timeout]);
        self.coordinator = Some(spawn(&mut cmd, &dir.join("coordinator.log")));
    }

    /// Creates the next node's namespace and starts it. Returns its index.
    pub fn add_node(&mut self) -> u16 {
        let id = self.nodes.len() as u16;
        let tag = std::process::id() % 100_000;
        let netns = format!("sdlab{tag}n{id}");
        let (link, inner) = (format!("sdl{tag}a{id}"), format!("sdl{tag}b{id}"));
        let ip = format!("{}.{}", self.subnet, 10 + id);
        ok(Command::new("ip").args(["netns", "add", &netns]));
        ok(Command::new("ip").args(["link", "add", &link, "type", "veth", "peer", "name", &inner]));
        ok(Command::new("ip").args(["link", "set", &inner, "netns", &netns]));
        ok(Command::new("ip").args(["link", "set", &link, "master", &self.bridge]));
        ok(Command::new("ip").args(["link", "set", &link, "up"]));
        let exec = |args: &[&str]| {
            ok(Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(args));
        };
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
        exec(&["ip", "link", "set", &inner, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        let power = self.on_lazyfs.then(PowerCutFs::start);
        let dir = match &power {
            Some(fs) => fs.mount().join("data"),
            None => self.dir.path().join(format!("node{id}")),
        };
        self.nodes.push(LabNode {
            id,
            netns,
            link,
            inner: inner.clone(),
            ip,
            dir,
            child: None,
            partitioned: false,
            power,
        });
        self.start_node(id);
        id
    }

    /// Starts node `id` (again) on its data directory.
    pub fn start_node(&mut self, id: u16) {
        let coordinator = format!("{}.1:{COORDINATOR_PORT}", self.subnet);
        let node = &self.nodes[id as usize];
        assert!(node.child.is_none(), "node {id} is running already");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(bin_dir().join("sheep"))
            .args(["--dir", node.dir.to_str().unwrap(), "--id", &id.to_string()])
            .args(["--listen", &format!("{}:{PEER_PORT}", node.ip)])
            .args(["--nbd", &format!("{}:{NBD_PORT}", node.ip)])
            .args(["--coordinator", &coordinator])
            .args(&self.sheep_args);
        let log = self.logs_dir(id).join(format!("sheep.{}.log", timestamp()));
        let child = spawn(&mut cmd, &log);
        self.nodes[id as usize].child = Some(child);
    }

    /// Where node `id`'s logs go: never on its lazyfs, so a power cut keeps them.
    fn logs_dir(&self, id: u16) -> PathBuf {
        let dir = self.dir.path().join(format!("logs{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Cuts node `id`'s power: it is killed, and every write it had not fsynced is lost.
    /// Returns lazyfs's report. Start it again with [`Lab::start_node`].
    pub fn power_cut(&mut self, id: u16) -> String {
        self.kill9(id);
        let fs = self.nodes[id as usize]
            .power
            .as_mut()
            .expect("the lab runs on lazyfs (Lab::start_on)");
        fs.cut()
    }

    /// Makes the next `count` fsyncs on node `id`'s lazyfs fail, as a failing disk's do.
    pub fn fail_fsyncs(&mut self, id: u16, count: u64) {
        let fs = self.nodes[id as usize].power.as_mut();
        fs.expect("the lab runs on lazyfs (Lab::start_on)")
            .fail_fsyncs(count);
    }

    /// kill -9 node `id`, as a crash would.
    pub fn kill9(&mut self, id: u16) {
        if let Some(mut child) = self.nodes[id as usize].child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            wait_gone(pid);
        }
    }

    pub fn running(&self, id: u16) -> bool {
        self.nodes[id as usize].child.is_some()
    }

    /// Cuts node `id` off the network (`up: false`) or joins it again.
    pub fn set_link(&mut self, id: u16, up: bool) {
        let node = &mut self.nodes[id as usize];
        let state = if up { "up" } else { "down" };
        ok(Command::new("ip").args(["link", "set", &node.link, state]));
        node.partitioned = !up;
    }

    /// Cuts node `id` off silently (`cut: true`) or joins it again: every IP packet to or from
    /// it is dropped while links stay up and ARP still answers, so no side gets an error or an
    /// ICMP message, as behind a failed switch or router. (With [`Lab::set_link`] the kernel
    /// reports the lost neighbour to the senders, and TCP retransmits at once after the heal.)
    pub fn set_silent_cut(&mut self, id: u16, cut: bool) {
        require("nft", "nftables");
        let node = &mut self.nodes[id as usize];
        let table = format!("{}cut", node.netns);
        let rules = |device: &str| {
            format!(
                "table netdev {table} {{ chain in {{ type filter hook ingress device \"{device}\" \
                 priority 0; ether type {{ ip, ip6 }} drop; }}; }}"
            )
        };
        let inner = ["ip", "netns", "exec", &node.netns, "nft"];
        if cut {
            // Marked first, so that the lab's drop removes the table even if the next fails.
            node.partitioned = true;
            ok(Command::new("nft").arg(rules(&node.link)));
            ok(Command::new(inner[0])
                .args(&inner[1..])
                .arg(rules(&node.inner)));
        } else {
            ok(Command::new("nft").args(["delete", "table", "netdev", &table]));
            ok(Command::new(inner[0])
                .args(&inner[1..])
                .args(["delete", "table", "netdev", &table]));
        }
        node.partitioned = cut;
    }

    /// `dog ARGS -a NODE_IP -p 7000` through node `via`.
    pub fn dog(&self, via: u16, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("dog"));
        cmd.args(args)
            .args(["-a", &self.nodes[via as usize].ip])
            .args(["-p", &PEER_PORT.to_string()]);
        cmd
    }

    /// NBD URI of `volume` on node `id`.
    pub fn nbd_uri(&self, id: u16, volume: &str) -> String {
        format!("nbd://{}:{NBD_PORT}/{volume}", self.nodes[id as usize].ip)
    }

    /// `dog cluster info --json` through node `via`, if it answers.
    pub fn info(&self, via: u16) -> Option<serde_json::Value> {
        let out = run(&mut self.dog(via, &["cluster", "info", "--json"]));
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The logs of every node, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out += &format!("--- node {} ({}) ---\n", node.id, node.dir.display());
            out += &tail_logs(&self.dir.path().join(format!("logs{}", node.id)));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &node.netns])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &node.link])
                .status();
            if node.partitioned {
                let table = format!("{}cut", node.netns);
                let _ = Command::new("nft")
                    .args(["delete", "table", "netdev", &table])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        if let Some(mut child) = self.coordinator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        if self.keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("lab directory kept: {}", dir.keep().display());
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn timestamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The last lines of every `sheep.*.log` in `dir` with a warning or an error.
fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        out += &format!("{}: {} warnings\n", log.display(), lines.len());
        for line in lines.iter().rev().take(8).rev() {
            out += line;
            out.push('\n');
        }
    }
    out
}
