//! Seeded random fault schedules under many clients on many gateways.
//!
//! Each schedule starts a fresh lab (every node in a network namespace of its own, see
//! `sheepdog_e2e::lab`), creates a volume, and runs `e2e/checker/torture.py`: several clients,
//! each through another gateway, writing versioned, checksummed blocks of shared objects with
//! FUA and FLUSH at queue depth > 1, and reading each other's blocks back through their own
//! gateway (a stale read is an error; after a whole-cluster power cut, one older than the
//! last flush before it). Meanwhile a schedule drawn from the seed kills,
//! restarts, partitions and heals nodes, adds one and takes it away again, and takes
//! snapshots, grows the volume and runs `dog cluster check --repair`. Half the schedules keep
//! every node's data on lazyfs (`e2e/lazyfs`) and also cut the power of one node or of the
//! whole cluster: what a node had not fsynced is lost. Afterwards every block must read back
//! its last acknowledged version (after a whole-cluster power cut: its last flushed one, or a
//! newer one) through every node, and every replica must agree (`dog cluster check`).
//!
//! `SHEEPDOG_TORTURE_SCHEDULES` sets how many schedules run (CI runs 6 fixed seeds, `make torture` 100);
//! `SHEEPDOG_TORTURE_SEED` replays one. A failure prints its seed and keeps the lab's
//! directory (logs, data).

use sheepdog_e2e::lab::Lab;
use sheepdog_e2e::{ok, require, run, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODES: u16 = 4;
const VOLUME: &str = "tortured";
/// The export every client opens: the volume, attached shared by the clients on every gateway.
const SHARED: &str = "tortured/shared";
const BLOCKS: u32 = 8192;
const CLIENTS: u32 = 4;
const QUEUE_DEPTH: u32 = 8;

/// A small deterministic generator (SplitMix64): the schedule depends only on the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Kill(u16),
    /// Node n loses power: killed, and what it had not fsynced is lost (lazyfs).
    PowerCut(u16),
    /// Every node loses power at once, and comes back.
    PowerCutAll,
    Restart(u16),
    Partition(u16),
    Heal(u16),
    Join,
    Leave,
    Snapshot,
    Grow,
    Repair,
}

/// Schedule `seed`: whether the nodes keep their data on lazyfs (power cuts possible), and
/// the steps, each followed by a pause in milliseconds. At most one node is down or cut off at
/// a time, so a 3-copy object always keeps minCopies replicas; a whole-cluster power cut
/// restarts every node at once.
fn schedule(seed: u64) -> (bool, Vec<(Step, u64)>) {
    let mut rng = Rng(seed);
    let lazyfs = rng.below(2) == 0;
    let mut steps = Vec::new();
    let mut faulty: Option<(u16, bool)> = None;
    let mut joined = false;
    for _ in 0..6 {
        let step = match (rng.below(7), faulty) {
            (0 | 1, None) => {
                let node = rng.below(u64::from(NODES)) as u16;
                let kill = rng.below(2) == 0;
                faulty = Some((node, kill));
                match (kill, lazyfs && rng.below(2) == 0) {
                    (true, true) => Step::PowerCut(node),
                    (true, false) => Step::Kill(node),
                    (false, _) => Step::Partition(node),
                }
            }
            (0 | 1, Some((node, kill))) => {
                faulty = None;
                if kill {
                    Step::Restart(node)
                } else {
                    Step::Heal(node)
                }
            }
            (2, None) if !joined => {
                joined = true;
                Step::Join
            }
            (2, None) => {
                joined = false;
                Step::Leave
            }
            (3, _) => Step::Snapshot,
            (4, _) => Step::Grow,
            (5, None) if lazyfs && !joined => Step::PowerCutAll,
            _ => Step::Repair,
        };
        steps.push((step, 1_000 + rng.below(3_000)));
    }
    match faulty {
        Some((node, true)) => steps.push((Step::Restart(node), 500)),
        Some((node, false)) => steps.push((Step::Heal(node), 500)),
        None => {}
    }
    if joined {
        steps.push((Step::Leave, 500));
    }
    (lazyfs, steps)
}

/// Live state of one schedule's lab.
struct Run {
    lab: Lab,
    /// The node added by `Join`, while it is in.
    joined: Option<u16>,
    /// Nodes taken away for good (`Leave`): not restarted, not expected in the map.
    left: Vec<u16>,
    size_mib: u64,
    /// Whether partitions drop packets silently (even seeds) or take the link down (odd
    /// seeds: the kernel then reports the lost neighbour to the senders).
    silent_cuts: bool,
    /// Whole-cluster power cuts so far, which the checker reads from `<state>.cuts`: writes
    /// acknowledged but not flushed before one may be gone, and it judges reads by that.
    whole_cuts: u32,
}

impl Run {
    /// A node that is up and connected, to run `dog` through.
    fn healthy(&self) -> u16 {
        (0..NODES)
            .find(|&n| self.lab.running(n) && !self.lab.nodes[n as usize].partitioned)
            .expect("one node is always healthy")
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Kill(n) => self.lab.kill9(n),
            Step::PowerCut(n) => {
                let report = self.lab.power_cut(n);
                eprintln!("  power cut: {report}");
            }
            Step::PowerCutAll => {
                for n in 0..NODES {
                    let report = self.lab.power_cut(n);
                    eprintln!("  power cut of node {n}: {report}");
                }
                self.whole_cuts += 1;
                let cuts = self.state().with_extension("json.cuts");
                let next = self.state().with_extension("json.cuts.new");
                std::fs::write(&next, self.whole_cuts.to_string()).unwrap();
                std::fs::rename(&next, &cuts).unwrap();
                for n in 0..NODES {
                    self.lab.start_node(n);
                }
            }
            Step::Restart(n) => self.lab.start_node(n),
            Step::Partition(n) if self.silent_cuts => self.lab.set_silent_cut(n, true),
            Step::Heal(n) if self.silent_cuts => self.lab.set_silent_cut(n, false),
            Step::Partition(n) => self.lab.set_link(n, false),
            Step::Heal(n) => self.lab.set_link(n, true),
            Step::Join => self.joined = Some(self.lab.add_node()),
            Step::Leave => {
                if let Some(n) = self.joined.take() {
                    self.lab.kill9(n);
                    self.left.push(n);
                }
            }
            Step::Snapshot => {
                let out = run(&mut self.lab.dog(self.healthy(), &["vdi", "snapshot", VOLUME]));
                eprintln!("  snapshot: {}", outcome(&out));
            }
            Step::Grow => {
                self.size_mib += 4;
                let size = format!("{}M", self.size_mib);
                let out = run(&mut self
                    .lab
                    .dog(self.healthy(), &["vdi", "resize", VOLUME, &size]));
                eprintln!("  resize to {size}: {}", outcome(&out));
            }
            Step::Repair => {
                let out = run(&mut self
                    .lab
                    .dog(self.healthy(), &["cluster", "check", "--repair"]));
                eprintln!("  repair: {}", outcome(&out));
            }
        }
    }

    /// The checker's state file.
    fn state(&self) -> PathBuf {
        self.lab.dir.path().join("torture.json")
    }

    /// Every node that should be a member at the end.
    fn members(&self) -> Vec<u16> {
        (0..self.lab.nodes.len() as u16)
            .filter(|n| !self.left.contains(n))
            .collect()
    }
}

fn outcome(out: &std::process::Output) -> String {
    if out.status.success() {
        "ok".into()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

fn checker() -> Command {
    require("nbdsh", "python3-libnbd");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("checker")
        .join("torture.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script);
    cmd
}

/// Runs schedule `seed` and returns what went wrong, if anything.
fn torture(seed: u64) -> Result<String, String> {
    let (lazyfs, steps) = schedule(seed);
    let silent_cuts = seed.is_multiple_of(2);
    eprintln!(
        "schedule {seed} (data on lazyfs: {lazyfs}, silent partitions: {silent_cuts}): {steps:?}"
    );
    let lab = Lab::start_on(NODES, "3s", &["--io-timeout", "20s"], lazyfs);
    let mut run_ = Run {
        lab,
        joined: None,
        left: Vec::new(),
        size_mib: u64::from(BLOCKS) * 4 / 1024,
        silent_cuts,
        whole_cuts: 0,
    };
    wait_for("the lab's map", Duration::from_secs(30), || {
        (run_.lab.info(0)?["nodes"].as_array()?.len() == NODES as usize).then_some(())
    });
    let size = format!("{}M", run_.size_mib);
    ok(&mut run_.lab.dog(0, &["vdi", "create", VOLUME, &size]));
    let uris: Vec<String> = (0..NODES).map(|n| run_.lab.nbd_uri(n, SHARED)).collect();
    let state = run_.state();
    let seconds: u64 = steps.iter().map(|(_, pause)| pause).sum::<u64>() / 1000 + 4;
    let writer = checker()
        .args(["run", &uris.join(","), state.to_str().unwrap()])
        .args(
            [
                seconds,
                u64::from(BLOCKS),
                u64::from(CLIENTS),
                u64::from(QUEUE_DEPTH),
                seed,
            ]
            .map(|n| n.to_string()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (step, pause) in &steps {
        eprintln!("  {step:?}, then {pause} ms");
        run_.apply(*step);
        std::thread::sleep(Duration::from_millis(*pause));
    }
    let out = writer.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "the checker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let written: serde_json::Value = serde_json::from_str(&summary).map_err(|e| e.to_string())?;
    eprintln!("  clients: {written}");
    let members = run_.members();
    let settled = Instant::now() + Duration::from_secs(90);
    while !settled_with(&run_, &members) {
        if Instant::now() > settled {
            return Err(format!("the cluster never settled\n{}", run_.lab.logs()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let uris: Vec<String> = members
        .iter()
        .map(|&n| run_.lab.nbd_uri(n, SHARED))
        .collect();
    // After the whole cluster lost power only flushed writes must be there; otherwise every
    // acknowledged write must (one node losing power loses nothing the others hold).
    let whole_cut = steps.iter().any(|(s, _)| *s == Step::PowerCutAll);
    let mode = if whole_cut {
        "verify-durable"
    } else {
        "verify"
    };
    let out = ok(checker().args([mode, &uris.join(","), state.to_str().unwrap()]));
    let verified: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
    eprintln!("  verified: {verified}");
    let mut problems = Vec::new();
    if written["stale"] != 0 {
        problems.push(format!("stale reads: {}", written["stale_examples"]));
    }
    for key in ["lost", "corrupt", "disagree"] {
        if verified[key] != 0 {
            problems.push(format!("{key}: {}", verified["examples"]));
        }
    }
    if written["writes"].as_u64().unwrap_or(0) < 100 {
        problems.push(format!("too few writes to mean anything: {written}"));
    }
    let via = run_.healthy();
    let check = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&mut run_.lab.dog(via, &["cluster", "check"]));
        if out.status.success() {
            break;
        }
        if Instant::now() > check {
            problems.push(format!(
                "replicas never agreed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if problems.is_empty() {
        Ok(format!("{written} {verified}"))
    } else {
        run_.lab.keep = true;
        Err(format!("{}\n{}", problems.join("\n"), run_.lab.logs()))
    }
}

/// Whether exactly `members` are in the map and all have recovered its epoch.
fn settled_with(run_: &Run, members: &[u16]) -> bool {
    let via = members[0];
    let Some(info) = run_.lab.info(via) else {
        return false;
    };
    let epoch = info["epoch"].as_u64();
    let ids: Vec<String> = info["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|x| x["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<String> = members.iter().map(|n| n.to_string()).collect();
    let out = run(&mut run_.lab.dog(via, &["node", "recovery", "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let mut ids = ids;
    ids.sort();
    let mut want = want;
    want.sort();
    ids == want
        && rows.len() == members.len()
        && rows.iter().all(|r| {
            r["reachable"] == true
                && r["epoch"].as_u64() == epoch
                && r["recoveredEpoch"].as_u64() == epoch
        })
}

#[test]
fn seeded_fault_schedules_lose_nothing_and_leave_replicas_agreeing() {
    let seeds: Vec<u64> = match std::env::var("SHEEPDOG_TORTURE_SEED") {
        Ok(seed) => vec![seed.parse().expect("SHEEPDOG_TORTURE_SEED is a number")],
        Err(_) => {
            let count: u64 = std::env::var("SHEEPDOG_TORTURE_SCHEDULES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(4);
            // A fixed set by default, so that a CI run is repeatable: seeds 1 to 4 (2 and 4
            // draw lazyfs; even seeds cut the network silently) and two schedules with power cuts that once failed: seed
            // 1796166395000 (a whole-cluster cut left the copies of one object disagreeing at
            // equal versions) and seed 6 (one node's cut lost a block). Both came from
            // start-up repair keeping the version of a write whose bytes the cut had lost.
            // `make torture` draws new seeds from the clock (SHEEPDOG_TORTURE_RANDOM=1).
            let base = match std::env::var_os("SHEEPDOG_TORTURE_RANDOM") {
                Some(_) => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                None => 0,
            };
            let mut seeds: Vec<u64> = (1..=count).map(|i| base * 1000 + i).collect();
            if base == 0 && std::env::var_os("SHEEPDOG_TORTURE_SCHEDULES").is_none() {
                seeds.extend([6, 1_796_166_395_000]);
            }
            seeds
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        let started = Instant::now();
        match torture(seed) {
            Ok(summary) => eprintln!(
                "schedule {seed} passed in {:.0?}: {summary}",
                started.elapsed()
            ),
            Err(why) => {
                eprintln!(
                    "schedule {seed} FAILED (replay: SHEEPDOG_TORTURE_SEED={seed} cargo nextest run -p sheepdog-e2e --test torture): {why}"
                );
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} schedules failed; replay with SHEEPDOG_TORTURE_SEED=<seed>: {failures:?}",
        failures.len(),
        seeds.len()
    );
}
