//! Membership changes that used to leave wrong decisions behind: a coordinator that lost its
//! directory, and garbage collection while a node is away.

use sheepdog_e2e::{Cluster, ok, qemu_io, run, wait_for};
use std::process::Command;
use std::time::Duration;

const FAILURE_TIMEOUT: &str = "3s";

fn epoch(cluster: &Cluster, via: u16) -> u64 {
    cluster.info(via)["epoch"].as_u64().unwrap()
}

fn members(cluster: &Cluster, via: u16) -> usize {
    cluster.info(via)["nodes"].as_array().unwrap().len()
}

#[test]
fn a_coordinator_that_lost_its_directory_never_reuses_an_epoch() {
    let mut cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("keep", "16M");
    qemu_io(&cluster.nbd_uri("keep"), &["write -P 0x3c 0 8M", "flush"]);
    // A few epochs: a node leaves and comes back.
    cluster.kill9_node(2);
    wait_for("node 2 to leave", Duration::from_secs(20), || {
        (members(&cluster, 0) == 2).then_some(())
    });
    cluster.up();
    wait_for("node 2 to return", Duration::from_secs(20), || {
        (members(&cluster, 0) == 3).then_some(())
    });
    let before = epoch(&cluster, 0);
    assert!(before >= 3, "epoch {before}");
    // The coordinator dies and its directory is lost.
    let coordinator = cluster.dir.path().join("coordinator");
    let pid = std::fs::read_to_string(coordinator.join("sheep.pid")).unwrap();
    ok(Command::new("kill").args(["-9", pid.trim()]));
    sheepdog_e2e::wait_gone(pid.trim().parse().unwrap());
    for lost in ["maps", "retired-vids.json", "sealed-vids.json"] {
        let path = coordinator.join(lost);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    cluster.up();
    // A membership change must make a map past every epoch the nodes had.
    cluster.kill9_node(1);
    let after = wait_for("a map without node 1", Duration::from_secs(30), || {
        (members(&cluster, 0) == 2).then(|| epoch(&cluster, 0))
    });
    assert!(
        after > before,
        "the new coordinator published epoch {after}, not past {before}"
    );
    // Each node adopts it at its next heartbeat.
    wait_for(
        "every node to adopt the new map",
        Duration::from_secs(5),
        || (epoch(&cluster, 2) >= after).then_some(()),
    );
    qemu_io(&cluster.nbd_uri_on(2, "keep"), &["read -P 0x3c 0 8M"]);
}

/// The node whose directory holds object `oid` (a file named after it), among `nodes`.
fn holder(cluster: &Cluster, nodes: u16, oid: u64) -> u16 {
    (0..nodes)
        .find(|n| {
            cluster
                .dir
                .path()
                .join(format!("node{n}/obj/{oid:016x}"))
                .exists()
        })
        .expect("some node holds the object")
}

#[test]
fn objects_a_clone_on_an_absent_node_reads_are_not_freed() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "-c", "1", "base", "16M"]));
    qemu_io(&cluster.nbd_uri("base"), &["write -P 0x5a 0 8M", "flush"]);
    ok(&mut cluster.dog(&["vdi", "snapshot", "-s", "s1", "base"]));
    ok(&mut cluster.dog(&["vdi", "clone", "-s", "s1", "base", "clone"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&mut cluster.dog(&["vdi", "list", "--json"]))).unwrap();
    let vid = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "clone")
        .and_then(|v| v["vid"].as_u64())
        .expect("the clone is listed");
    // With one copy, the clone's inode lives on one node: stop that node.
    let away = holder(&cluster, 3, (1 << 63) | (vid << 32));
    let via = (away + 1) % 3;
    let pid = cluster.pid(away).to_string();
    ok(Command::new("kill").args(["-STOP", &pid]));
    wait_for(
        "the map to drop the stopped node",
        Duration::from_secs(20),
        || (members(&cluster, via) == 2).then_some(()),
    );
    // Without the clone's inode in view, the snapshot and the volume look unread.
    ok(&mut cluster.dog_on(via, &["vdi", "delete", "-s", "s1", "base"]));
    ok(&mut cluster.dog_on(via, &["vdi", "delete", "base"]));
    ok(Command::new("kill").args(["-CONT", &pid]));
    wait_for("the node to return", Duration::from_secs(30), || {
        (members(&cluster, via) == 3).then_some(())
    });
    // Another operation collects garbage on the complete view.
    std::thread::sleep(Duration::from_secs(2));
    ok(&mut cluster.dog_on(via, &["vdi", "create", "other", "4M"]));
    qemu_io(&cluster.nbd_uri_on(via, "clone"), &["read -P 0x5a 0 8M"]);
    qemu_io(&cluster.nbd_uri_on(away, "clone"), &["read -P 0x5a 0 8M"]);
}

/// The same, with the node still in the map: stopped (SIGSTOP) while the deletes run, it does
/// not answer, so the directory lacks the clone's inode. Garbage collection must not act on
/// that incomplete view; once the node answers again the clone reads all its data.
#[test]
fn objects_a_clone_on_an_unanswering_node_reads_are_not_freed() {
    let cluster = Cluster::start_with_env(3, "60s", &[("SHEEP_IO_TIMEOUT", "4s")]);
    ok(&mut cluster.dog(&["vdi", "create", "-c", "1", "base", "32M"]));
    qemu_io(&cluster.nbd_uri("base"), &["write -P 0x6b 0 32M", "flush"]);
    ok(&mut cluster.dog(&["vdi", "snapshot", "-s", "s1", "base"]));
    ok(&mut cluster.dog(&["vdi", "clone", "-s", "s1", "base", "clone"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&mut cluster.dog(&["vdi", "list", "--json"]))).unwrap();
    let vid_of = |pick: &dyn Fn(&serde_json::Value) -> bool| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| pick(v))
            .and_then(|v| v["vid"].as_u64())
            .expect("listed")
    };
    let clone_vid = vid_of(&|v| v["name"] == "clone");
    let snapshot_vid = vid_of(&|v| v["name"] == "base" && v["tag"] == "s1");
    let away = holder(&cluster, 3, (1 << 63) | (clone_vid << 32));
    let via = (away + 1) % 3;
    // The test can fail only if some of the snapshot's data lives on the nodes that answer.
    let elsewhere = (0..8u64)
        .filter(|i| holder(&cluster, 3, (snapshot_vid << 32) | i) != away)
        .count();
    assert!(
        elsewhere > 0,
        "every data object is on the stopped node: the test would prove nothing"
    );
    ok(&mut cluster.dog_on(via, &["vdi", "delete", "base"]));
    let pid = cluster.pid(away).to_string();
    ok(Command::new("kill").args(["-STOP", &pid]));
    // The node stays in the map (60 s failure timeout) but answers nothing.
    let deleted = run(&mut cluster.dog_on(via, &["vdi", "delete", "-s", "s1", "base"]));
    ok(Command::new("kill").args(["-CONT", &pid]));
    eprintln!(
        "deleting the snapshot while node {away} did not answer: {} {}",
        deleted.status,
        String::from_utf8_lossy(&deleted.stderr).trim()
    );
    assert_eq!(
        members(&cluster, via),
        3,
        "the stopped node stayed in the map"
    );
    // Another operation collects garbage on the complete view.
    ok(&mut cluster.dog_on(via, &["vdi", "create", "other", "4M"]));
    qemu_io(&cluster.nbd_uri_on(via, "clone"), &["read -P 0x6b 0 32M"]);
    qemu_io(&cluster.nbd_uri_on(away, "clone"), &["read -P 0x6b 0 32M"]);
}
