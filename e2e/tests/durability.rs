//! Acknowledged-and-flushed writes survive `kill -9` of sheep; corruption is detected, not served.

use sheepdog_e2e::{Cluster, qemu_io, qemu_io_fails};

#[test]
fn flushed_writes_survive_kill_9_and_restart() {
    let mut cluster = Cluster::start();
    cluster.create("durable", "32M");
    let uri = cluster.nbd_uri("durable");
    qemu_io(
        &uri,
        &["write -P 0xd1 0 5M", "write -P 0xd2 9M 1000", "flush"],
    );
    // FUA without a flush: qemu-io's -f sets NBD_CMD_FLAG_FUA on the write.
    qemu_io(&uri, &["write -f -P 0xd3 20M 64k"]);
    cluster.kill9();
    cluster.up();
    qemu_io(
        &uri,
        &[
            "read -P 0xd1 0 5M",
            "read -P 0xd2 9M 1000",
            "read -P 0xd3 20M 64k",
            "read -P 0 12M 1M",
        ],
    );
}

#[test]
fn unflushed_writes_at_a_kill_leave_no_checksum_errors() {
    let mut cluster = Cluster::start();
    cluster.create("torn", "16M");
    let uri = cluster.nbd_uri("torn");
    qemu_io(&uri, &["write -P 0x01 0 16M", "flush"]);
    // Many small writes, never flushed, then a crash: each block must read as old or new data.
    let writes: Vec<String> = (0..200)
        .map(|i| format!("write -P 0x02 {} 512", i * 81920 + 1536))
        .collect();
    let commands: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&uri, &commands);
    cluster.kill9();
    cluster.up();
    let out = qemu_io(&uri, &["read 0 16M"]);
    assert!(out.contains("read 16777216/16777216"), "{out}");
}

#[test]
fn a_corrupted_object_is_an_io_error_not_bad_data() {
    let mut cluster = Cluster::start();
    cluster.create("rot", "8M");
    let uri = cluster.nbd_uri("rot");
    qemu_io(&uri, &["write -P 0xaa 0 8M", "flush"]);
    cluster.kill9();
    let objects = cluster.node_dir().join("obj");
    let victim = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('8'))
        .expect("a data object");
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 4096 * 3 + 5;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    cluster.up();
    let text = qemu_io_fails(&uri, &["read -P 0xaa 0 8M"]);
    assert!(
        text.contains("Input/output error"),
        "qemu-io sees EIO: {text}"
    );
    let log = std::fs::read_to_string(cluster.node_dir().join("sheep.log")).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&name) && log.contains("checksum"),
        "the log names the corrupt object {name}"
    );
}
