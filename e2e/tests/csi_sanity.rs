//! The CSI conformance suite, csi-sanity (kubernetes-csi/csi-test v5.4, CSI spec 1.12), against
//! `sheepdog-csi all` on a 3-node local cluster, in block and in mount mode: every spec it
//! runs for the driver's capabilities passes, and it runs at least as many as it did when
//! the driver's capability set was last widened (a capability dropped by mistake would
//! silently skip specs).

use sheepdog_e2e::Cluster;
use sheepdog_e2e::csi::{Csi, csi_sanity};
use std::process::Command;

/// Specs csi-sanity runs for the capabilities the driver offers today.
const SPECS_RUN: u32 = 71;

fn sanity(access_type: &str) {
    let cluster = Cluster::start_with(3, "3s");
    let csi = Csi::start(&cluster, "node-a");
    let work = csi.dir.path();
    let report = work.join(format!("csi-sanity-{access_type}.xml"));
    let output = Command::new(csi_sanity())
        .arg(format!("-csi.endpoint={}", csi.endpoint()))
        .arg(format!("-csi.mountdir={}", work.join("target").display()))
        .arg(format!(
            "-csi.stagingdir={}",
            work.join("staging").display()
        ))
        .arg(format!("-csi.testvolumeaccesstype={access_type}"))
        .arg("-csi.testvolumesize=67108864")
        .arg("-csi.testvolumeexpandsize=134217728")
        .arg(format!("-ginkgo.junit-report={}", report.display()))
        .arg("-ginkgo.no-color")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("Passed |"))
        .unwrap_or("no summary");
    let ran: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        output.status.success() && summary.contains("| 0 Failed |"),
        "csi-sanity in {access_type} mode failed: {summary}\n{}\n--- driver log ---\n{}",
        text.lines()
            .filter(|l| l.contains("[FAIL]") || l.contains("[FAILED]"))
            .collect::<Vec<_>>()
            .join("\n"),
        csi.log()
    );
    assert!(
        ran >= SPECS_RUN,
        "csi-sanity ran only {ran} specs in {access_type} mode (expected {SPECS_RUN}): did a capability go missing? {summary}"
    );
    println!("csi-sanity, {access_type} mode: ran {ran} specs: {summary}");
    let volumes = String::from_utf8(
        Command::new(sheepdog_e2e::bin_dir().join("dog"))
            .args(["vdi", "list", "-p", &cluster.peer_port.to_string()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !volumes.contains("sanity"),
        "csi-sanity's volumes were left behind:\n{volumes}"
    );
}

#[test]
fn csi_sanity_passes_in_block_mode() {
    sanity("block");
}

#[test]
fn csi_sanity_passes_in_mount_mode() {
    sanity("mount");
}
