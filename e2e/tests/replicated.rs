//! A replicated cluster of real sheep processes on loopback: any node is a gateway, every
//! object has `copies` replicas, nodes die and come back, and no acknowledged write is lost.

use sheepdog_e2e::{
    Cluster, finish_workload, ok, qemu_io, qemu_io_fails, start_workload, wait_for, workload,
    workload_result,
};
use std::process::Command;
use std::time::{Duration, Instant};

const FAILURE_TIMEOUT: &str = "3s";

fn members(cluster: &Cluster, via: u16) -> usize {
    cluster.info(via)["nodes"].as_array().unwrap().len()
}

/// Waits until node `via` sees `n` members and every replica is in place: the live nodes
/// together hold exactly `copies` copies of `objects` objects (recovered, stale copies gone).
fn wait_for_redundancy(cluster: &Cluster, via: u16, n: usize, objects: u64, copies: u64) {
    wait_for("full redundancy", Duration::from_secs(40), || {
        cluster.redundant(via, n, objects, copies).then_some(())
    });
}

#[test]
fn every_node_is_a_gateway_for_every_volume() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog_on(1, &["vdi", "create", "shared", "64M"]));
    qemu_io(
        &cluster.nbd_uri_on(0, "shared"),
        &["write -P 0x61 0 12M", "flush"],
    );
    qemu_io(
        &cluster.nbd_uri_on(2, "shared"),
        &["read -P 0x61 0 12M", "write -P 0x62 4M 1M"],
    );
    qemu_io(
        &cluster.nbd_uri_on(1, "shared"),
        &["read -P 0x62 4M 1M", "read -P 0 12M 1M"],
    );
    // 3 data objects + the inode, 3 copies each, one per node.
    wait_for_redundancy(&cluster, 2, 3, 4, 3);
    let list = ok(&mut cluster.dog_on(2, &["vdi", "list", "--json"]));
    assert!(list.contains("\"shared\""), "{list}");
}

#[test]
fn a_node_killed_under_writes_stalls_briefly_and_loses_nothing() {
    let mut cluster = Cluster::start_with(4, FAILURE_TIMEOUT);
    cluster.create("busy", "16M");
    let state = cluster.dir.path().join("workload.json");
    let uri = cluster.nbd_uri_on(0, "busy");
    let writer = start_workload(&uri, &state, 14, 4096);
    std::thread::sleep(Duration::from_secs(4));
    cluster.kill9_node(3);
    let run = finish_workload(writer);
    eprintln!("workload through a node kill: {run}");
    assert_eq!(run["errors"], 0, "no client error: {run}");
    assert_eq!(run["stale"], 0, "no stale read: {run}");
    let stall = run["max_stall_s"].as_f64().unwrap();
    assert!(
        stall <= 3.0 + 5.0,
        "I/O stalled {stall}s, more than failure detection + 5 s"
    );
    let check = workload_result(&mut workload(&[
        "verify",
        &cluster.nbd_uri_on(1, "busy"),
        state.to_str().unwrap(),
    ]));
    eprintln!("verification: {check}");
    assert_eq!(check["lost"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    // 4 data objects + inode, back to 3 copies on the 3 survivors.
    wait_for_redundancy(&cluster, 0, 3, 5, 3);
}

#[test]
fn writes_are_refused_below_min_copies_and_resume_when_nodes_return() {
    let mut cluster = Cluster::start_with(4, FAILURE_TIMEOUT);
    cluster.create("degraded", "8M");
    let uri = cluster.nbd_uri_on(0, "degraded");
    qemu_io(&uri, &["write -P 0x01 0 8M", "flush"]);
    cluster.kill9_node(3);
    wait_for_redundancy(&cluster, 0, 3, 3, 3);
    qemu_io(&uri, &["write -P 0x02 0 4M", "flush"]);
    cluster.kill9_node(2);
    wait_for("the map to drop node 2", Duration::from_secs(20), || {
        (members(&cluster, 0) == 2).then_some(())
    });
    qemu_io(&uri, &["write -P 0x03 0 2M", "flush"]);
    cluster.kill9_node(1);
    wait_for("the map to drop node 1", Duration::from_secs(20), || {
        (members(&cluster, 0) == 1).then_some(())
    });
    let started = Instant::now();
    let refused = qemu_io_fails(&uri, &["write -P 0x04 0 4k"]);
    assert!(refused.contains("Input/output error"), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after a timeout"
    );
    let log = std::fs::read_to_string(cluster.dir.path().join("node0/sheep.log")).unwrap();
    assert!(
        log.contains("fewer live replicas than minCopies"),
        "the log says why"
    );
    qemu_io(
        &uri,
        &[
            "read -P 0x03 0 2M",
            "read -P 0x02 2M 2M",
            "read -P 0x01 4M 4M",
        ],
    );
    cluster.up();
    wait_for("nodes to rejoin", Duration::from_secs(20), || {
        (members(&cluster, 0) == 4).then_some(())
    });
    qemu_io(
        &uri,
        &[
            "write -P 0x05 0 4k",
            "read -P 0x05 0 4k",
            "read -P 0x03 4k 2044k",
        ],
    );
    wait_for_redundancy(&cluster, 0, 4, 3, 3);
    for node in 1..4 {
        qemu_io(
            &cluster.nbd_uri_on(node, "degraded"),
            &[
                "read -P 0x05 0 4k",
                "read -P 0x03 4k 2044k",
                "read -P 0x02 2M 2M",
                "read -P 0x01 4M 4M",
            ],
        );
    }
    ok(&mut cluster.dog(&["cluster", "check"]));
}

#[test]
fn a_whole_cluster_killed_at_once_comes_back_with_every_write() {
    let mut cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("all", "16M");
    let state = cluster.dir.path().join("workload.json");
    let run = workload_result(&mut workload(&[
        "write",
        &cluster.nbd_uri_on(1, "all"),
        state.to_str().unwrap(),
        "4",
        "4096",
    ]));
    assert_eq!(run["errors"], 0, "{run}");
    for node in 0..3 {
        cluster.kill9_node(node);
    }
    let coordinator: u32 =
        std::fs::read_to_string(cluster.dir.path().join("coordinator/sheep.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    ok(std::process::Command::new("kill").args(["-9", &coordinator.to_string()]));
    sheepdog_e2e::wait_gone(coordinator);
    cluster.up();
    let check = workload_result(&mut workload(&[
        "verify",
        &cluster.nbd_uri_on(2, "all"),
        state.to_str().unwrap(),
    ]));
    assert_eq!(check["lost"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    assert_eq!(members(&cluster, 0), 3);
}

#[test]
fn a_new_node_takes_about_its_share_and_stale_copies_go() {
    let mut cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "--object-size", "1M", "spread", "64M"]));
    qemu_io(
        &cluster.nbd_uri_on(0, "spread"),
        &["write -P 0x5e 0 48M", "flush"],
    );
    let objects = 48 + 1;
    wait_for_redundancy(&cluster, 0, 3, objects, 3);
    let (_, nbd) = cluster.add_node("3");
    wait_for_redundancy(&cluster, 0, 4, objects, 3);
    let per_node = cluster
        .objects_per_node(0)
        .expect("every node reports its objects");
    let new = per_node.iter().find(|(id, _)| id == "3").unwrap().1 as f64;
    let share = new / (objects * 3) as f64;
    eprintln!(
        "the new node holds {new} of {} replicas ({:.1}%); per node {per_node:?}",
        objects * 3,
        share * 100.0
    );
    assert!(
        (0.15..=0.35).contains(&share),
        "a fourth node should take about 1/4, took {share:.3}"
    );
    qemu_io(
        &format!("nbd://127.0.0.1:{nbd}/spread"),
        &["read -P 0x5e 0 48M", "read -P 0 48M 16M"],
    );
}

#[test]
fn check_finds_a_corrupt_copy_reads_avoid_it_and_repair_fixes_it() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("scrub", "8M");
    qemu_io(
        &cluster.nbd_uri_on(0, "scrub"),
        &["write -P 0x7a 0 8M", "flush"],
    );
    ok(&mut cluster.dog(&["cluster", "check"]));
    let objects = cluster.dir.path().join("node1/obj");
    let victim = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("00"))
        .expect("a data object on node 1");
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 4096 * 7 + 11;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    // Node 1 reads its own copy first; the bad block sends it to another replica.
    qemu_io(&cluster.nbd_uri_on(1, "scrub"), &["read -P 0x7a 0 8M"]);
    let found = sheepdog_e2e::run(&mut cluster.dog(&["cluster", "check"]));
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(
        !found.status.success(),
        "check must fail on a corrupt copy: {text}"
    );
    assert!(
        text.contains("corrupt") && text.contains("node 1"),
        "{text}"
    );
    let repaired = ok(&mut cluster.dog(&["cluster", "check", "--repair"]));
    assert!(repaired.contains("repaired 1 copies"), "{repaired}");
    ok(&mut cluster.dog(&["cluster", "check"]));
    qemu_io(&cluster.nbd_uri_on(1, "scrub"), &["read -P 0x7a 0 8M"]);
}

#[test]
fn every_node_serves_prometheus_metrics_on_its_grpc_port() {
    use std::io::{Read, Write};
    let cluster = Cluster::start_with(2, FAILURE_TIMEOUT);
    cluster.create("measured", "8M");
    qemu_io(
        &cluster.nbd_uri_on(1, "measured"),
        &["write -P 1 0 64k", "read -P 1 0 64k"],
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", cluster.peer_port + 1)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: sheep\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for metric in [
        "sheepdog_nbd_requests_total{op=\"write\"} 1",
        "sheepdog_nbd_bytes_total{op=\"read\"} 65536",
        "sheepdog_nbd_request_duration_seconds_bucket",
        "sheepdog_cluster_nodes 2",
        "sheepdog_lease_valid 1",
        "sheepdog_store_objects 2",
        "sheepdog_recovered_epoch",
    ] {
        assert!(text.contains(metric), "missing {metric} in:\n{text}");
    }
}

#[test]
fn a_workload_through_a_kill_a_restart_and_a_join_loses_nothing() {
    let mut cluster = Cluster::start_with(5, FAILURE_TIMEOUT);
    cluster.create("journey", "32M");
    let state = cluster.dir.path().join("journey.json");
    let uri = cluster.nbd_uri_on(0, "journey");
    let writer = start_workload(&uri, &state, 24, 8192);
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill9_node(4);
    wait_for("the map to drop node 4", Duration::from_secs(20), || {
        (members(&cluster, 0) == 4).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    cluster.up();
    wait_for("node 4 to rejoin", Duration::from_secs(20), || {
        (members(&cluster, 0) == 5).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    cluster.add_node("5");
    wait_for("node 5 to join", Duration::from_secs(20), || {
        (members(&cluster, 0) == 6).then_some(())
    });
    let run = finish_workload(writer);
    eprintln!("workload through kill, restart and join: {run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(run["stale"], 0, "{run}");
    assert!(run["max_stall_s"].as_f64().unwrap() <= 8.0, "{run}");
    for node in [1, 4] {
        let check = workload_result(&mut workload(&[
            "verify",
            &cluster.nbd_uri_on(node, "journey"),
            state.to_str().unwrap(),
        ]));
        eprintln!("verified through node {node}: {check}");
        assert_eq!(check["lost"], 0, "{check}");
        assert_eq!(check["corrupt"], 0, "{check}");
    }
    wait_for("every replica to agree", Duration::from_secs(30), || {
        sheepdog_e2e::run(&mut cluster.dog(&["cluster", "check"]))
            .status
            .success()
            .then_some(())
    });
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn a_stalled_replica_cannot_make_the_gateway_buffer_without_bound() {
    sheepdog_e2e::require("fio", "fio");
    let cluster = Cluster::start_with(3, "20s");
    cluster.create("slow", "2G");
    let (gateway, stalled) = (cluster.pid(0), cluster.pid(2));
    let before = rss(gateway);
    ok(std::process::Command::new("kill").args(["-STOP", &stalled.to_string()]));
    // A client streaming 8 MiB writes at queue depth 32 while one replica answers nothing.
    let mut fio = std::process::Command::new("fio")
        .args([
            "--name=flood",
            "--ioengine=nbd",
            &format!("--uri={}", cluster.nbd_uri_on(0, "slow")),
        ])
        .args([
            "--rw=write",
            "--bs=8M",
            "--iodepth=32",
            "--size=2G",
            "--runtime=8",
            "--time_based=1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut early, mut late) = (0, 0);
    for i in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss(gateway);
        if i < 15 {
            early = early.max(now)
        } else {
            late = late.max(now)
        }
    }
    let peak = early.max(late);
    ok(std::process::Command::new("kill").args(["-CONT", &stalled.to_string()]));
    let _ = fio.kill();
    let _ = fio.wait();
    eprintln!(
        "gateway RSS {} MiB before; peak {} MiB in the first 3 s of the stall, {} MiB in the next 3 s",
        before >> 20,
        early >> 20,
        late >> 20
    );
    // In flight per connection: at most 128 MiB of client payload, plus the encoded request
    // held for each replica that does not drain it: 3 x 128 MiB, and some slack.
    assert!(
        peak < before + (448 << 20),
        "the gateway grew from {before} to {peak} bytes"
    );
    assert!(
        late < early + (32 << 20),
        "memory kept growing while the replica stalled: {early} then {late}"
    );
}

#[test]
fn concurrent_creates_of_one_name_on_two_nodes_give_one_volume() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    for round in 0..5 {
        let name = format!("race{round}");
        let spawn = |node: u16| {
            cluster
                .dog_on(node, &["vdi", "create", &name, "64M"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(0), spawn(1));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let won = [&a, &b].iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "exactly one create of {name} succeeds");
        let loser = if a.status.success() { &b } else { &a };
        let error = String::from_utf8_lossy(&loser.stderr);
        assert!(
            error.contains("already exists"),
            "the other says why: {error}"
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&ok(&mut cluster.dog_on(2, &["vdi", "list", "--json"]))).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["race0", "race1", "race2", "race3", "race4"]);
    let vids: std::collections::HashSet<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vid"].as_u64().unwrap())
        .collect();
    assert_eq!(vids.len(), 5, "every volume has its own vid");
}

/// The peer port carries gRPC and the replica data channel, told apart by a connection's
/// first bytes. Malformed data-channel frames close that connection and nothing else: the
/// node keeps serving, and the data is intact.
#[test]
fn malformed_frames_on_the_peer_port_close_only_their_connection() {
    use std::io::{Read, Write};
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "v", "16M"]));
    qemu_io(&cluster.nbd_uri_on(0, "v"), &["write -P 0x3c 0 8M"]);
    let port = cluster.peer_port + 1;
    let frame = |op: u8, length: u32| {
        let mut f = b"SHDP".to_vec();
        f.push(op);
        f.extend_from_slice(&[0u8; 43]);
        f.extend_from_slice(&length.to_le_bytes());
        f.extend_from_slice(&[0u8; 4]);
        f
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut garbage = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    let cases: Vec<Vec<u8>> = vec![
        frame(9, 0),                               // unknown op
        frame(2, u32::MAX),                        // a write longer than any message
        [b"SHDP".to_vec(), garbage(300)].concat(), // magic, then noise
        [frame(2, 4096), garbage(100)].concat(),   // a write cut short
        garbage(500),                              // not even the magic: handed to gRPC
    ];
    for case in cases {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let _ = stream.write_all(&case);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    // The node still answers gRPC and replica traffic, and the data is intact.
    let info = cluster.info(1);
    assert_eq!(info["nodes"].as_array().unwrap().len(), 3);
    qemu_io(
        &cluster.nbd_uri_on(1, "v"),
        &["read -P 0x3c 0 8M", "write -P 0x3d 8M 1M"],
    );
    qemu_io(&cluster.nbd_uri_on(2, "v"), &["read -P 0x3d 8M 1M"]);
    ok(&mut cluster.dog(&["cluster", "check"]));
}

/// A raw replica-data-channel write of `data` at offset 0 of `oid` (a 4 MiB, 3-copy object),
/// with FUA, fencing token `fence` and block version `version`.
fn write_frame(epoch: u64, oid: u64, fence: u32, version: u64, data: &[u8]) -> Vec<u8> {
    let mut frame = b"SHDP".to_vec();
    frame.extend_from_slice(&[2, 1, 3, 0]); // write, FUA, 3 copies
    for field in [7u64, epoch, oid, 0, 4 << 20] {
        frame.extend_from_slice(&field.to_le_bytes()); // id, epoch, oid, offset, capacity
    }
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    frame.extend_from_slice(&fence.to_le_bytes());
    frame.extend_from_slice(&version.to_le_bytes());
    frame.extend_from_slice(data);
    frame
}

/// A metadata commit write (an inode write under the metadata lock) carries the lock's
/// fencing token; a node that has seen a newer token refuses it. Sent here as a raw frame
/// with token 1, as a gateway that stalled past its lock's time limit would send its commit
/// long after other gateways took the lock. The node refuses it (status 8, `Fenced`), the
/// inode is untouched, and metadata operations by live holders go on working.
#[test]
fn a_commit_write_with_a_stale_fencing_token_is_refused() {
    use std::io::{Read, Write};
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "v", "16M"]));
    ok(&mut cluster.dog(&["vdi", "resize", "v", "32M"]));
    let list = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let vid = rows.as_array().unwrap()[0]["vid"].as_u64().unwrap();
    let epoch = cluster.info(0)["epoch"].as_u64().unwrap();
    let inode_oid = (1u64 << 63) | (vid << 32);
    // Fencing token 1, a version newer than anything: would wipe the inode's magic.
    let frame = write_frame(epoch, inode_oid, 1, u64::MAX, &[0u8; 8]);
    for node in 0..3 {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", cluster.peer_port + node)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.write_all(&frame).unwrap();
        let mut reply = [0u8; 40];
        stream.read_exact(&mut reply).unwrap();
        let length = u32::from_le_bytes(reply[24..28].try_into().unwrap()) as usize;
        let mut message = vec![0u8; length];
        stream.read_exact(&mut message).unwrap();
        let message = String::from_utf8_lossy(&message);
        assert_eq!(
            reply[4], 8,
            "node {node} answered status {} to a stale commit: {message}",
            reply[4]
        );
        assert!(message.contains("fencing token 1 is older"), "{message}");
    }
    ok(&mut cluster.dog(&["vdi", "resize", "v", "48M"]));
    let list = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.as_array().unwrap()[0]["size"].as_u64(), Some(48 << 20));
    ok(&mut cluster.dog(&["cluster", "check"]));
}

/// Recovery's `FetchObject` hands out a node's copy only at the node's own epoch and only
/// while its lease holds: a new holder listing at a stale epoch, or a node cut off from the
/// coordinator, must not serve copies that writes at the current epoch may have passed.
#[test]
fn fetching_an_object_needs_the_current_epoch_and_a_live_lease() {
    use sheepdog_api::v1::FetchObjectRequest;
    use sheepdog_api::v1::peer_service_client::PeerServiceClient;
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "v", "16M"]));
    let list = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let vid = rows.as_array().unwrap()[0]["vid"].as_u64().unwrap();
    let inode_oid = (1u64 << 63) | (vid << 32);
    let epoch = cluster.info(0)["epoch"].as_u64().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fetch = |node: u16, epoch: u64| {
        runtime.block_on(async {
            let address = format!("http://127.0.0.1:{}", cluster.peer_port + node);
            let mut client = PeerServiceClient::connect(address).await.unwrap();
            let request = FetchObjectRequest {
                oid: inode_oid,
                epoch,
            };
            client.fetch_object(request).await.map(|r| r.into_inner())
        })
    };
    // Every node holds the inode (3 copies): at the current epoch each hands it out.
    for node in 0..3 {
        let copy = fetch(node, epoch).expect("a fetch at the current epoch");
        assert!(copy.found, "node {node} holds the inode");
    }
    for stale in [epoch - 1, epoch + 1] {
        let refused = fetch(0, stale).expect_err("a fetch at another epoch");
        assert!(
            refused.message().contains("epoch"),
            "epoch {stale}: {refused:?}"
        );
    }
    // The coordinator stops answering: leases run out (60% of the failure timeout).
    let pid = std::fs::read_to_string(cluster.dir.path().join("coordinator/sheep.pid")).unwrap();
    let pid = pid.trim();
    ok(Command::new("kill").args(["-STOP", pid]));
    std::thread::sleep(Duration::from_secs(3));
    let refused = fetch(0, epoch);
    ok(Command::new("kill").args(["-CONT", pid]));
    let refused = refused.expect_err("a fetch without a live lease");
    assert!(refused.message().contains("lease"), "{refused:?}");
}

/// Requests carry the gateway's version: a late original (or a retry) of a write, and a late
/// copy-on-write removal, arriving after a newer write, change nothing. Both are sent raw to
/// every replica with an old version after the newer write was flushed; every node still
/// reads the newer data.
#[test]
fn a_late_write_or_removal_with_an_older_version_changes_nothing() {
    use sheepdog_api::v1::RemoveObjectRequest;
    use sheepdog_api::v1::peer_service_client::PeerServiceClient;
    use std::io::{Read, Write};
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    ok(&mut cluster.dog(&["vdi", "create", "v", "16M"]));
    qemu_io(
        &cluster.nbd_uri_on(0, "v"),
        &["write -P 0xa1 0 64k", "flush"],
    );
    let list = ok(&mut cluster.dog(&["vdi", "list", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let vid = rows.as_array().unwrap()[0]["vid"].as_u64().unwrap();
    let data_oid = vid << 32;
    let epoch = cluster.info(0)["epoch"].as_u64().unwrap();
    // A write of object 0's first 64 KiB at version 1: older than the gateway's write.
    let frame = write_frame(epoch, data_oid, 0, 1, &[0xee; 64 << 10]);
    for node in 0..3 {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", cluster.peer_port + node)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.write_all(&frame).unwrap();
        let mut reply = [0u8; 40];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            reply[4], 0,
            "node {node} refused the late write instead of skipping it"
        );
    }
    // A removal of the whole object at version 1.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for node in 0..3 {
        runtime.block_on(async {
            let address = format!("http://127.0.0.1:{}", cluster.peer_port + node);
            let mut client = PeerServiceClient::connect(address).await.unwrap();
            let request = RemoveObjectRequest {
                epoch,
                oid: data_oid,
                version: 1,
                capacity: 4 << 20,
                copies: 3,
                fua: true,
                garbage: false,
                fence: 0,
            };
            client.remove_object(request).await.unwrap();
        });
    }
    for node in 0..3 {
        qemu_io(&cluster.nbd_uri_on(node, "v"), &["read -P 0xa1 0 64k"]);
    }
    ok(&mut cluster.dog(&["cluster", "check"]));
}

/// `dog cluster check --repair` run over and over while a client writes: copies differ for a
/// moment while a write is in flight, and a repair that copied a lagging copy over a newer
/// one (no version check) would lose acknowledged writes. None may be lost.
#[test]
fn repairs_during_writes_lose_nothing() {
    let cluster = Cluster::start_with(3, FAILURE_TIMEOUT);
    cluster.create("busy", "16M");
    let state = cluster.dir.path().join("workload.json");
    let writer = start_workload(&cluster.nbd_uri_on(1, "busy"), &state, 12, 2048);
    let started = Instant::now();
    let mut repairs = 0;
    while started.elapsed() < Duration::from_secs(11) {
        // Unhealthy for a moment is fine (writes in flight); the repair must stay correct.
        let _ = sheepdog_e2e::run(&mut cluster.dog(&["cluster", "check", "--repair"]));
        repairs += 1;
    }
    let run = finish_workload(writer);
    eprintln!("{repairs} repairs during {run}");
    assert_eq!(run["errors"], 0, "no client error: {run}");
    assert_eq!(run["stale"], 0, "no stale read: {run}");
    assert!(repairs >= 3, "only {repairs} repairs ran");
    let check = workload_result(&mut workload(&[
        "verify",
        &cluster.nbd_uri_on(2, "busy"),
        state.to_str().unwrap(),
    ]));
    assert_eq!(check["lost"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    ok(&mut cluster.dog(&["cluster", "check"]));
}
