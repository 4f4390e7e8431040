//! A network partition made with `ip netns` and a veth pair isolates one node: it acknowledges
//! no write on its stale epoch (no split brain), the rest of the cluster goes on, and after the
//! heal the node rejoins and serves the data written while it was away.

use sheepdog_e2e::{bin_dir, ok, qemu_io, qemu_io_fails, require, run, wait_for};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const HOST: &str = "10.201.0.1";
const ISOLATED: &str = "10.201.0.2";

/// A namespace joined to the root namespace by a veth pair; removed (with the pair) on drop.
struct Netns {
    name: String,
    root_side: String,
}

impl Netns {
    fn new() -> Self {
        require("ip", "iproute2");
        let id = std::process::id() % 100_000;
        let (name, root_side, inner) = (
            format!("sdpart{id}"),
            format!("sdp{id}a"),
            format!("sdp{id}b"),
        );
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name, root_side };
        ok(Command::new("ip").args([
            "link",
            "add",
            &ns.root_side,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]));
        ok(Command::new("ip").args(["link", "set", &inner, "netns", &ns.name]));
        ok(Command::new("ip").args(["addr", "add", &format!("{HOST}/24"), "dev", &ns.root_side]));
        ok(Command::new("ip").args(["link", "set", &ns.root_side, "up"]));
        ok(&mut ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ISOLATED}/24"),
            "dev",
            &inner,
        ]));
        ok(&mut ns.exec(&["ip", "link", "set", &inner, "up"]));
        ok(&mut ns.exec(&["ip", "link", "set", "lo", "up"]));
        ns
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    fn link(&self, up: bool) {
        ok(Command::new("ip").args([
            "link",
            "set",
            &self.root_side,
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_side])
            .status();
    }
}

/// Processes this test started, killed by pid on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn sheep_args(dir: &Path, id: u16, host: &str) -> Vec<String> {
    let node = dir.join(format!("node{id}"));
    std::fs::create_dir_all(&node).unwrap();
    [
        "--dir",
        node.to_str().unwrap(),
        "--id",
        &id.to_string(),
        "--listen",
        &format!("{host}:{}", 7101 + id),
        "--nbd",
        &format!("{host}:{}", 10901 + id),
        "--coordinator",
        &format!("{HOST}:7100"),
        "--copies",
        "3",
        "--io-timeout",
        "8s",
    ]
    .map(String::from)
    .to_vec()
}

fn members(via: u16) -> Option<usize> {
    let out = run(Command::new(bin_dir().join("dog")).args([
        "cluster",
        "info",
        "--json",
        "-a",
        HOST,
        "-p",
        &(7101 + via).to_string(),
    ]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(info["nodes"].as_array()?.len())
}

#[test]
fn an_isolated_node_acknowledges_nothing_and_rejoins_cleanly() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let sheep = bin_dir().join("sheep");
    let mut procs = Procs::default();
    let coordinator_dir = dir.path().join("coordinator");
    let coordinator = Command::new(&sheep)
        .args([
            "coordinator",
            "--dir",
            coordinator_dir.to_str().unwrap(),
            "--listen",
            &format!("{HOST}:7100"),
            "--failure-timeout",
            "3s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(coordinator);
    for id in 0..3 {
        procs.0.push(spawn(
            Command::new(&sheep).args(sheep_args(dir.path(), id, HOST)),
            &dir.path().join(format!("sheep{id}.log")),
        ));
    }
    let mut isolated = ns.exec(&[sheep.to_str().unwrap()]);
    isolated.args(sheep_args(dir.path(), 3, ISOLATED));
    procs
        .0
        .push(spawn(&mut isolated, &dir.path().join("sheep3.log")));
    wait_for("4 members", Duration::from_secs(30), || {
        (members(0) == Some(4)).then_some(())
    });

    ok(Command::new(bin_dir().join("dog"))
        .args(["vdi", "create", "split", "16M", "-a", HOST, "-p", "7101"]));
    let via_host = format!("nbd://{HOST}:10901/split");
    let via_isolated = format!(
        "nbd+unix:///split?socket={}",
        dir.path().join("node3/nbd.sock").display()
    );
    qemu_io(&via_host, &["write -P 0xaa 0 16M", "flush"]);
    // Read-only: a writer's attachment released just before the cut could not reach the
    // coordinator, and would keep the volume attached for its time limit.
    let read_isolated = format!(
        "nbd+unix:///split/readonly?socket={}",
        dir.path().join("node3/nbd.sock").display()
    );
    ok(Command::new("qemu-io")
        .args(["-r", "-f", "raw", "-c", "read -P 0xaa 0 16M"])
        .arg(&read_isolated));

    ns.link(false);
    let started = Instant::now();
    let refused = qemu_io_fails(&via_isolated, &["write -P 0xbb 0 64k"]);
    eprintln!(
        "isolated node refused a write after {:?}: {}",
        started.elapsed(),
        refused.lines().last().unwrap_or("")
    );
    // Cut off, the node refuses the write, or already the attach (it cannot reach the
    // coordinator that keeps attachments).
    assert!(
        refused.contains("Input/output error") || refused.contains("gave up on attaching"),
        "{refused}"
    );
    wait_for(
        "the map to drop the isolated node",
        Duration::from_secs(20),
        || (members(0) == Some(3)).then_some(()),
    );
    qemu_io(&via_host, &["write -P 0xcc 0 64k", "flush"]);
    let log = std::fs::read_to_string(dir.path().join("sheep3.log")).unwrap();
    assert!(
        log.contains("heartbeat failed"),
        "the isolated node noticed it is cut off"
    );

    ns.link(true);
    wait_for(
        "the isolated node to rejoin",
        Duration::from_secs(30),
        || (members(0) == Some(4)).then_some(()),
    );
    wait_for(
        "the rejoined node to serve the new data",
        Duration::from_secs(30),
        || {
            let out = run(Command::new("qemu-io").args([
                "-f",
                "raw",
                "-c",
                "read -P 0xcc 0 64k",
                &via_isolated,
            ]));
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            (out.status.success() && !text.contains("failed")).then_some(())
        },
    );
    qemu_io(
        &via_isolated,
        &["read -P 0xcc 0 64k", "read -P 0xaa 64k 16320k"],
    );
    qemu_io(&via_host, &["read -P 0xcc 0 64k"]);
    wait_for("every replica to agree", Duration::from_secs(30), || {
        run(Command::new(bin_dir().join("dog"))
            .args(["cluster", "check", "-a", HOST, "-p", "7101"]))
        .status
        .success()
        .then_some(())
    });
}

/// After a silent partition of half a minute (packets dropped, no error to anyone) with
/// requests in flight on every connection to the node (heartbeats, replica writes), the node
/// is back in the map and serving within seconds of the heal. A connection that died in the
/// partition must not be reused: TCP alone would retransmit on it only at its next backoff,
/// tens of seconds (and up to minutes) later.
#[test]
fn a_node_partitioned_with_requests_in_flight_is_back_within_seconds_of_the_heal() {
    use sheepdog_e2e::lab::Lab;
    let mut lab = Lab::start(4, "3s", &["--copies", "3", "--io-timeout", "8s"]);
    let nodes = |lab: &Lab, via: u16| {
        lab.info(via)
            .and_then(|info| Some(info["nodes"].as_array()?.len()))
    };
    wait_for("4 members", Duration::from_secs(30), || {
        (nodes(&lab, 0) == Some(4)).then_some(())
    });
    ok(&mut lab.dog(0, &["vdi", "create", "held", "64M"]));
    qemu_io(&lab.nbd_uri(0, "held"), &["write -P 0x11 0 64M", "flush"]);

    // Replica writes from node 0 to node 3 are in flight when the packets stop.
    let writer = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 0 64M", "-c", "flush"])
        .arg(lab.nbd_uri(0, "held"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.set_silent_cut(3, true);
    wait_for(
        "the map to drop the cut-off node",
        Duration::from_secs(30),
        || (nodes(&lab, 0) == Some(3)).then_some(()),
    );
    let out = writer.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("failed"),
        "the rewrite failed: {text}"
    );
    let epoch = |lab: &Lab, via: u16| lab.info(via).and_then(|info| info["epoch"].as_u64());
    std::thread::sleep(Duration::from_secs(25));

    lab.set_silent_cut(3, false);
    let healed = Instant::now();
    let back = Duration::from_secs(10);
    let mut rejoined = None;
    while healed.elapsed() < back {
        // In the map, and on its epoch: node 3 itself still had the 4-node map of before.
        if nodes(&lab, 0) == Some(4) && epoch(&lab, 3).is_some() && epoch(&lab, 3) == epoch(&lab, 0)
        {
            rejoined = Some(healed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rejoined = rejoined.unwrap_or_else(|| {
        panic!(
            "node 3 was not back in the map {back:?} after the heal\n{}",
            lab.logs()
        )
    });
    eprintln!("node 3 was back in the map {rejoined:?} after the heal");
    let started = Instant::now();
    qemu_io(
        &lab.nbd_uri(3, "held"),
        &["write -P 0x33 0 1M", "flush", "read -P 0x22 1M 63M"],
    );
    qemu_io(&lab.nbd_uri(0, "held"), &["read -P 0x33 0 1M"]);
    assert!(
        started.elapsed() < back,
        "node 3's gateway took {:?} to serve after the rejoin",
        started.elapsed()
    );
}
