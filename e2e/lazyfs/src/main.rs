//! `lazyfs --backing DIR --mount MOUNTPOINT [--control FIFO] [--metadata MODEL]`: see the
//! crate documentation in `lib.rs`.

use anyhow::Context;
use clap::Parser;
use sheepdog_lazyfs::control::{self, Stop};
use sheepdog_lazyfs::{LazyFs, Model, State};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A FUSE file system that keeps every write not yet fsynced in memory only: SIGUSR1 (or `cut`
/// written to the control FIFO) cuts the power and drops them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Directory holding the durable content
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount the file system
    #[arg(long)]
    mount: PathBuf,
    /// FIFO to create (if missing) and read commands from, one per line: `cut`
    #[arg(long)]
    control: Option<PathBuf>,
    /// When namespace changes (create, rename, unlink...) survive a power cut
    #[arg(long, value_enum, default_value = "strict")]
    metadata: Model,
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Modes of new files are the caller's, already masked by the kernel.
    rustix::process::umask(rustix::fs::Mode::empty());
    let state = State::new(&args.backing, args.metadata)
        .with_context(|| format!("cannot use {} as backing directory", args.backing.display()))?;
    let state = Arc::new(Mutex::new(state));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("lazyfs".into()),
        fuser::MountOption::Subtype("lazyfs".into()),
    ];
    config.n_threads = Some(1);
    let session = fuser::Session::new(LazyFs::new(state.clone()), &args.mount, &config)
        .with_context(|| format!("cannot mount on {}", args.mount.display()))?;
    let session = session.spawn()?;
    tracing::info!(backing = %args.backing.display(), mount = %args.mount.display(), metadata = ?args.metadata, "mounted");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready pid={}", std::process::id())?;
    out.flush()?;
    drop(out);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = runtime.block_on(control::run(&state, args.control.as_deref(), || {
        session.guard.is_finished()
    }))?;
    if let Some(fifo) = &args.control {
        let _ = std::fs::remove_file(fifo);
    }
    match stop {
        Stop::Unmounted => session.join()?,
        Stop::Signal => {
            if let Err(e) = session.umount_and_join() {
                // Busy (a process still uses it): detach it; exiting ends the connection.
                tracing::warn!(error = %e, "unmount failed; detaching the mount");
                let detach = rustix::mount::UnmountFlags::DETACH;
                rustix::mount::unmount(&args.mount, detach).context("cannot detach")?;
                state.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
            }
        }
    }
    tracing::info!("unmounted");
    Ok(())
}
