//! Configuration of `sheep`: flags, or the same names as `SHEEP_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default port of the gRPC service (control API and peer service), as in Sheepdog.
pub const DEFAULT_PEER_PORT: u16 = 7000;
/// Default NBD port (IANA).
pub const DEFAULT_NBD_PORT: u16 = 10809;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sheep",
    version,
    about = "Sheepdog storage node: stores replicated objects and serves volumes over NBD"
)]
pub struct SheepConfig {
    /// Data directory: objects, logs of unflushed writes, the NBD socket.
    #[arg(long, env = "SHEEP_DIR")]
    pub dir: PathBuf,
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
}

impl SheepConfig {
    pub fn node_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.listen.to_string())
    }

    pub fn nbd_socket(&self) -> PathBuf {
        self.nbd_socket
            .clone()
            .unwrap_or_else(|| self.dir.join("nbd.sock"))
    }
}
