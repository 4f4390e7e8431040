//! Single-writer attach: a volume opened for writing over NBD is attached to that client, and
//! a second writer anywhere in the cluster is refused with advice, unless every writer opens it
//! as `NAME/shared` (a live migration). `NAME/readonly` reads beside a writer. A node killed
//! with a client attached gives the volume back when it restarts, or after the lease's time
//! limit. Real sheep processes on loopback, a raw NBD client (it can send writes a read-only
//! export refuses, which libnbd would not).

use sheepdog_e2e::raw_nbd::Raw;
use sheepdog_e2e::{Cluster, ok};
use std::time::{Duration, Instant};

const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_ERR_POLICY: u32 = (1 << 31) | 2;
const CMD_WRITE: u16 = 1;
const EPERM: u32 = 1;
/// The attachment lease's time limit (`gateway/attach.rs`).
const TTL: Duration = Duration::from_secs(15);

/// Asks for `export` with NBD_OPT_GO: the session, or the server's refusal (kind, message).
fn go(port: u16, export: &str) -> Result<Raw, (u32, String)> {
    let mut raw = Raw::connect(port);
    raw.send_option(OPT_GO, &Raw::go_data(export));
    loop {
        let (_, kind, data) = raw.option_reply();
        match kind {
            REP_ACK => return Ok(raw),
            k if k & (1 << 31) != 0 => return Err((k, String::from_utf8_lossy(&data).into())),
            _ => {}
        }
    }
}

fn refused(port: u16, export: &str, why: &str) -> String {
    match go(port, export) {
        Ok(_) => panic!("{export} on port {port} was granted: {why}"),
        Err((kind, message)) => {
            assert_eq!(kind, REP_ERR_POLICY, "{export}: {message}");
            message
        }
    }
}

/// Writes 4 KiB at `offset` and returns the NBD error (0: written).
fn write(raw: &mut Raw, handle: u64, offset: u64) -> u32 {
    raw.request(0, CMD_WRITE, handle, offset, 4096, &[0x5a; 4096]);
    let (got, error) = raw.reply();
    assert_eq!(got, handle);
    error
}

#[test]
fn a_volume_has_one_writer_unless_every_writer_opens_it_shared() {
    let mut cluster = Cluster::start_with(3, "3s");
    ok(&mut cluster.dog(&["vdi", "create", "vm1", "64M"]));
    let base = cluster.nbd_port;
    let port = |node: u16| base + node;

    let mut first = go(port(0), "vm1").expect("the first writer attaches");
    assert_eq!(write(&mut first, 1, 0), 0);
    let message = refused(
        port(1),
        "vm1",
        "a second exclusive writer, on another gateway",
    );
    assert!(
        message.contains("attached for writing") && message.contains("vm1/shared"),
        "the refusal says why and what to do: {message}"
    );
    for node in [0, 1] {
        refused(
            port(node),
            "vm1/shared",
            "a shared writer beside an exclusive one",
        );
    }
    // The same client (address) through the same gateway is one client: a multi-connection
    // client such as nbdcopy opens several connections.
    let mut second_connection = go(port(0), "vm1").expect("the client's second connection");
    assert_eq!(write(&mut second_connection, 8, 8192), 0);
    drop(second_connection);
    refused(
        port(1),
        "vm1",
        "the first connection still holds the attachment",
    );
    let mut reader = go(port(1), "vm1/readonly").expect("a reader opens beside the writer");
    assert_eq!(reader.read_ok(2, 0, 4096), vec![0x5a; 4096]);
    assert_eq!(
        write(&mut reader, 3, 0),
        EPERM,
        "a read-only export refuses writes"
    );
    let mut second_reader = go(port(2), "vm1/readonly").unwrap();
    assert_eq!(second_reader.read_ok(4, 0, 4096), vec![0x5a; 4096]);
    drop(first);

    // Once the writer left, writers that all open it shared may write at once.
    let mut a = go(port(1), "vm1/shared").expect("the volume is free again");
    let mut b = go(port(2), "vm1/shared").expect("a second shared writer");
    assert_eq!(write(&mut a, 5, 0), 0);
    assert_eq!(write(&mut b, 6, 4096), 0);
    refused(port(0), "vm1", "an exclusive writer beside shared ones");
    drop((a, b));

    // A node killed with a writer attached: the lease outlives it, and its restart frees it.
    let _held = go(port(2), "vm1").expect("an exclusive writer on node 2");
    cluster.kill9_node(2);
    let killed = Instant::now();
    refused(
        port(0),
        "vm1",
        "the dead node's client still holds the lease",
    );
    cluster.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut again = loop {
        match go(port(2), "vm1") {
            Ok(raw) => break raw,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(refusal) => panic!("node 2 restarted but vm1 stays attached: {refusal:?}"),
        }
    };
    assert!(
        killed.elapsed() < TTL,
        "the restarted node freed its previous run's attachment before the lease expired ({:?})",
        killed.elapsed()
    );
    assert_eq!(write(&mut again, 7, 0), 0);
}

#[test]
fn a_dead_gateway_s_attachment_expires() {
    let mut cluster = Cluster::start_with(3, "3s");
    ok(&mut cluster.dog(&["vdi", "create", "vm1", "64M"]));
    let _held = go(cluster.nbd_port + 2, "vm1").expect("attached on node 2");
    cluster.kill9_node(2);
    let killed = Instant::now();
    let deadline = killed + TTL + Duration::from_secs(10);
    let mut raw = loop {
        match go(cluster.nbd_port, "vm1") {
            Ok(raw) => break raw,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(refusal) => panic!("vm1 stayed attached by a dead node: {refusal:?}"),
        }
    };
    assert!(
        killed.elapsed() >= TTL - Duration::from_secs(6),
        "the lease of a live-looking holder was not broken early ({:?})",
        killed.elapsed()
    );
    assert_eq!(write(&mut raw, 1, 0), 0);
}

/// Two processes on one host, both on node 0's unix socket, are two clients: the second
/// writer is refused while the first is attached, and attaches once the first has quit.
#[test]
fn two_processes_on_the_unix_socket_are_two_clients() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let cluster = Cluster::start_with(3, "3s");
    ok(&mut cluster.dog(&["vdi", "create", "vm1", "64M"]));
    let uri = cluster.nbd_unix_uri("vm1");
    let mut first = Command::new("qemu-io")
        .args(["-f", "raw", &uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut commands = first.stdin.take().unwrap();
    writeln!(commands, "write -P 1 0 4k").unwrap();
    // Its output, line by line, read on a thread: a write that never ends fails the test.
    let output = BufReader::new(first.stdout.take().unwrap());
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in output.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    loop {
        let line = printed
            .recv_timeout(Duration::from_secs(30))
            .expect("the first qemu-io wrote nothing within 30 s, or ended");
        if line.contains("wrote") {
            break;
        }
    }
    let refusal = sheepdog_e2e::qemu_io_fails(&uri, &["write -P 2 0 4k"]);
    assert!(
        refusal.contains("attached for writing"),
        "a second process on the same host was let write: {refusal}"
    );
    writeln!(commands, "quit").unwrap();
    drop(commands);
    assert!(first.wait().unwrap().success());
    sheepdog_e2e::qemu_io(&uri, &["write -P 2 0 4k", "read -P 2 0 4k"]);
}
