//! A one-node cluster exercised by NBD clients nobody here wrote: qemu-io, qemu-img, nbdinfo,
//! nbdcopy.

use sheepdog_e2e::{Cluster, ok, qemu_io, qemu_io_fails, require, run};
use std::process::Command;

#[test]
fn qemu_io_patterns_survive_unaligned_and_cross_object_io() {
    let cluster = Cluster::start();
    cluster.create("vm1", "64M");
    let uri = cluster.nbd_uri("vm1");
    let four_mib = 4 << 20;
    let across = format!("{}", four_mib - 3000);
    qemu_io(
        &uri,
        &[
            "write -P 0x11 0 4096",
            "write -P 0x22 5000 1234",
            &format!("write -P 0x33 {across} 10000"),
            "write -P 0x44 67104768 1024",
        ],
    );
    qemu_io(
        &uri,
        &[
            "read -P 0x11 0 4096",
            "read -P 0 4096 904",
            "read -P 0x22 5000 1234",
            "read -P 0 6234 100",
            &format!("read -P 0x33 {across} 10000"),
            "read -P 0 20000000 65536",
            "read -P 0x44 67104768 1024",
        ],
    );
}

#[test]
fn holes_read_as_zeros_and_discard_frees_objects() {
    let cluster = Cluster::start();
    cluster.create("sparse", "1G");
    let uri = cluster.nbd_uri("sparse");
    qemu_io(&uri, &["read -P 0 0 1M", "read -P 0 500M 4M"]);
    qemu_io(&uri, &["write -P 0x5a 8M 8M", "flush"]);
    let (used_full, objects_full) = cluster.node_usage();
    assert!(
        used_full >= 8 << 20,
        "8 MiB written but {used_full} bytes used"
    );
    // discard = NBD_CMD_TRIM; write -z -u = NBD_CMD_WRITE_ZEROES allowed to punch holes.
    qemu_io(
        &uri,
        &["discard 8M 4M", "write -z -u 12M 4M", "read -P 0 8M 8M"],
    );
    let (used_after, objects_after) = cluster.node_usage();
    assert_eq!(
        objects_after,
        objects_full - 2,
        "two whole objects discarded/zeroed"
    );
    assert!(
        used_after < used_full - (7 << 20),
        "{used_after} bytes still used"
    );
    // write -z without -u sets NBD_CMD_FLAG_NO_HOLE: zeros must be written, not punched.
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 32M 1M",
            "write -z 32M 1M",
            "read -P 0 32M 1M",
        ],
    );
}

#[test]
fn unix_socket_serves_the_same_volume() {
    let cluster = Cluster::start();
    cluster.create("vm2", "16M");
    qemu_io(&cluster.nbd_uri("vm2"), &["write -P 0x7e 1M 64k"]);
    qemu_io(&cluster.nbd_unix_uri("vm2"), &["read -P 0x7e 1M 64k"]);
}

#[test]
fn qemu_img_convert_of_a_qcow2_image_compares_equal() {
    require("qemu-img", "qemu-utils");
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(&image)
        .arg("48M"));
    qemu_io_qcow2(
        &image,
        &[
            "write -P 0xc4 0 3M",
            "write -P 0x1f 7M 1M",
            "write -P 0x99 40M 5000",
        ],
    );
    cluster.create("img", "48M");
    let uri = cluster.nbd_uri("img");
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(&image)
        .arg(&uri));
    ok(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&image)
        .arg(&uri));
    qemu_io(&uri, &["write -P 0x01 20M 512"]);
    let differs = run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&image)
        .arg(&uri));
    assert_eq!(
        differs.status.code(),
        Some(1),
        "compare must notice a changed sector"
    );
}

fn qemu_io_qcow2(image: &std::path::Path, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    ok(cmd.arg(image));
}

#[test]
fn nbdinfo_reports_size_and_truthful_flags() {
    require("nbdinfo", "libnbd-bin");
    let cluster = Cluster::start();
    cluster.create("info", "100M");
    let out = ok(Command::new("nbdinfo").args(["--json", &cluster.nbd_uri("info")]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 100 << 20);
    for (flag, want) in [
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_multi_conn", true),
        ("is_read_only", false),
        ("can_cache", false),
    ] {
        assert_eq!(export[flag], want, "{flag} in {export}");
    }
    assert_eq!(export["block_size_preferred"], 4096);
    let listed = ok(Command::new("nbdinfo").args([
        "--list",
        "--json",
        &format!("nbd://127.0.0.1:{}", cluster.nbd_port),
    ]));
    assert!(
        listed.contains("\"info\""),
        "NBD_OPT_LIST names the volume: {listed}"
    );
}

#[test]
fn nbdcopy_round_trips_a_file() {
    require("nbdcopy", "libnbd-bin");
    let cluster = Cluster::start();
    cluster.create("copy", "9M");
    let work = tempfile::tempdir().unwrap();
    let (src, back) = (work.path().join("src.raw"), work.path().join("back.raw"));
    let data: Vec<u8> = (0..9u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    ok(Command::new("nbdcopy")
        .arg(&src)
        .arg(cluster.nbd_uri("copy")));
    ok(Command::new("nbdcopy")
        .arg(cluster.nbd_uri("copy"))
        .arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "nbdcopy read back different bytes"
    );
}

#[test]
fn unknown_exports_are_refused() {
    let cluster = Cluster::start();
    let text = qemu_io_fails(&cluster.nbd_uri("nope"), &["read 0 512"]);
    assert!(text.contains("nope"), "the error names the export: {text}");
}
