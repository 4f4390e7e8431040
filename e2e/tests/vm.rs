//! A real VM on a Sheepdog volume: QEMU boots Debian's kernel with an initramfs built here
//! (busybox), whose virtio disk is a volume served over NBD by a 3-node cluster. The guest
//! writes random data with a sync after every MiB, reads it back uncached and reports on the
//! serial console. A storage node is killed while it writes: the guest must see no I/O error
//! and its data must verify. Then the disk is snapshotted and cloned, and a second VM boots
//! with the clone as its disk: it runs the second stage the first VM stored there, verifies
//! every MiB the first VM wrote and writes to the clone, which leaves the snapshot unchanged.
//!
//! The kernel and initramfs come from `-kernel`/`-initrd`; the program the second VM runs
//! and the data it checks come from the clone.

use sheepdog_e2e::{Cluster, ok, require};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
];
const ROUNDS: u32 = 24;

/// The newest Debian kernel in /boot and its release.
fn kernel() -> (PathBuf, String) {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    kernels.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    });
    kernels.sort();
    let path = kernels
        .pop()
        .expect("no kernel in /boot: run `apt-get install linux-image-amd64` (or `.ci/setup`)");
    let release = path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    (path, release)
}

/// Builds the guest's initramfs (newc cpio) in `work`.
fn initramfs(work: &Path, release: &str) -> PathBuf {
    require("cpio", "cpio");
    let root = work.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox is missing: run `apt-get install busybox-static` (or `.ci/setup`)"
    );
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let modules = Path::new("/lib/modules")
        .join(release)
        .join("kernel/drivers");
    for m in MODULES {
        let dir = if m == "virtio_blk" { "block" } else { "virtio" };
        let src = modules.join(dir).join(format!("{m}.ko"));
        assert!(
            src.exists(),
            "{} is missing: the kernel's modules are needed",
            src.display()
        );
        std::fs::copy(&src, root.join("lib").join(format!("{m}.ko"))).unwrap();
    }
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/init.sh");
    std::fs::copy(init, root.join("init")).unwrap();
    let stage2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/stage2.sh");
    std::fs::copy(stage2, root.join("stage2.sh")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("rounds"), ROUNDS.to_string()).unwrap();
    let image = work.join("initrd.cpio");
    let script = format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        root.display(),
        image.display()
    );
    ok(Command::new("sh").args(["-c", &script]));
    image
}

/// Boots a guest on `volume` (served by node 0) and returns its console once it reports a
/// result; `on_line` sees every console line as it comes.
fn boot(
    cluster: &Cluster,
    initrd: &Path,
    volume: &str,
    append: &str,
    mut on_line: impl FnMut(&str),
) -> (String, String) {
    let (kernel, _) = kernel();
    let accel = std::env::var("SHEEPDOG_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    eprintln!(
        "accelerator: {accel} (KVM stalls nested Linux guests on these machines; set SHEEPDOG_VM_ACCEL=kvm to try it)"
    );
    let drive = format!(
        "file={},format=raw,if=virtio,cache=none",
        cluster.nbd_uri_on(0, volume)
    );
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            &format!("q35,accel={accel}"),
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 rdinit=/init {append}"),
        ])
        .args(["-drive", &drive])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let (lines, rx) = (qemu.stdout.take().unwrap(), mpsc::channel::<String>());
    let reader = std::thread::spawn({
        let tx = rx.0;
        move || {
            for line in BufReader::new(lines).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut console = Vec::new();
    let result = loop {
        let Ok(line) =
            rx.1.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = qemu.kill();
            panic!(
                "the guest did not report within the time limit; console:\n{}",
                console.join("\n")
            );
        };
        console.push(line.clone());
        on_line(&line);
        if line.contains("GUEST: RESULT") {
            break line;
        }
    };
    let _ = qemu.wait();
    let _ = reader.join();
    let text = console.join("\n");
    // Kernel block-layer errors, and the guest script's own failure lines.
    for error in [
        "I/O error",
        "blk_update_request",
        "GUEST: write",
        "GUEST: mismatch",
        "GUEST: cannot load",
    ] {
        assert!(!text.contains(error), "the guest saw {error:?}:\n{text}");
    }
    (result, text)
}

#[test]
fn vm_guest_survives_a_storage_node_killed_and_a_second_vm_boots_from_a_clone() {
    require("qemu-system-x86_64", "qemu-system-x86");
    require("qemu-img", "qemu-utils");
    let (_, release) = kernel();
    let cluster = Cluster::start_with(3, "3s");
    cluster.create("vmdisk", "64M");
    let initrd = initramfs(cluster.dir.path(), &release);
    let mut killed = false;
    let (result, text) = boot(&cluster, &initrd, "vmdisk", "", |line| {
        if !killed && line.contains("GUEST: wrote 4") {
            // Node 2 is not the gateway (node 0): the guest's disk stays attached; the
            // comparisons at the end go through nodes 0 and 1.
            let pid = cluster.pid(2);
            ok(Command::new("kill").args(["-9", &pid.to_string()]));
            killed = true;
            eprintln!("killed storage node 2 while the guest writes");
        }
    });
    assert!(killed, "the node kill happened during the writes:\n{text}");
    assert!(
        result.contains(&format!("RESULT OK {ROUNDS}")),
        "guest reported {result}:\n{text}"
    );
    eprintln!("first guest: {result}");

    ok(&mut cluster.dog(&["vdi", "snapshot", "-s", "golden", "vmdisk"]));
    ok(&mut cluster.dog(&["vdi", "clone", "-s", "golden", "vmdisk", "vm2disk"]));
    let (result, text) = boot(&cluster, &initrd, "vm2disk", "sheepdog.clone", |_| {});
    assert!(
        text.contains("GUEST: booted from the clone")
            && result.contains(&format!("RESULT OK clone verified {ROUNDS}")),
        "second guest reported {result}:\n{text}"
    );
    eprintln!("second guest: {result}");
    // The clone's writes left the snapshot and the first VM's disk as they were.
    let compare = |a: &str, b: &str| {
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "raw"])
            .args([cluster.nbd_uri_on(1, a), cluster.nbd_uri_on(0, b)])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(compare("vmdisk@golden", "vmdisk"), Some(0));
    assert_eq!(
        compare("vmdisk@golden", "vm2disk"),
        Some(1),
        "the clone was written"
    );
}
