//! Power cuts, with `lazyfs` (e2e/lazyfs) under the data: only what was fsynced survives.

use sheepdog_e2e::lab::Lab;
use sheepdog_e2e::{
    PowerCutFs, bin_dir, free_ports, ok, qemu_io, qemu_io_fails, require, run, wait_for,
};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

const EIO: i32 = 5;

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Punches a hole with fallocate(2), without a sync (fallocate(1) fsyncs).
fn punch(path: &Path, offset: u64, len: u64) {
    use rustix::fs::{FallocateFlags, fallocate};
    let file = OpenOptions::new().write(true).open(path).unwrap();
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    fallocate(&file, flags, offset, len).unwrap();
}

fn bytes(runs: &[(u8, usize)]) -> Vec<u8> {
    runs.iter()
        .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
        .collect()
}

#[test]
fn lazyfs_drops_unsynced_writes_and_keeps_synced_ones() {
    let mut fs = PowerCutFs::start();
    let m = fs.mount();
    // Durable to start with: three files of three 4 KiB blocks, their names fsynced too.
    for name in ["written", "punched", "resized"] {
        let mut f = File::create(m.join(name)).unwrap();
        f.write_all(&[0x11; 12288]).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(&m);

    // A synced write survives; the writes after it, one of them extending the file, do not.
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("written"))
        .unwrap();
    f.write_all_at(&[0x22; 4096], 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&[0x33; 4096], 4096).unwrap();
    f.write_all_at(&[0x33; 100], 12288).unwrap();
    drop(f); // a close is no sync
    let latest = bytes(&[(0x22, 4096), (0x33, 4096), (0x11, 4096), (0x33, 100)]);
    assert_eq!(
        fs::read(m.join("written")).unwrap(),
        latest,
        "reads see unsynced writes"
    );
    let synced = bytes(&[(0x22, 4096), (0x11, 8192)]);
    assert_eq!(fs::read(fs.backing().join("written")).unwrap(), synced);

    // A synced hole stays; an unsynced one fills up again.
    punch(&m.join("punched"), 0, 4096);
    File::open(m.join("punched")).unwrap().sync_all().unwrap();
    punch(&m.join("punched"), 8192, 4096);
    let holes = bytes(&[(0, 4096), (0x11, 4096), (0, 4096)]);
    assert_eq!(fs::read(m.join("punched")).unwrap(), holes);

    // A synced shrink stays; an unsynced growth is undone.
    let f = OpenOptions::new()
        .write(true)
        .open(m.join("resized"))
        .unwrap();
    f.set_len(5000).unwrap();
    f.sync_all().unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.join("resized")).unwrap().len(), 1 << 20);

    // A durable name with unsynced data; synced data under a name never made durable.
    File::create(m.join("named"))
        .unwrap()
        .write_all(b"lost")
        .unwrap();
    sync_dir(&m);
    let mut f = File::create(m.join("unnamed")).unwrap();
    f.write_all(b"synced, but its directory was not").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let held = File::open(m.join("written")).unwrap();

    let report = fs.cut();
    // Unsynced: 4096 + 100 bytes of "written", 4 of "named"; the hole and the growth hold no
    // data. The creation of "unnamed" is undone; `held` is dead.
    assert_eq!(report, "cut 1 files=4 bytes=4200 undone=1 handles=1 kept=0");

    assert_eq!(fs::read(m.join("written")).unwrap(), synced);
    let one_hole = bytes(&[(0, 4096), (0x11, 8192)]);
    assert_eq!(fs::read(m.join("punched")).unwrap(), one_hole);
    let blocks = fs::metadata(fs.backing().join("punched")).unwrap().blocks();
    assert!(
        blocks * 512 <= 8192,
        "the synced hole is punched in the backing file: {blocks}"
    );
    assert_eq!(fs::read(m.join("resized")).unwrap(), vec![0x11; 5000]);
    assert_eq!(fs::read(m.join("named")).unwrap(), b"");
    assert!(!m.join("unnamed").exists());
    let err = held.read_at(&mut [0u8; 1], 0).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(EIO),
        "a handle from before the cut"
    );
    // The mount now shows exactly the backing directory.
    for name in ["written", "punched", "resized", "named"] {
        let backing = fs::read(fs.backing().join(name)).unwrap();
        assert_eq!(fs::read(m.join(name)).unwrap(), backing, "{name}");
    }
    let mut names: Vec<String> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["named", "punched", "resized", "written"]);
}

/// One `sheep` with no coordinator, killed with SIGKILL when dropped.
struct Sheep {
    child: Child,
    peer: u16,
    nbd: u16,
}

impl Sheep {
    fn start(dir: &Path, log: &Path, peer: u16, nbd: u16) -> Self {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin_dir().join("sheep"))
            .arg("--dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{peer}")])
            .args(["--nbd", &format!("127.0.0.1:{nbd}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let sheep = Self { child, peer, nbd };
        wait_for("sheep to answer", Duration::from_secs(30), || {
            run(&mut sheep.dog(&["node", "list"]))
                .status
                .success()
                .then_some(())
        });
        sheep
    }

    fn dog(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("dog"));
        cmd.args(args).args(["-p", &self.peer.to_string()]);
        cmd
    }

    fn uri(&self, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.nbd)
    }

    /// kill -9, as the crash that comes with a power cut.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Sheep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of `byte` at `offset` with libnbd and disconnects: no flush, no FUA.
/// (qemu-io cannot: its default cache mode flushes after every write, and even with
/// `cache=unsafe` sheep sees a flush when it exits.)
fn write_unflushed(uri: &str, offset: usize, len: usize, byte: u8) {
    require("nbdsh", "python3-libnbd");
    let script = format!(
        "import nbd\nh = nbd.NBD()\nh.connect_uri({uri:?})\nh.pwrite(bytes([{byte}]) * {len}, {offset})\nh.shutdown()\n"
    );
    ok(Command::new("/usr/bin/python3").arg("-c").arg(script));
}

const M: usize = 1 << 20;

/// What a node had after a power cut.
struct AfterCut {
    /// The whole volume, read back after the restart.
    volume: Vec<u8>,
    /// lazyfs's report of the cut.
    report: String,
    /// Entries of the node's data directory right after the cut.
    entries: Vec<String>,
    sheep_log: String,
}

/// Starts one node with its data directory on lazyfs (namespace model `metadata`; the
/// subdirectories `ready` of the data directory made durably beforehand), writes pattern A
/// (0xa1 over object 0, 0xa2 over the first MiB of object 5) and flushes, writes pattern B
/// without a flush (0xb1 over half of the new object 2, 0xb2 over another MiB of object 5),
/// kills the node, cuts the power and starts the node again on the same directory.
fn node_through_a_power_cut(metadata: &str, ready: &[&str]) -> AfterCut {
    let mut fs = PowerCutFs::start_with(metadata);
    let dir = fs.mount().join("node");
    fs::create_dir(&dir).unwrap();
    for sub in ready {
        fs::create_dir(dir.join(sub)).unwrap();
    }
    sync_dir(&dir);
    sync_dir(&fs.mount()); // the data directory is installed durably, as on a real disk
    let log = fs.scratch().join("sheep.log");
    let peer = free_ports(2);
    let sheep = Sheep::start(&dir, &log, peer, peer + 1);
    ok(&mut sheep.dog(&["vdi", "create", "-c", "1", "v", "64M"]));
    let uri = sheep.uri("v");
    qemu_io(
        &uri,
        &["write -P 0xa1 0 4M", "write -P 0xa2 20M 1M", "flush"],
    );
    write_unflushed(&uri, 8 * M, 2 * M, 0xb1);
    write_unflushed(&uri, 22 * M, M, 0xb2);
    sheep.kill9();
    let report = fs.cut();
    let mut entries: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let sheep = Sheep::start(&dir, &log, peer, peer + 1);
    let out = run(&mut sheep.dog(&["vdi", "read", "v"]));
    drop(sheep);
    let sheep_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "reading the volume back failed after {report}: {}\nentries of the data directory after the cut: {entries:?}\nsheep.log:\n{sheep_log}",
        String::from_utf8_lossy(&out.stderr),
    );
    AfterCut {
        volume: out.stdout,
        report,
        entries,
        sheep_log,
    }
}

/// Pattern A intact, each range of pattern B all there or all gone, zeros elsewhere.
fn check_volume(after: &AfterCut) {
    let volume = &after.volume;
    assert_eq!(volume.len(), 64 * M);
    let is = |from: usize, to: usize, byte: u8| volume[from..to].iter().all(|&x| x == byte);
    assert!(
        is(0, 4 * M, 0xa1) && is(20 * M, 21 * M, 0xa2),
        "flushed pattern A was lost or damaged after {}\nsheep.log:\n{}",
        after.report,
        after.sheep_log
    );
    for (from, to, byte) in [(8 * M, 10 * M, 0xb1), (22 * M, 23 * M, 0xb2)] {
        assert!(
            is(from, to, byte) || is(from, to, 0),
            "unflushed {from}..{to} is neither all old nor all new"
        );
    }
    for (from, to) in [
        (4 * M, 8 * M),
        (10 * M, 20 * M),
        (21 * M, 22 * M),
        (23 * M, 64 * M),
    ] {
        assert!(is(from, to, 0), "{from}..{to} is not zeros");
    }
}

/// Namespace changes durable at the next fsync of anything, as on ext4 or XFS. (Under strict
/// POSIX a fresh node loses everything: see `a_fresh_node_keeps_flushed_writes_under_strict_posix`.)
#[test]
fn a_node_on_lazyfs_keeps_flushed_writes_across_a_power_cut() {
    let after = node_through_a_power_cut("journal", &[]);
    assert!(
        !after.report.contains(" bytes=0 "),
        "pattern B was not left unsynced: {}",
        after.report
    );
    check_volume(&after);
}

/// Strict POSIX (a name is durable once its directory is fsynced), with `obj/` and `maps/`
/// created durably beforehand: the store syncs everything else it must.
#[test]
fn a_node_keeps_flushed_writes_under_strict_posix_when_its_directories_exist() {
    let after = node_through_a_power_cut("strict", &["obj", "maps"]);
    check_volume(&after);
}

/// Strict POSIX on a fresh data directory. The store used to create `DIR/obj` and `DIR/maps`
/// with `create_dir_all` and never fsync `DIR`: their names were not durable, and a power cut
/// took every object with them although they were flushed. It now syncs the parent of every
/// directory it creates. ext4 and XFS happen to commit the mkdir with the first fsync of
/// `obj/`; POSIX does not promise it.
#[test]
fn a_fresh_node_keeps_flushed_writes_under_strict_posix() {
    let after = node_through_a_power_cut("strict", &[]);
    assert!(
        after.entries.iter().any(|e| e == "obj"),
        "DIR/obj vanished: {:?}",
        after.entries
    );
    check_volume(&after);
}

/// A fresh node on lazyfs (`journal` model) with a 1-copy volume `v` of `size`: the file
/// system, the node's data directory and log, its peer port, and the node.
fn fresh_node_with_volume(
    size: &str,
) -> (
    PowerCutFs,
    std::path::PathBuf,
    std::path::PathBuf,
    u16,
    Sheep,
) {
    let fs = PowerCutFs::start_with("journal");
    let dir = fs.mount().join("node");
    fs::create_dir(&dir).unwrap();
    sync_dir(&fs.mount());
    let log = fs.scratch().join("sheep.log");
    let peer = free_ports(2);
    let sheep = Sheep::start(&dir, &log, peer, peer + 1);
    ok(&mut sheep.dog(&["vdi", "create", "-c", "1", "v", size]));
    (fs, dir, log, peer, sheep)
}

/// One trial of a torn power cut (seed `seed`) over a 4 KiB block that holds flushed bytes
/// (0xa1 at 4096..6144) and then gets an unflushed write of its other half (0xb1 at
/// 6144..8192). Returns qemu-io's output reading the block back, or its failure.
fn torn_block_trial(seed: u64) -> Result<String, String> {
    let (mut fs, dir, log, peer, sheep) = fresh_node_with_volume("16M");
    let uri = sheep.uri("v");
    qemu_io(&uri, &["write -P 0xa1 0 6k", "flush"]);
    write_unflushed(&uri, 6144, 2048, 0xb1);
    sheep.kill9();
    let report = fs.cut_torn(seed);
    let sheep = Sheep::start(&dir, &log, peer, peer + 1);
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -v 4096 4096"])
        .arg(sheep.uri("v")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("failed") {
        let sheep_log = fs::read_to_string(&log).unwrap_or_default();
        let why: Vec<&str> = sheep_log
            .lines()
            .filter(|l| l.contains("checksum"))
            .collect();
        return Err(format!("seed {seed}, {report}: {text}\nsheep.log: {why:?}"));
    }
    Ok(text)
}

/// Flushed bytes must survive any power cut, also one that tore the later, unflushed write of
/// the rest of their 4 KiB block. The store writes a block's data and its checksum with two
/// pwrites. It used to log the object in `dirty.log` without an fsync: when the cut kept one
/// of the object's two pages and lost the dirty log's, start-up repaired nothing, block 1
/// "failed its checksum" for good and the flushed half became an I/O error (seed 1 did it).
/// The log entry is now durable before the object is written.
#[test]
fn a_torn_power_cut_keeps_the_flushed_half_of_a_block() {
    for seed in 0..16 {
        match torn_block_trial(seed) {
            Ok(text) => {
                // 0xa1 for the flushed half, then old zeros or new 0xb1, never a mix.
                let hex: String = text.lines().filter(|l| l.contains(':')).collect();
                assert!(hex.contains("a1 a1 a1 a1"), "seed {seed}: {text}");
            }
            Err(e) => panic!("the flushed half of the block is lost: {e}"),
        }
    }
}

/// Node ids in the map, as node `via` sees it.
fn members(lab: &Lab, via: u16) -> Vec<String> {
    let Some(info) = lab.info(via) else {
        return Vec::new();
    };
    let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
    let mut ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// A disk whose fsync fails, as Linux reports a write-back error: EIO, and the unsynced pages
/// are gone, so a retried fsync would succeed without them. The node must take itself out of
/// service rather than retry: the flush that met the failure completes on the other copies,
/// the node serves nothing more and leaves the map, and once its disk is healthy again a
/// restart recovers what it lost. A store that retried would have acknowledged the flush with
/// its copy of the write gone, and gone on serving the old bytes.
#[test]
fn a_node_whose_fsync_fails_stops_serving_and_loses_nothing() {
    let mut lab = Lab::start_on(3, "3s", &[], true);
    wait_for("3 members", Duration::from_secs(30), || {
        (members(&lab, 0) == ["0", "1", "2"]).then_some(())
    });
    wait_for("the volume to be created", Duration::from_secs(30), || {
        run(&mut lab.dog(0, &["vdi", "create", "vol", "16M"]))
            .status
            .success()
            .then_some(())
    });
    qemu_io(&lab.nbd_uri(0, "vol"), &["write -P 0x11 0 16M", "flush"]);
    lab.fail_fsyncs(2, 1_000_000);
    let failed = std::time::Instant::now();
    qemu_io(&lab.nbd_uri(0, "vol"), &["write -P 0x22 0 16M", "flush"]);
    eprintln!(
        "the write and flush through node 0 took {:?}",
        failed.elapsed()
    );
    wait_for("node 2 to leave the map", Duration::from_secs(30), || {
        (members(&lab, 0) == ["0", "1"]).then_some(())
    });
    let refused = qemu_io_fails(&lab.nbd_uri(2, "vol"), &["read 0 4k"]);
    assert!(
        refused.contains("failed to sync") && failed.elapsed() < Duration::from_secs(20),
        "node 2 refuses clients at once, saying why ({:?} after the failure): {refused}",
        failed.elapsed()
    );
    assert!(
        lab.logs().contains("an fsync failed"),
        "node 2 says why it stopped"
    );
    for via in [0, 1] {
        qemu_io(&lab.nbd_uri(via, "vol"), &["read -P 0x22 0 16M"]);
    }

    // The disk is replaced (fsyncs work again) and the node restarted: it rejoins and
    // recovers the flushed write its copies lost.
    lab.fail_fsyncs(2, 0);
    lab.kill9(2);
    lab.start_node(2);
    wait_for("node 2 to rejoin", Duration::from_secs(30), || {
        (members(&lab, 0) == ["0", "1", "2"]).then_some(())
    });
    wait_for("dog cluster check to pass", Duration::from_secs(60), || {
        run(&mut lab.dog(0, &["cluster", "check"]))
            .status
            .success()
            .then_some(())
    });
    qemu_io(&lab.nbd_uri(2, "vol"), &["read -P 0x22 0 16M"]);
}

/// Two clients flush at once (a review finding: the second flush could be answered before the
/// first one's fsyncs were done, and a write it covered was then lost to a power cut). Each
/// round, client B writes 4 KiB, client A dirties 24 MiB over six other objects, A flushes and
/// B flushes right behind it; the power is cut the moment B's flush is answered. B's write
/// must be there after the restart.
#[test]
fn a_flush_answered_while_another_still_syncs_covers_its_writes() {
    require("nbdsh", "python3-libnbd");
    for round in 0..4u8 {
        let (mut fs, dir, log, peer, sheep) = fresh_node_with_volume("64M");
        let (uri, byte) = (sheep.uri("v"), 0xb0 + round);
        let script = format!(
            "import nbd, sys, time\n\
             a, b = nbd.NBD(), nbd.NBD()\n\
             a.connect_uri({uri:?}); b.connect_uri({uri:?})\n\
             b.pwrite(bytes([{byte}]) * 4096, {b_at})\n\
             for i in range(24):\n    a.pwrite(bytes([0xa5]) * {M}, i * {M})\n\
             fa = a.aio_flush(); fb = b.aio_flush()\n\
             while not b.aio_command_completed(fb):\n    b.poll(1)\n\
             print('b-flushed', flush=True)\n\
             time.sleep(60)\n",
            b_at = 60 * M,
        );
        let mut client = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(client.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "b-flushed", "round {round}: the client failed");
        let report = fs.cut();
        sheep.kill9();
        let _ = client.kill();
        let _ = client.wait();
        let sheep = Sheep::start(&dir, &log, peer, peer + 1);
        let out = run(&mut sheep.dog(&["vdi", "read", "v", &(60 * M).to_string(), "4096"]));
        drop(sheep);
        assert!(
            out.status.success() && out.stdout == vec![byte; 4096],
            "round {round}: B's flushed write was lost to a power cut while A's flush synced ({report}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

/// The coordinator's maps survive a power cut: it publishes epochs while two nodes come and
/// go, loses power (lazyfs drops what was not fsynced), and starts again. Hearing only from a
/// node that claims no epoch, it must still know every epoch it published: its next map is
/// past them, and it starts as a restarted coordinator (lock renewals first).
#[test]
fn the_coordinator_keeps_its_maps_through_a_power_cut() {
    use sheepdog_api::v1::coordinator_service_client::CoordinatorServiceClient;
    use sheepdog_api::v1::{HeartbeatRequest, LockRequest, MapNode};
    let mut fs = PowerCutFs::start();
    let dir = fs.mount().join("coordinator");
    let port = sheepdog_e2e::free_port();
    let log = fs.scratch().join("coordinator.log");
    let start = |dir: &Path| -> Child {
        Command::new(sheepdog_e2e::bin_dir().join("sheep"))
            .arg("coordinator")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--failure-timeout", "2s"])
            .stdout(std::process::Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = |id: &str| MapNode {
        id: id.into(),
        peer_addr: format!("127.0.0.1:{}", port + 1),
        nbd_addr: format!("127.0.0.1:{}", port + 2),
        zone: "default".into(),
        weight: 1 << 30,
        joined_epoch: 0,
    };
    // Heartbeats from `ids` (each claiming `epoch`) until the map's epoch passes `past`
    // with exactly those nodes; returns that epoch.
    let beat_until = |ids: &[&str], epoch: u64, past: u64| -> u64 {
        runtime.block_on(async {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no map past epoch {past} with {ids:?}"
                );
                let connected =
                    CoordinatorServiceClient::connect(format!("http://127.0.0.1:{port}")).await;
                if let Ok(mut client) = connected {
                    let mut seen = None;
                    for id in ids {
                        let request = HeartbeatRequest {
                            node: Some(node(id)),
                            recovered_epoch: epoch,
                            epoch,
                            fence: 0,
                        };
                        if let Ok(reply) = client.heartbeat(request).await {
                            seen = reply.into_inner().map;
                        }
                    }
                    if let Some(map) = seen {
                        let members: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
                        if map.epoch > past && members.len() == ids.len() {
                            return map.epoch;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut coordinator = start(&dir);
    let first = beat_until(&["a", "b"], 0, 0);
    // Node b goes silent: after the failure timeout a map with a alone.
    let last = beat_until(&["a"], first, first);
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let report = fs.cut();
    eprintln!("published epochs {first} and {last}; power cut: {report}");
    let mut coordinator = start(&dir);
    // Node c, new, claims no epoch: only the coordinator's own maps tell it where it was.
    let next = beat_until(&["a", "c"], 0, 0);
    let restarting = runtime.block_on(async {
        let mut client = CoordinatorServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let request = LockRequest {
            name: "volumes".into(),
            holder: "newcomer".into(),
            ttl_ms: 30_000,
            shared: false,
            fenced: true,
            renewal: false,
            token: 0,
        };
        client.lock(request).await.unwrap().into_inner().restarting
    });
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(
        next > last,
        "after the power cut the coordinator published epoch {next}, not past its epoch {last}: it lost maps it had published"
    );
    assert!(
        restarting,
        "the restarted coordinator granted a new lock at once"
    );
}
