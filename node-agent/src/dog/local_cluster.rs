//! The embedded default: a cluster of `sheep` processes on loopback, supervised from a
//! directory. `DIR/cluster.json` records the layout so `dog cluster up` on an existing DIR
//! starts the same nodes again with their data; each node keeps its data, log (`sheep.log`)
//! and pid file (`sheep.pid`) in `DIR/node<ID>/`.

use super::Target;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `up` waits for a node to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits for a node to flush and exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Directory for the nodes' data, logs and pid files.
    #[arg(long)]
    dir: PathBuf,
    /// Copies of each object for new volumes (default: 3, or the number of nodes if fewer).
    #[arg(long)]
    copies: Option<u8>,
    /// First gRPC port; node i listens on base-port + i.
    #[arg(long, default_value_t = crate::config::DEFAULT_PEER_PORT)]
    base_port: u16,
    /// First NBD port; node i serves NBD on nbd-base-port + i.
    #[arg(long, default_value_t = crate::config::DEFAULT_NBD_PORT)]
    nbd_base_port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layout {
    version: u32,
    copies: u8,
    nodes: Vec<LocalNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalNode {
    id: String,
    peer_port: u16,
    nbd_port: u16,
}

impl LocalNode {
    fn dir(&self, root: &Path) -> PathBuf {
        root.join(format!("node{}", self.id))
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let layout = layout(&args)?;
    if layout.nodes.len() > 1 {
        bail!(
            "this sheep runs one-node clusters only: replication across nodes is not built yet; use --nodes 1"
        );
    }
    let sheep = sheep_binary()?;
    let mut started = Vec::new();
    for node in &layout.nodes {
        let process = match running_pid(&node.dir(&args.dir)) {
            Some(pid) => Process::Running(pid),
            None => Process::Started(spawn(&sheep, &args.dir, node, layout.copies)?),
        };
        started.push((node.clone(), process));
    }
    for (node, mut process) in started {
        wait_until_serving(&args.dir, &node, &mut process).await?;
        let pid = process.pid();
        println!(
            "node {} peer=127.0.0.1:{} nbd=127.0.0.1:{} pid={pid}",
            node.id, node.peer_port, node.nbd_port
        );
    }
    Ok(())
}

pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(dir.join("cluster.json"))
        .with_context(|| format!("{} holds no local cluster (no cluster.json)", dir.display()))?;
    let layout: Layout = serde_json::from_str(&text).context("cluster.json is damaged")?;
    for node in &layout.nodes {
        let node_dir = node.dir(dir);
        if let Some(pid) = running_pid(&node_dir) {
            stop(pid).await;
            println!("node {} stopped (pid {pid})", node.id);
        }
        let _ = fs::remove_file(node_dir.join("sheep.pid"));
    }
    Ok(())
}

/// The layout recorded in DIR, or a new one from the arguments.
fn layout(args: &UpArgs) -> anyhow::Result<Layout> {
    let path = args.dir.join("cluster.json");
    if let Ok(text) = fs::read_to_string(&path) {
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged; remove it to start afresh", path.display()));
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let nodes = (0..args.nodes)
        .map(|i| -> anyhow::Result<LocalNode> {
            let offset = u16::try_from(i).context("too many nodes")?;
            Ok(LocalNode {
                id: i.to_string(),
                peer_port: args
                    .base_port
                    .checked_add(offset)
                    .context("--base-port too high")?,
                nbd_port: args
                    .nbd_base_port
                    .checked_add(offset)
                    .context("--nbd-base-port too high")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let default_copies =
        sheepdog_model::DEFAULT_COPIES.min(u8::try_from(args.nodes).unwrap_or(u8::MAX));
    let layout = Layout {
        version: 1,
        copies: args.copies.unwrap_or(default_copies),
        nodes,
    };
    fs::write(&path, serde_json::to_string_pretty(&layout)?)?;
    Ok(layout)
}

fn sheep_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHEEP_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("cannot find the dog executable")?;
    let sheep = exe.with_file_name("sheep");
    anyhow::ensure!(
        sheep.exists(),
        "cannot find sheep next to dog at {}; set SHEEP_BIN to its path",
        sheep.display()
    );
    Ok(sheep)
}

/// A node process: one this command started, or one that was already running.
enum Process {
    Started(std::process::Child),
    Running(u32),
}

impl Process {
    fn pid(&self) -> u32 {
        match self {
            Process::Started(child) => child.id(),
            Process::Running(pid) => *pid,
        }
    }

    /// Why the process is gone, or `None` while it runs.
    fn exited(&mut self) -> Option<String> {
        match self {
            Process::Started(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("sheep exited with {status}")),
                Ok(None) => None,
                Err(e) => Some(format!("cannot watch sheep: {e}")),
            },
            Process::Running(pid) => {
                (!is_sheep(*pid)).then(|| format!("sheep (pid {pid}) is gone"))
            }
        }
    }
}

fn spawn(
    sheep: &Path,
    root: &Path,
    node: &LocalNode,
    copies: u8,
) -> anyhow::Result<std::process::Child> {
    let dir = node.dir(root);
    fs::create_dir_all(&dir)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sheep.log"))?;
    let child = Command::new(sheep)
        .arg("--dir")
        .arg(&dir)
        .args(["--id", &node.id])
        .args(["--listen", &format!("127.0.0.1:{}", node.peer_port)])
        .args(["--nbd", &format!("127.0.0.1:{}", node.nbd_port)])
        .args(["--copies", &copies.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", sheep.display()))?;
    fs::write(dir.join("sheep.pid"), child.id().to_string())?;
    Ok(child)
}

/// The pid in DIR/sheep.pid if that process is alive and is a sheep.
fn running_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dir.join("sheep.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_sheep(pid).then_some(pid)
}

fn is_sheep(pid: u32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    Path::new(std::str::from_utf8(argv0).unwrap_or(""))
        .file_name()
        .is_some_and(|n| n == "sheep")
        && !zombie
}

async fn wait_until_serving(
    root: &Path,
    node: &LocalNode,
    process: &mut Process,
) -> anyhow::Result<()> {
    let target = Target {
        address: "127.0.0.1".into(),
        port: node.peer_port,
        json: false,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if super::client::channel(&target).await.is_ok() {
            return Ok(());
        }
        let exited = process.exited();
        if exited.is_some() || Instant::now() > deadline {
            let why =
                exited.unwrap_or_else(|| format!("no answer within {}s", START_TIMEOUT.as_secs()));
            let log = node.dir(root).join("sheep.log");
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "node {} did not start serving on port {}: {why} (see {}):\n{}",
                node.id,
                node.peer_port,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, wait for the node to flush and exit, SIGKILL if it does not.
async fn stop(pid: u32) {
    let Some(target) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_sheep(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if is_sheep(pid) {
        let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
    }
}
