//! Bad input at the NBD protocol level gets the error the spec says, loses nothing, and never
//! takes the server down.

use sheepdog_e2e::raw_nbd::*;
use sheepdog_e2e::{Cluster, qemu_io};

fn cluster() -> Cluster {
    let cluster = Cluster::start();
    cluster.create("vol", "8M");
    qemu_io(&cluster.nbd_uri("vol"), &["write -P 0x6b 0 8M", "flush"]);
    cluster
}

/// The server still serves and the data is intact.
fn still_serving(cluster: &Cluster) {
    qemu_io(&cluster.nbd_uri("vol"), &["read -P 0x6b 0 8M"]);
}

#[test]
fn out_of_range_requests_get_spec_errors_and_the_connection_goes_on() {
    let cluster = cluster();
    let (mut raw, size) = Raw::go(cluster.nbd_port, "vol");
    assert_eq!(size, 8 << 20);
    raw.request(0, CMD_READ, 1, size - 100, 200, &[]);
    assert_eq!(raw.reply(), (1, EINVAL), "read past the end");
    raw.request(0, CMD_WRITE, 2, size - 100, 200, &[0xff; 200]);
    assert_eq!(raw.reply(), (2, ENOSPC), "write past the end");
    raw.request(0, CMD_TRIM, 3, size, 1, &[]);
    assert_eq!(raw.reply(), (3, EINVAL), "trim past the end");
    raw.request(0, CMD_READ, 4, u64::MAX - 10, 4096, &[]);
    assert_eq!(raw.reply(), (4, EINVAL), "offset overflow");
    assert_eq!(raw.read_ok(5, 0, 4096), vec![0x6b; 4096]);
    drop(raw);
    still_serving(&cluster);
}

#[test]
fn oversized_unknown_and_badly_flagged_requests_are_refused() {
    let cluster = cluster();
    let (mut raw, _) = Raw::go(cluster.nbd_port, "vol");
    raw.request(0, CMD_READ, 1, 0, 64 << 20, &[]);
    assert_eq!(raw.reply(), (1, EINVAL), "read over 32 MiB");
    let big = vec![0xee; (33 << 20) as usize];
    raw.request(0, CMD_WRITE, 2, 0, big.len() as u32, &big);
    assert_eq!(
        raw.reply(),
        (2, EINVAL),
        "write over 32 MiB, payload discarded"
    );
    raw.request(0, 99, 3, 0, 0, &[]);
    assert_eq!(raw.reply(), (3, EINVAL), "unknown command");
    raw.request(1 << 7, CMD_READ, 4, 0, 512, &[]);
    assert_eq!(raw.reply(), (4, EINVAL), "flag not valid for READ");
    assert_eq!(raw.read_ok(5, 4096, 512), vec![0x6b; 512]);
    raw.request(0, CMD_DISC, 6, 0, 0, &[]);
    assert!(raw.closed(), "NBD_CMD_DISC closes the connection");
    still_serving(&cluster);
}

#[test]
fn a_bad_request_magic_ends_only_that_connection() {
    let cluster = cluster();
    let (mut raw, _) = Raw::go(cluster.nbd_port, "vol");
    use std::io::Write;
    raw.stream.write_all(&[0xde; 28]).unwrap();
    assert!(raw.closed());
    let (mut half, _) = Raw::go(cluster.nbd_port, "vol");
    half.stream.write_all(&[0x25, 0x60]).unwrap();
    drop(half);
    still_serving(&cluster);
}

#[test]
fn option_haggling_errors_follow_the_spec() {
    let cluster = cluster();
    let mut raw = Raw::connect(cluster.nbd_port);
    raw.send_option(42, b"whatever");
    assert_eq!(raw.option_reply().1, REP_ERR_UNSUP, "unknown option");
    raw.send_option(OPT_STARTTLS, &[]);
    assert_eq!(raw.option_reply().1, REP_ERR_POLICY, "no TLS on this port");
    raw.send_option(OPT_LIST, b"x");
    assert_eq!(raw.option_reply().1, REP_ERR_INVALID, "LIST takes no data");
    raw.send_option(OPT_GO, &[0, 0, 0, 50, b'v']);
    assert_eq!(raw.option_reply().1, REP_ERR_INVALID, "truncated GO data");
    raw.send_option(OPT_GO, &Raw::go_data("missing"));
    let (_, kind, msg) = raw.option_reply();
    assert_eq!(kind, REP_ERR_UNKNOWN, "unknown export");
    assert!(String::from_utf8_lossy(&msg).contains("missing"));
    raw.send_option(OPT_ABORT, &[]);
    assert_eq!(raw.option_reply().1, REP_ACK);

    let mut huge = Raw::connect(cluster.nbd_port);
    huge.send_option_claiming(OPT_GO, u32::MAX, &[]);
    assert!(
        huge.closed(),
        "an option claiming 4 GiB of data ends the session"
    );
    let mut flags = Raw::connect_with_flags(cluster.nbd_port, 0x80);
    assert!(flags.closed(), "unknown client flags end the session");
    let mut name = Raw::connect(cluster.nbd_port);
    name.send_option(OPT_EXPORT_NAME, b"missing");
    assert!(
        name.closed(),
        "EXPORT_NAME of an unknown export ends the session"
    );
    still_serving(&cluster);
}

#[test]
fn random_garbage_never_takes_the_server_down() {
    let cluster = cluster();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut bytes = Vec::new();
        for _ in 0..(round % 97 + 1) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.extend_from_slice(&seed.to_be_bytes());
        }
        let mut raw = if round % 2 == 0 {
            Raw::connect(cluster.nbd_port)
        } else {
            Raw::go(cluster.nbd_port, "vol").0
        };
        use std::io::Write;
        let _ = raw.stream.write_all(&bytes);
    }
    still_serving(&cluster);
}
