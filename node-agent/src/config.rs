//! Configuration of `sheep`: flags, or the same names as `SHEEP_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default port of the gRPC service (control API and peer service), as in Sheepdog.
pub const DEFAULT_PEER_PORT: u16 = 7000;
/// Default NBD port (IANA).
pub const DEFAULT_NBD_PORT: u16 = 10809;

/// `sheep`: a storage node by default, or `sheep coordinator`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "sheep",
    version,
    about = "Sheepdog storage node: stores replicated objects and serves volumes over NBD",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub node: SheepConfig,
}

#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// Run the membership coordinator of a cluster without Kubernetes.
    Coordinator(crate::coordinator::CoordinatorConfig),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SheepConfig {
    /// Data directory: objects, logs of unflushed writes, cluster maps, the NBD socket.
    #[arg(long, env = "SHEEP_DIR")]
    pub dir: Option<PathBuf>,
    /// Unique node id; defaults to the gRPC listen address.
    #[arg(long, env = "SHEEP_ID")]
    pub id: Option<String>,
    /// Address of the gRPC service (control API and peers).
    #[arg(long, env = "SHEEP_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Address of the NBD server.
    #[arg(long, env = "SHEEP_NBD", default_value = "127.0.0.1:10809")]
    pub nbd: SocketAddr,
    /// Path of the NBD unix socket; defaults to DIR/nbd.sock.
    #[arg(long, env = "SHEEP_NBD_SOCKET")]
    pub nbd_socket: Option<PathBuf>,
    /// Failure zone of this node.
    #[arg(long, env = "SHEEP_ZONE", default_value = "default")]
    pub zone: String,
    /// Weight on the placement ring in bytes; defaults to the data disk's capacity.
    #[arg(long, env = "SHEEP_WEIGHT")]
    pub weight: Option<u64>,
    /// Copies of each object for volumes created without an explicit count.
    #[arg(long, env = "SHEEP_COPIES", default_value_t = sheepdog_model::DEFAULT_COPIES)]
    pub copies: u8,
    /// Coordinator to join (host:port). Without it the node runs alone.
    #[arg(long, env = "SHEEP_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Fewest replicas that must take a write (default: copies - copies/2, as Ceph's min_size).
    #[arg(long, env = "SHEEP_MIN_COPIES")]
    pub min_copies: Option<u8>,
    /// How long an I/O retries unreachable replicas before failing.
    #[arg(long, env = "SHEEP_IO_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub io_timeout: Duration,
    /// Interval between heartbeats to the coordinator.
    #[arg(long, env = "SHEEP_HEARTBEAT_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Objects recovered at the same time.
    #[arg(long, env = "SHEEP_RECOVERY_CONCURRENCY", default_value_t = 4)]
    pub recovery_concurrency: usize,
    /// Recovery bandwidth limit per node, e.g. 200M (bytes per second); 0 for none.
    #[arg(long, env = "SHEEP_RECOVERY_BANDWIDTH", default_value = "0", value_parser = parse_bytes)]
    pub recovery_bandwidth: u64,
    /// Fault injection for tests: hold every ThawVolume request this long before it takes
    /// effect, as a slow link to this node would. Never set it in production.
    #[arg(long, env = "SHEEP_INJECT_THAW_DELAY", default_value = "0s", value_parser = humantime::parse_duration, hide = true)]
    pub inject_thaw_delay: Duration,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    sheepdog_model::size::parse(s).map_err(|e| e.to_string())
}

impl SheepConfig {
    pub fn node_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The data directory; the node role cannot run without one.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        self.dir.clone().ok_or_else(|| {
            anyhow::anyhow!("sheep needs a data directory: pass --dir DIR (or set SHEEP_DIR)")
        })
    }

    pub fn nbd_socket(&self, dir: &std::path::Path) -> PathBuf {
        self.nbd_socket
            .clone()
            .unwrap_or_else(|| dir.join("nbd.sock"))
    }
}
