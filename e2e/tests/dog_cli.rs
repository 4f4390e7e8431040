//! The dog CLI against a real one-node cluster: volume lifecycle, JSON output, errors that say
//! what to do.

use sheepdog_e2e::{Cluster, bin_dir, free_port, ok, qemu_io, run};
use std::io::Write;
use std::process::{Command, Stdio};

fn volumes(cluster: &Cluster) -> serde_json::Value {
    serde_json::from_str(&ok(&mut cluster.dog(&["vdi", "list", "--json"]))).unwrap()
}

#[test]
fn volume_lifecycle_create_list_resize_delete() {
    let cluster = Cluster::start();
    ok(&mut cluster.dog(&["vdi", "create", "-c", "1", "alpha", "512M"]));
    ok(&mut cluster.dog(&["vdi", "create", "beta", "10G"]));
    let list = volumes(&cluster);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "alpha");
    assert_eq!(list[0]["size"], 512u64 << 20);
    assert_eq!(list[1]["size"], 10u64 << 30);
    assert_eq!(list[0]["used"], 0);

    let table = ok(&mut cluster.dog(&["vdi", "list"]));
    assert!(
        table.contains("alpha") && table.contains("512 MiB") && table.contains("10 GiB"),
        "{table}"
    );

    qemu_io(
        &cluster.nbd_uri("alpha"),
        &["write -P 0x42 500M 8M", "flush"],
    );
    assert_eq!(volumes(&cluster)[0]["used"], 8u64 << 20);
    ok(&mut cluster.dog(&["vdi", "resize", "alpha", "1G"]));
    assert_eq!(volumes(&cluster)[0]["size"], 1u64 << 30);
    qemu_io(
        &cluster.nbd_uri("alpha"),
        &["read -P 0x42 500M 8M", "write -P 0x43 1000M 1M"],
    );
    ok(&mut cluster.dog(&["vdi", "resize", "alpha", "502M"]));
    assert_eq!(
        volumes(&cluster)[0]["used"],
        4u64 << 20,
        "shrinking frees objects past the end"
    );
    qemu_io(&cluster.nbd_uri("alpha"), &["read -P 0x42 500M 2M"]);

    ok(&mut cluster.dog(&["vdi", "delete", "alpha"]));
    ok(&mut cluster.dog(&["vdi", "delete", "beta"]));
    assert_eq!(volumes(&cluster), serde_json::json!([]));
    // Freeing waits until the cluster has settled (here: it has just started).
    sheepdog_e2e::wait_for(
        "deleting every volume to leave no objects",
        std::time::Duration::from_secs(10),
        || (cluster.node_usage().1 == 0).then_some(()),
    );
}

#[test]
fn read_and_write_move_bytes_through_stdin_and_stdout() {
    let cluster = Cluster::start();
    cluster.create("io", "16M");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut child = cluster
        .dog(&["vdi", "write", "io", "4095"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    let out = run(&mut cluster.dog(&["vdi", "read", "io", "4095", &data.len().to_string()]));
    assert!(out.status.success());
    assert!(out.stdout == data, "read back different bytes");
    let head = run(&mut cluster.dog(&["vdi", "read", "io", "0", "4095"]));
    assert_eq!(head.stdout, vec![0u8; 4095]);
    let mut short = cluster
        .dog(&["vdi", "write", "io", "0", "100"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    short
        .stdin
        .take()
        .unwrap()
        .write_all(b"only ten b")
        .unwrap();
    let out = short.wait_with_output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("short"));
}

fn fails_with(cmd: &mut Command, words: &[&str]) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} should fail");
    for word in words {
        assert!(
            stderr.contains(word),
            "{cmd:?}: error {stderr:?} should mention {word:?}"
        );
    }
}

#[test]
fn errors_say_what_went_wrong_and_what_to_do() {
    let cluster = Cluster::start();
    cluster.create("dup", "1M");
    fails_with(
        &mut cluster.dog(&["vdi", "create", "dup", "1M"]),
        &["already exists"],
    );
    fails_with(&mut cluster.dog(&["vdi", "create", "x", "ten"]), &["512M"]);
    fails_with(&mut cluster.dog(&["vdi", "create", "a@b", "1M"]), &["'@'"]);
    fails_with(
        &mut cluster.dog(&["vdi", "create", "huge", "17T"]),
        &["larger"],
    );
    fails_with(
        &mut cluster.dog(&["vdi", "delete", "ghost"]),
        &["does not exist", "dog vdi list"],
    );
    fails_with(
        &mut cluster.dog(&["vdi", "read", "dup", "1M", "1"]),
        &["outside"],
    );
    let mut unreachable = Command::new(bin_dir().join("dog"));
    unreachable.args(["vdi", "list", "-p", &free_port().to_string()]);
    fails_with(&mut unreachable, &["cannot reach sheep", "dog cluster up"]);
}

#[test]
fn cluster_info_and_node_list_describe_the_cluster() {
    let cluster = Cluster::start();
    let info: serde_json::Value =
        serde_json::from_str(&ok(&mut cluster.dog(&["cluster", "info", "--json"]))).unwrap();
    assert_eq!(info["status"], "running");
    assert_eq!(info["epoch"], 1);
    assert_eq!(info["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(
        info["nodes"][0]["nbdAddr"],
        format!("127.0.0.1:{}", cluster.nbd_port)
    );
    let table = ok(&mut cluster.dog(&["node", "list"]));
    assert!(
        table.contains(&format!("127.0.0.1:{}", cluster.peer_port)),
        "{table}"
    );
}

#[test]
fn cluster_up_on_an_existing_dir_restarts_with_the_data() {
    let mut cluster = Cluster::start();
    cluster.create("kept", "8M");
    qemu_io(&cluster.nbd_uri("kept"), &["write -P 0x3c 0 1M"]);
    ok(Command::new(bin_dir().join("dog")).args([
        "cluster",
        "down",
        "--dir",
        cluster.dir.path().to_str().unwrap(),
    ]));
    cluster.up();
    qemu_io(&cluster.nbd_uri("kept"), &["read -P 0x3c 0 1M"]);
    let again = ok(Command::new(bin_dir().join("dog")).args([
        "cluster",
        "up",
        "--dir",
        cluster.dir.path().to_str().unwrap(),
    ]));
    assert!(
        again.contains(&format!("pid={}", cluster.pids[0])),
        "a running node is left alone: {again}"
    );
}
