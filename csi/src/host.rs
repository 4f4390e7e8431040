//! What the node service does on its host: loop devices (util-linux `losetup`), file systems
//! (`blkid`, `mkfs`, `resize2fs`, `xfs_growfs`) and mounts (mount(2), and the mount table
//! in `/proc/self/mountinfo`). Failures carry the command and what it printed.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Status;

pub type Reply<T> = Result<T, Status>;

fn run(program: &str, args: &[&str]) -> Reply<String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        Status::internal(format!(
            "cannot run {program}: {e}; the node plugin needs util-linux, e2fsprogs and xfsprogs"
        ))
    })?;
    if !output.status.success() {
        return Err(Status::internal(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The loop device over `file`, if one is set up.
pub fn loop_device_of(file: &Path) -> Reply<Option<PathBuf>> {
    let file = file
        .to_str()
        .ok_or_else(|| Status::internal("file path is not UTF-8"))?;
    let listed = run(
        "losetup",
        &[
            "--list",
            "--noheadings",
            "--output",
            "NAME",
            "--associated",
            file,
        ],
    )?;
    Ok(listed.lines().next().map(|l| PathBuf::from(l.trim())))
}

/// A loop device over `file`, with direct I/O (no page cache between it and the volume).
pub fn attach_loop(file: &Path, read_only: bool) -> Reply<PathBuf> {
    if let Some(device) = loop_device_of(file)? {
        return Ok(device);
    }
    let file = file
        .to_str()
        .ok_or_else(|| Status::internal("file path is not UTF-8"))?;
    let mut args = vec!["--find", "--show", "--direct-io=on"];
    if read_only {
        args.push("--read-only");
    }
    args.push(file);
    let device = run("losetup", &args)?;
    Ok(PathBuf::from(device.trim()))
}

pub fn detach_loop(device: &Path) -> Reply<()> {
    run("losetup", &["--detach", &device.display().to_string()]).map(drop)
}

/// Makes the loop device over `file` take the file's new size.
pub fn refresh_loop_size(device: &Path, file: &Path) -> Reply<()> {
    // The loop driver reads the size the kernel has cached for the file; a stat makes FUSE
    // ask the node agent for the new one first.
    std::fs::metadata(file)
        .map_err(|e| Status::internal(format!("cannot stat {}: {e}", file.display())))?;
    run(
        "losetup",
        &["--set-capacity", &device.display().to_string()],
    )
    .map(drop)
}

/// The file system on `device`, `None` if it has none.
pub fn file_system(device: &Path) -> Reply<Option<String>> {
    let output = Command::new("blkid")
        .args(["--probe", "--output", "value", "--match-tag", "TYPE"])
        .arg(device)
        .output()
        .map_err(|e| Status::internal(format!("cannot run blkid: {e}")))?;
    match output.status.code() {
        Some(0) => {
            let kind = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            Ok((!kind.is_empty()).then_some(kind))
        }
        // Nothing found: a blank device.
        Some(2) => Ok(None),
        _ => Err(Status::internal(format!(
            "blkid {} failed: {}",
            device.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// Makes a file system of `kind` on a blank device (without discarding it first: a new
/// volume reads as zeros already).
pub fn make_file_system(device: &Path, kind: &str) -> Reply<()> {
    let device = device.display().to_string();
    match kind {
        "ext4" => run("mkfs.ext4", &["-F", "-q", "-E", "nodiscard", &device]),
        "xfs" => run("mkfs.xfs", &["-f", "-q", "-K", &device]),
        other => {
            return Err(Status::invalid_argument(format!(
                "file system {other:?} is not supported"
            )));
        }
    }
    .map(drop)
}

/// Grows the file system of `kind` on `device`, mounted at `mountpoint`, to the device's size.
pub fn grow_file_system(device: &Path, mountpoint: &Path, kind: &str) -> Reply<()> {
    let grown = match kind {
        "ext4" => run("resize2fs", &[&device.display().to_string()]),
        "xfs" => run("xfs_growfs", &[&mountpoint.display().to_string()]),
        other => {
            return Err(Status::internal(format!(
                "cannot grow a {other} file system"
            )));
        }
    };
    match grown {
        // The kernel grows a mounted ext4 only for a process with CAP_SYS_RESOURCE.
        Err(status) if kind == "ext4" && !has_capability(CAP_SYS_RESOURCE) => {
            Err(Status::failed_precondition(format!(
                "growing a mounted ext4 file system needs the CAP_SYS_RESOURCE capability, which this node plugin lacks: run it privileged (the chart does), or use xfs ({})",
                status.message()
            )))
        }
        grown => grown.map(drop),
    }
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability number `cap` (from `CapEff` in /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps >> cap & 1 == 1)
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is mounted at `path` (its source device or file system root), `None` if nothing.
pub fn mounted_at(path: &Path) -> Reply<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Status::internal(format!("cannot read the mount table: {e}")))?;
    Ok(mount_source(&table, path))
}

fn mount_source(table: &str, path: &Path) -> Option<String> {
    // The last mount at a path is the one seen there.
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mountpoint = unescape(fields.get(4)?);
        if Path::new(&mountpoint) != path {
            return None;
        }
        let after = fields.iter().position(|f| *f == "-")?;
        let source = unescape(fields.get(after + 2)?);
        let root = unescape(fields.get(3)?);
        Some(if root == "/" {
            source
        } else {
            format!("{source}[{root}]")
        })
    })
}

/// Mounts the file system of `kind` on `device` at `target`.
pub fn mount(
    device: &Path,
    target: &Path,
    kind: &str,
    read_only: bool,
    flags: &[String],
) -> Reply<()> {
    use rustix::mount::MountFlags;
    let mut mount_flags = MountFlags::empty();
    let mut data = Vec::new();
    for flag in flags {
        match flag.as_str() {
            "ro" => mount_flags |= MountFlags::RDONLY,
            "noatime" => mount_flags |= MountFlags::NOATIME,
            "nodiratime" => mount_flags |= MountFlags::NODIRATIME,
            "relatime" => mount_flags |= MountFlags::RELATIME,
            "nosuid" => mount_flags |= MountFlags::NOSUID,
            "nodev" => mount_flags |= MountFlags::NODEV,
            "noexec" => mount_flags |= MountFlags::NOEXEC,
            "sync" => mount_flags |= MountFlags::SYNCHRONOUS,
            "rw" | "defaults" => {}
            other => data.push(other.to_owned()),
        }
    }
    if kind == "xfs" {
        // A clone or snapshot has its source's file system UUID, and xfs refuses a second
        // mount of one UUID: the source may well be mounted on this host.
        data.push("nouuid".into());
    }
    if read_only {
        mount_flags |= MountFlags::RDONLY;
        if kind == "xfs" {
            // A read-only xfs that is not clean would replay its log: it must not write.
            data.push("norecovery".into());
        }
    }
    let data = std::ffi::CString::new(data.join(","))
        .map_err(|_| Status::invalid_argument("a mount flag holds a NUL byte"))?;
    rustix::mount::mount(device, target, kind, mount_flags, data.as_c_str()).map_err(|e| {
        Status::internal(format!(
            "cannot mount {} ({kind}) on {}: {e}",
            device.display(),
            target.display()
        ))
    })
}

/// Bind-mounts `source` (a device or a directory) on `target`, read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Reply<()> {
    use rustix::mount::MountFlags;
    let failed = |e: rustix::io::Errno| {
        Status::internal(format!(
            "cannot bind {} on {}: {e}",
            source.display(),
            target.display()
        ))
    };
    rustix::mount::mount_bind(source, target).map_err(failed)?;
    if read_only {
        let flags = MountFlags::BIND | MountFlags::RDONLY;
        if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
            let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty());
            return Err(failed(e));
        }
    }
    Ok(())
}

/// Unmounts whatever is mounted at `target` (every layer); nothing mounted is fine.
pub fn unmount(target: &Path) -> Reply<()> {
    while mounted_at(target)?.is_some() {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(|e| {
            Status::internal(format!(
                "cannot unmount {}: {e} (is it still in use?)",
                target.display()
            ))
        })?;
    }
    Ok(())
}

/// The size of a block device (or file), in bytes.
pub fn size_of(path: &Path) -> Reply<u64> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Status::internal(format!("cannot open {}: {e}", path.display())))?;
    file.seek(SeekFrom::End(0))
        .map_err(|e| Status::internal(format!("cannot size {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_table_tells_what_is_mounted_where() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
90 22 7:3 / /var/lib/k\\040s/stage rw,relatime shared:2 - ext4 /dev/loop3 rw
91 22 7:3 /lost+found /mnt/pod rw - ext4 /dev/loop3 rw
92 22 0:5 /loop3 /mnt/block rw shared:3 - devtmpfs udev rw
";
        assert_eq!(
            mount_source(table, Path::new("/var/lib/k s/stage")).as_deref(),
            Some("/dev/loop3")
        );
        assert_eq!(
            mount_source(table, Path::new("/mnt/pod")).as_deref(),
            Some("/dev/loop3[/lost+found]")
        );
        assert_eq!(
            mount_source(table, Path::new("/mnt/block")).as_deref(),
            Some("udev[/loop3]")
        );
        assert_eq!(mount_source(table, Path::new("/mnt/none")), None);
    }
}
