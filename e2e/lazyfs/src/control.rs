//! The power switch and the stop button: SIGUSR1, or a `cut` line written to the control FIFO,
//! cuts the power; `cut torn SEED` cuts it after writing back a seeded half of the unsynced
//! pages ([`State::cut_torn`]); `fail-fsync COUNT` makes the next COUNT fsyncs fail as a
//! failing disk's do ([`State::fail_fsyncs`], answered `fail-fsync COUNT`); SIGTERM and
//! SIGINT stop `lazyfs` with a clean unmount.
//!
//! Each cut prints one line on standard output once it is complete, for scripts to wait on:
//! `cut N files=F bytes=B undone=U handles=H kept=K` (the Nth cut dropped B unsynced bytes of
//! F files, undid U namespace changes, invalidated H open handles, and first wrote back K
//! pages if torn).

use crate::state::{CutReport, State};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT: unmount.
    Signal,
    /// The file system was unmounted from outside.
    Unmounted,
}

/// Cuts the power (torn with this seed, see [`State::cut_torn`]) and reports it on standard
/// output.
pub fn cut(state: &Mutex<State>, torn: Option<u64>) -> CutReport {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let report = match torn {
        None => state.cut(),
        Some(seed) => state.cut_torn(seed),
    };
    drop(state);
    let CutReport {
        cut,
        files,
        bytes,
        undone,
        handles,
        kept,
    } = report;
    tracing::info!(cut, files, bytes, undone, handles, kept, "power cut");
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "cut {cut} files={files} bytes={bytes} undone={undone} handles={handles} kept={kept}"
    );
    let _ = out.flush();
    report
}

/// Runs one line of the control FIFO.
fn command(state: &Mutex<State>, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [] => {}
        ["cut"] => {
            cut(state, None);
        }
        ["cut", "torn", seed] if seed.parse::<u64>().is_ok() => {
            cut(state, seed.parse().ok());
        }
        ["fail-fsync", count] if count.parse::<u64>().is_ok() => {
            let count = count.parse().unwrap_or_default();
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fail_fsyncs(count);
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "fail-fsync {count}");
            let _ = out.flush();
        }
        _ => tracing::warn!(
            command = line,
            "unknown control command (known: cut, cut torn SEED, fail-fsync COUNT)"
        ),
    }
}

/// Creates the control FIFO at `path` unless a FIFO is there already.
fn make_fifo(path: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is not a FIFO",
            path.display()
        ))),
        Err(_) => Ok(mknodat(
            CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )?),
    }
}

/// Serves the power switch until a stop signal or until `unmounted()` says the session ended.
pub async fn run(
    state: &Mutex<State>,
    control: Option<&Path>,
    unmounted: impl Fn() -> bool,
) -> io::Result<Stop> {
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut lines = match control {
        Some(path) => {
            make_fifo(path)?;
            // Opened for writing too, so that a writer closing it is no end of file.
            let fifo = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(path)?;
            Some(tokio::io::BufReader::new(fifo).lines())
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let line = async {
            match &mut lines {
                Some(lines) => lines.next_line().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = usr1.recv() => {
                cut(state, None);
            }
            _ = term.recv() => return Ok(Stop::Signal),
            _ = int.recv() => return Ok(Stop::Signal),
            line = line => match line? {
                Some(line) => command(state, line.trim()),
                None => lines = None,
            },
            _ = tick.tick() => {
                if unmounted() {
                    return Ok(Stop::Unmounted);
                }
            }
        }
    }
}
