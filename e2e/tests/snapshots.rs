//! Snapshots, clones, rollback and delete on a cluster of real sheep processes, checked with
//! qemu-img and qemu-io against images saved at snapshot time.

use sheepdog_e2e::raw_nbd::Raw;
use sheepdog_e2e::{Cluster, ok, qemu_io, require, run, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FAILURE_TIMEOUT: &str = "3s";
/// NBD_CMD_WRITE and the NBD error EPERM, from the protocol.
const CMD_WRITE: u16 = 1;
const EPERM: u32 = 1;

/// Saves the content of `uri` as a raw image file.
fn save(uri: &str, path: &Path) {
    require("qemu-img", "qemu-utils");
    ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        uri,
        path.to_str().unwrap(),
    ]));
}

/// Asserts that `uri` holds exactly the image at `path`.
fn assert_same(path: &Path, uri: &str) {
    let out = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        path.to_str().unwrap(),
        uri,
    ]));
    assert!(
        out.status.success(),
        "{uri} differs from {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Objects stored on all live nodes together.
fn stored_objects(cluster: &Cluster) -> u64 {
    cluster
        .objects_per_node(0)
        .expect("every node reports its objects")
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Visible volumes and snapshots as `name` or `name@tag`.
fn listed(cluster: &Cluster) -> Vec<String> {
    let out = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| match r["snapshot"].as_bool().unwrap() {
            true => format!(
                "{}@{}",
                r["name"].as_str().unwrap(),
                r["tag"].as_str().unwrap()
            ),
            false => r["name"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Deterministic scattered writes for round `round`: unaligned, crossing object
/// boundaries, and a discard, so that every round changes some objects and shares others.
fn scatter(uri: &str, round: u64) {
    let mut state = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut commands = Vec::new();
    for _ in 0..4 {
        let offset = next() % (60 << 20);
        let len = 1 + next() % (300 << 10);
        commands.push(format!("write -P {} {offset} {len}", 0x20 + round));
    }
    // Across the boundary between objects 3 and 4.
    commands.push(format!(
        "write -P {} {} 8k",
        0x40 + round,
        (16 << 20) - 4096
    ));
    let discard = (next() % 15) * (4 << 20);
    commands.push(format!("discard {} 64k", discard + 8192));
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    qemu_io(uri, &refs);
}

fn image(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.raw"))
}

#[test]
fn ten_snapshots_rollback_and_deletes_keep_every_image_and_free_all_space() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    let images = tempfile::tempdir().unwrap();
    cluster.create("vm", "64M");
    let vm = |node| cluster.nbd_uri_on(node, "vm");
    for round in 1..=10u64 {
        scatter(&vm(round as u16 % 3), round);
        save(&vm(0), &image(images.path(), &format!("s{round}")));
        ok(&mut cluster.dog_on(
            round as u16 % 3,
            &["vdi", "snapshot", "-s", &format!("s{round}"), "vm"],
        ));
    }
    scatter(&vm(1), 11);
    save(&vm(1), &image(images.path(), "live"));
    for round in 1..=10u64 {
        let tag = format!("s{round}");
        assert_same(
            &image(images.path(), &tag),
            &cluster.nbd_uri_on(round as u16 % 3, &format!("vm@{tag}")),
        );
    }
    assert_same(&image(images.path(), "live"), &vm(2));

    // A snapshot is read-only: a write gets EPERM; an unknown tag is no export.
    let (mut raw, size) = Raw::go(cluster.nbd_port, "vm@s3");
    assert_eq!(size, 64 << 20);
    raw.request(0, CMD_WRITE, 7, 0, 4096, &[0xAB; 4096]);
    assert_eq!(
        raw.reply(),
        (7, EPERM),
        "a write to a snapshot must get EPERM"
    );
    let refused = run(&mut cluster.dog(&["vdi", "snapshot", "-s", "s3", "vm"]));
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("already has a snapshot")
    );
    let missing = run(Command::new("qemu-img").args(["info", &cluster.nbd_uri_on(0, "vm@nope")]));
    assert!(!missing.status.success());

    // The list shows what each owns and shares; the tree puts the volume under s10.
    let list = ok(&mut cluster.dog(&["vdi", "list"]));
    assert!(
        list.lines().filter(|l| l.starts_with("s vm")).count() == 10,
        "{list}"
    );
    let tree = ok(&mut cluster.dog(&["vdi", "tree"]));
    assert!(
        tree.contains("vm@s10") && tree.contains("vm (writable)"),
        "{tree}"
    );

    // Deleting middle snapshots keeps the others and the volume intact.
    for tag in ["s3", "s5", "s6", "s8"] {
        ok(&mut cluster.dog_on(1, &["vdi", "delete", "-s", tag, "vm"]));
    }
    for round in [1u64, 2, 4, 7, 9, 10] {
        let tag = format!("s{round}");
        assert_same(
            &image(images.path(), &tag),
            &cluster.nbd_uri_on(2, &format!("vm@{tag}")),
        );
    }
    assert_same(&image(images.path(), "live"), &vm(0));
    assert!(!listed(&cluster).contains(&"vm@s5".to_owned()));

    // Rollback to s4: the volume reads s4 again and stays writable; s4 is untouched.
    let before = stored_objects(&cluster);
    ok(&mut cluster.dog_on(2, &["vdi", "rollback", "-s", "s4", "vm"]));
    assert_same(&image(images.path(), "s4"), &vm(1));
    qemu_io(&vm(0), &["write -P 0x99 1M 64k"]);
    qemu_io(&vm(2), &["read -P 0x99 1M 64k"]);
    assert_same(&image(images.path(), "s4"), &cluster.nbd_uri_on(1, "vm@s4"));
    assert!(
        stored_objects(&cluster) <= before + 6,
        "the writes dropped by the rollback are freed"
    );

    // Deleting everything, volume first (its snapshots keep their objects), frees every object.
    ok(&mut cluster.dog(&["vdi", "delete", "vm"]));
    assert_same(
        &image(images.path(), "s10"),
        &cluster.nbd_uri_on(1, "vm@s10"),
    );
    for round in [10u64, 1, 7, 2, 9, 4] {
        ok(&mut cluster.dog(&["vdi", "delete", "-s", &format!("s{round}"), "vm"]));
    }
    assert_eq!(listed(&cluster), Vec::<String>::new());
    assert_eq!(
        stored_objects(&cluster),
        0,
        "no object may outlive every volume"
    );
}

#[test]
fn clones_of_clones_are_instant_independent_and_outlive_their_sources() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    let images = tempfile::tempdir().unwrap();
    cluster.create("base", "32M");
    qemu_io(&cluster.nbd_uri_on(0, "base"), &["write -P 0x11 0 32M"]);
    ok(&mut cluster.dog(&["vdi", "snapshot", "-s", "gold", "base"]));
    save(
        &cluster.nbd_uri_on(0, "base@gold"),
        &image(images.path(), "gold"),
    );

    // A clone copies no data: only its inode is new.
    let objects = stored_objects(&cluster);
    ok(&mut cluster.dog_on(1, &["vdi", "clone", "-s", "gold", "base", "c1"]));
    assert_eq!(
        stored_objects(&cluster),
        objects + 3,
        "a clone adds its inode only"
    );

    // Writes to the clone never reach the source; unmodified ranges read the source.
    let c1 = |node| cluster.nbd_uri_on(node, "c1");
    qemu_io(&c1(2), &["write -P 0x22 1M 4k", "write -P 0x23 9M 5M"]);
    qemu_io(
        &c1(0),
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 1M 4k",
            "read -P 0x11 1052672 8384512",
            "read -P 0x23 9M 5M",
            "read -P 0x11 14M 18M",
        ],
    );
    assert_same(
        &image(images.path(), "gold"),
        &cluster.nbd_uri_on(1, "base"),
    );
    assert_same(
        &image(images.path(), "gold"),
        &cluster.nbd_uri_on(2, "base@gold"),
    );

    // A clone of a snapshot of the clone; zeroing inherited ranges (part of an object and
    // whole objects) reads zeros there and nowhere else.
    ok(&mut cluster.dog_on(2, &["vdi", "snapshot", "-s", "x", "c1"]));
    save(&c1(1), &image(images.path(), "c1x"));
    ok(&mut cluster.dog(&["vdi", "clone", "-s", "x", "c1", "c2"]));
    let c2 = |node| cluster.nbd_uri_on(node, "c2");
    qemu_io(
        &c2(1),
        &[
            "write -z 2M 64k",
            "write -z 16M 8M",
            "discard 28M 4M",
            "write -P 0x33 30M 4k",
        ],
    );
    qemu_io(
        &c2(0),
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 1M 4k",
            "read -P 0 2M 64k",
            "read -P 0x23 9M 5M",
            "read -P 0 16M 8M",
            "read -P 0x11 24M 4M",
            "read -P 0 28M 2M",
            "read -P 0x33 30M 4k",
        ],
    );
    assert_same(&image(images.path(), "c1x"), &c1(2));
    assert_same(&image(images.path(), "c1x"), &cluster.nbd_uri_on(0, "c1@x"));
    let list = ok(&mut cluster.dog(&["vdi", "list"]));
    assert!(
        list.lines().any(|l| l.starts_with("c c2")),
        "clones are marked c:\n{list}"
    );
    save(&c2(2), &image(images.path(), "c2"));

    // Deleted parents with live children: the children read on, and every object comes
    // back only once nothing reads it.
    for (tag, name) in [
        (None, "base"),
        (Some("gold"), "base"),
        (None, "c1"),
        (Some("x"), "c1"),
    ] {
        let mut args = vec!["vdi", "delete"];
        if let Some(tag) = tag {
            args.extend(["-s", tag]);
        }
        args.push(name);
        ok(&mut cluster.dog_on(1, &args));
        assert_same(&image(images.path(), "c2"), &c2(0));
    }
    assert_eq!(listed(&cluster), vec!["c2".to_owned()]);
    ok(&mut cluster.dog(&["vdi", "delete", "c2"]));
    assert_eq!(
        stored_objects(&cluster),
        0,
        "no object may outlive every volume"
    );
}

#[test]
fn a_snapshot_holds_exactly_the_writes_acknowledged_before_it() {
    require("nbdsh", "python3-libnbd");
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("cut", "16M");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("checker")
        .join("snapshot_cut.py");
    let dog = sheepdog_e2e::bin_dir().join("dog");
    let port = cluster.peer_port.to_string();
    // The writer goes through node 1; the snapshot is taken through node 0.
    let out = ok(Command::new("/usr/bin/python3").args([
        script.to_str().unwrap(),
        &cluster.nbd_uri_on(1, "cut"),
        &cluster.nbd_uri_on(2, "cut@cut"),
        "3",
        "512",
        "--",
        dog.to_str().unwrap(),
        "vdi",
        "snapshot",
        "-s",
        "cut",
        "cut",
        "-p",
        &port,
    ]));
    let result: serde_json::Value =
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    println!("{result}");
    assert_eq!(result["violation_count"], 0, "{result}");
    assert!(
        result["acknowledged_before"].as_u64().unwrap() > 100,
        "{result}"
    );
    assert!(result["issued_after"].as_u64().unwrap() > 100, "{result}");
}

#[test]
fn snapshots_clones_and_deletes_during_a_node_kill_complete_or_leave_nothing() {
    let mut cluster = Cluster::start_with(4, FAILURE_TIMEOUT);
    let images = tempfile::tempdir().unwrap();
    cluster.create("vm", "64M");
    qemu_io(
        &cluster.nbd_uri_on(0, "vm"),
        &["write -P 0x5a 0 40M", "write -P 0x5b 50M 3M"],
    );
    let saved = image(images.path(), "vm");
    save(&cluster.nbd_uri_on(0, "vm"), &saved);

    // Snapshots and clones one after another through node 0 while node 3 is killed.
    let dog = sheepdog_e2e::bin_dir().join("dog");
    let port = cluster.peer_port.to_string();
    let worker = std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        for i in 0..6 {
            let tag = format!("k{i}");
            let started = Instant::now();
            let snap =
                run(Command::new(&dog).args(["vdi", "snapshot", "-s", &tag, "vm", "-p", &port]));
            let clone = run(Command::new(&dog).args([
                "vdi",
                "clone",
                "-s",
                &tag,
                "vm",
                &format!("c{i}"),
                "-p",
                &port,
            ]));
            outcomes.push((
                i,
                snap.status.success(),
                clone.status.success(),
                started.elapsed(),
            ));
        }
        outcomes
    });
    std::thread::sleep(Duration::from_millis(50));
    cluster.kill9_node(3);
    let outcomes = worker.join().unwrap();
    println!("outcomes (index, snapshot ok, clone ok, time): {outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o.3 > Duration::from_secs(1)),
        "some operation must run across the node's failure: {outcomes:?}"
    );
    let names = listed(&cluster);
    for (i, snapshot_ok, clone_ok, _) in &outcomes {
        let (tag, clone) = (format!("vm@k{i}"), format!("c{i}"));
        assert_eq!(
            names.contains(&tag),
            *snapshot_ok,
            "snapshot k{i} is there iff it succeeded: {names:?}"
        );
        assert_eq!(
            names.contains(&clone),
            *clone_ok,
            "clone c{i} is there iff it succeeded: {names:?}"
        );
        if *snapshot_ok {
            assert_same(&saved, &cluster.nbd_uri_on(1, &tag));
        }
        if *clone_ok {
            assert_same(&saved, &cluster.nbd_uri_on(2, &clone));
        }
    }
    assert!(
        outcomes.iter().filter(|o| o.1 && o.2).count() >= 3,
        "most operations go through: {outcomes:?}"
    );
    assert_same(&saved, &cluster.nbd_uri_on(2, "vm"));
    // Recovery carries the snapshots and clones: every replica is back on the live nodes.
    wait_for("dog cluster check to pass", Duration::from_secs(60), || {
        run(&mut cluster.dog(&["cluster", "check"]))
            .status
            .success()
            .then_some(())
    });

    // Deletes while node 2 is killed.
    let dog = sheepdog_e2e::bin_dir().join("dog");
    let port = cluster.peer_port.to_string();
    let doomed: Vec<(Option<String>, String)> = names
        .iter()
        .map(|n| match n.split_once('@') {
            Some((name, tag)) => (Some(tag.to_owned()), name.to_owned()),
            None => (None, n.clone()),
        })
        .collect();
    let worker = std::thread::spawn(move || {
        doomed
            .into_iter()
            .map(|(tag, name)| {
                let mut cmd = Command::new(&dog);
                cmd.args(["vdi", "delete"]);
                if let Some(tag) = &tag {
                    cmd.args(["-s", tag]);
                }
                cmd.args([name.as_str(), "-p", &port]);
                let started = Instant::now();
                let deleted = run(&mut cmd).status.success();
                (tag, name, deleted, started.elapsed())
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(50));
    cluster.kill9_node(2);
    let deletes = worker.join().unwrap();
    println!("deletes (tag, name, ok, time): {deletes:?}");
    assert!(
        deletes.iter().any(|d| d.3 > Duration::from_secs(1)),
        "some delete must run across the node's failure: {deletes:?}"
    );
    let left = listed(&cluster);
    for (tag, name, deleted, _) in &deletes {
        let shown = match tag {
            Some(tag) => format!("{name}@{tag}"),
            None => name.clone(),
        };
        assert_eq!(
            !left.contains(&shown),
            *deleted,
            "{shown} is gone iff its delete succeeded: {left:?}"
        );
    }
    // Whatever failed is deleted now. Objects are freed once the killed node is back (it may
    // hold the only copy of an inode that reads them; otherwise after GC_GRACE); then no
    // object is left.
    cluster.up();
    for shown in left {
        match shown.split_once('@') {
            Some((name, tag)) => ok(&mut cluster.dog(&["vdi", "delete", "-s", tag, name])),
            None => ok(&mut cluster.dog(&["vdi", "delete", &shown])),
        };
    }
    wait_for("every object freed", Duration::from_secs(60), || {
        let per_node = cluster.objects_per_node(0)?;
        (per_node.len() == 4 && per_node.iter().all(|(_, n)| *n == 0)).then_some(())
    });
}

#[test]
fn bad_snapshot_requests_get_clear_errors_and_change_nothing() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("vm", "16M");
    qemu_io(&cluster.nbd_uri_on(0, "vm"), &["write -P 0x44 0 5M"]);
    ok(&mut cluster.dog(&["vdi", "snapshot", "-s", "one", "vm"]));
    cluster.create("other", "16M");
    let objects = stored_objects(&cluster);
    let refused = |args: &[&str], says: &str| {
        let out = run(&mut cluster.dog_on(1, args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "dog {args:?} should fail saying {says:?}: {stderr}"
        );
    };
    refused(&["vdi", "snapshot", "-s", "a@b", "vm"], "snapshot tag");
    refused(
        &["vdi", "snapshot", "-s", "one", "vm"],
        "already has a snapshot",
    );
    refused(&["vdi", "snapshot", "nope"], "does not exist");
    refused(
        &["vdi", "clone", "-s", "two", "vm", "c"],
        "no snapshot tagged",
    );
    refused(
        &["vdi", "clone", "-s", "one", "vm", "other"],
        "already exists",
    );
    refused(
        &["vdi", "clone", "-s", "one", "vm", "bad/name"],
        "invalid volume name",
    );
    refused(
        &["vdi", "rollback", "-s", "two", "vm"],
        "no snapshot tagged",
    );
    refused(&["vdi", "delete", "-s", "two", "vm"], "no snapshot tagged");
    let zeros = std::fs::File::open("/dev/zero").unwrap();
    let out = run(cluster
        .dog(&["vdi", "write", "vm@one", "0", "4096"])
        .stdin(zeros));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("read-only"),
        "{stderr}"
    );
    assert_eq!(
        stored_objects(&cluster),
        objects,
        "refused requests store nothing"
    );
    assert_eq!(listed(&cluster), vec!["other", "vm@one", "vm"]);
    // Reads of a snapshot work through gRPC too.
    let out = run(&mut cluster.dog(&["vdi", "read", "vm@one", "0", "4096"]));
    assert!(out.status.success() && out.stdout == vec![0x44; 4096]);
}

#[test]
fn a_node_away_during_a_delete_does_not_bring_the_volume_back() {
    let mut cluster = Cluster::start_with(4, FAILURE_TIMEOUT);
    cluster.create("vm", "64M");
    qemu_io(&cluster.nbd_uri_on(0, "vm"), &["write -P 0x77 0 20M"]);
    let vid = |cluster: &Cluster| -> u64 {
        let out = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows[0]["vid"].as_u64().unwrap()
    };
    let old_vid = vid(&cluster);
    // Node 3 holds copies of the volume and is down while it is deleted.
    cluster.kill9_node(3);
    ok(&mut cluster.dog(&["vdi", "delete", "vm"]));
    cluster.up();
    wait_for("node 3 back", Duration::from_secs(30), || {
        (cluster.info(0)["nodes"].as_array()?.len() == 4).then_some(())
    });
    wait_for("no object on any node", Duration::from_secs(30), || {
        (stored_objects(&cluster) == 0).then_some(())
    });
    assert_eq!(
        listed(&cluster),
        Vec::<String>::new(),
        "the deleted volume came back"
    );
    // A new volume of the same name gets a new vid, and none of the old data.
    cluster.create("vm", "64M");
    assert_ne!(
        vid(&cluster),
        old_vid,
        "a deleted volume's vid is never reused"
    );
    qemu_io(&cluster.nbd_uri_on(3, "vm"), &["read -P 0 0 20M"]);
}
