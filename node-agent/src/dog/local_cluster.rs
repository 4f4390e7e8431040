//! The embedded default: a cluster of `sheep` processes on loopback, supervised from a
//! directory.
//!
//! `dog cluster up` starts a coordinator (`sheep coordinator`, in `DIR/coordinator/`) and N
//! nodes (`DIR/node<ID>/`), each with its data, its log (`*.log`) and its pid file (`*.pid`).
//! `DIR/cluster.json` records the layout, so `up` on an existing DIR starts the same nodes again
//! with their data, leaving running ones alone.

use super::Target;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sheepdog_api::v1;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `up` waits for the cluster to serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits for a process to flush and exit before killing it.
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
    /// First gRPC port; node i listens on base-port + i, the coordinator on base-port - 1.
    #[arg(long, default_value_t = crate::config::DEFAULT_PEER_PORT)]
    base_port: u16,
    /// First NBD port; node i serves NBD on nbd-base-port + i.
    #[arg(long, default_value_t = crate::config::DEFAULT_NBD_PORT)]
    nbd_base_port: u16,
    /// A node silent for this long is removed from the cluster (e.g. 10s, 3s).
    #[arg(long, default_value = "10s")]
    failure_timeout: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layout {
    version: u32,
    copies: u8,
    coordinator_port: u16,
    failure_timeout: String,
    nodes: Vec<LocalNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalNode {
    id: String,
    peer_port: u16,
    nbd_port: u16,
}

/// A process of the local cluster: where it lives and how it is started.
struct Member {
    name: String,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
}

impl Member {
    fn coordinator(root: &Path, layout: &Layout) -> Self {
        let dir = root.join("coordinator");
        let args = vec![
            "coordinator".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", layout.coordinator_port),
            "--failure-timeout".into(),
            layout.failure_timeout.clone(),
        ];
        Self {
            name: "coordinator".into(),
            dir,
            port: layout.coordinator_port,
            args,
        }
    }

    fn node(root: &Path, layout: &Layout, node: &LocalNode) -> Self {
        let dir = root.join(format!("node{}", node.id));
        let args = vec![
            "--dir".into(),
            dir.display().to_string(),
            "--id".into(),
            node.id.clone(),
            "--listen".into(),
            format!("127.0.0.1:{}", node.peer_port),
            "--nbd".into(),
            format!("127.0.0.1:{}", node.nbd_port),
            "--copies".into(),
            layout.copies.to_string(),
            "--coordinator".into(),
            format!("127.0.0.1:{}", layout.coordinator_port),
        ];
        Self {
            name: format!("node {}", node.id),
            dir,
            port: node.peer_port,
            args,
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("sheep.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("sheep.log")
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let layout = layout(&args)?;
    let sheep = sheep_binary()?;
    let coordinator = Member::coordinator(&args.dir, &layout);
    let mut process = ensure_running(&sheep, &coordinator)?;
    wait_until_serving(&coordinator, &mut process).await?;
    let mut started = Vec::new();
    for node in &layout.nodes {
        let member = Member::node(&args.dir, &layout, node);
        let process = ensure_running(&sheep, &member)?;
        started.push((node.clone(), member, process));
    }
    for (_, member, process) in &mut started {
        wait_until_serving(member, process).await?;
    }
    wait_for_members(&layout).await?;
    for (node, _, process) in &started {
        println!(
            "node {} peer=127.0.0.1:{} nbd=127.0.0.1:{} pid={}",
            node.id,
            node.peer_port,
            node.nbd_port,
            process.pid()
        );
    }
    Ok(())
}

pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(dir.join("cluster.json"))
        .with_context(|| format!("{} holds no local cluster (no cluster.json)", dir.display()))?;
    let layout: Layout = serde_json::from_str(&text).context("cluster.json is damaged")?;
    let nodes = layout.nodes.iter().map(|n| Member::node(dir, &layout, n));
    for member in nodes.chain([Member::coordinator(dir, &layout)]) {
        if let Some(pid) = running_pid(&member.pid_file()) {
            stop(pid).await;
            println!("{} stopped (pid {pid})", member.name);
        }
        let _ = fs::remove_file(member.pid_file());
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
    humantime::parse_duration(&args.failure_timeout).with_context(|| {
        format!(
            "--failure-timeout {:?} is not a duration like 10s",
            args.failure_timeout
        )
    })?;
    let port = |base: u16, i: u32, flag: &str| -> anyhow::Result<u16> {
        u16::try_from(i)
            .ok()
            .and_then(|i| base.checked_add(i))
            .with_context(|| format!("{flag} too high for {} nodes", args.nodes))
    };
    let nodes = (0..args.nodes)
        .map(|i| -> anyhow::Result<LocalNode> {
            Ok(LocalNode {
                id: i.to_string(),
                peer_port: port(args.base_port, i, "--base-port")?,
                nbd_port: port(args.nbd_base_port, i, "--nbd-base-port")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let default_copies =
        sheepdog_model::DEFAULT_COPIES.min(u8::try_from(args.nodes).unwrap_or(u8::MAX));
    let layout = Layout {
        version: 2,
        copies: args.copies.unwrap_or(default_copies),
        coordinator_port: args
            .base_port
            .checked_sub(1)
            .context("--base-port must be above 1")?,
        failure_timeout: args.failure_timeout.clone(),
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

/// A member process: one this command started, or one that was already running.
enum Process {
    Started(Child),
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

fn ensure_running(sheep: &Path, member: &Member) -> anyhow::Result<Process> {
    if let Some(pid) = running_pid(&member.pid_file()) {
        return Ok(Process::Running(pid));
    }
    fs::create_dir_all(&member.dir)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(member.log_file())?;
    let child = Command::new(sheep)
        .args(&member.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", sheep.display()))?;
    fs::write(member.pid_file(), child.id().to_string())?;
    Ok(Process::Started(child))
}

/// The pid in `pid_file` if that process is alive and is a sheep.
fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
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

async fn wait_until_serving(member: &Member, process: &mut Process) -> anyhow::Result<()> {
    let target = Target {
        address: "127.0.0.1".into(),
        port: member.port,
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
            bail!(
                "{} did not start serving on port {}: {why}\n{}",
                member.name,
                member.port,
                log_tail(&member.log_file())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster map of the first node lists every node.
async fn wait_for_members(layout: &Layout) -> anyhow::Result<()> {
    let first = &layout.nodes[0];
    let target = Target {
        address: "127.0.0.1".into(),
        port: first.peer_port,
        json: false,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let info = match super::client::cluster(&target).await {
            Ok(mut client) => client
                .get_cluster_info(v1::GetClusterInfoRequest {})
                .await
                .ok(),
            Err(_) => None,
        };
        let members = info.map_or(0, |i| i.into_inner().nodes.len());
        if members == layout.nodes.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster map holds {members} of {} nodes after {}s; see the sheep.log files",
                layout.nodes.len(),
                START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    format!(
        "last lines of {}:\n{}",
        path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// SIGTERM, wait for the process to flush and exit, SIGKILL if it does not.
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
