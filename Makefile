# One task runner for people and CI. `make setup lint test` is what CI runs.
.PHONY: setup build up down lint test torture bench ring-figures fuzz

# Where `make up` keeps the local cluster.
DIR ?= /tmp/sheepdog

setup:
	.ci/setup

build:
	cargo build --workspace --bins

# The embedded default: a local cluster on loopback serving volume vm1 over NBD.
up:
	cargo build --release --workspace --bins
	target/release/dog cluster up --nodes 3 --dir $(DIR)
	target/release/dog vdi list --json | grep -q '"name": "vm1"' || target/release/dog vdi create vm1 10G
	qemu-img info nbd://127.0.0.1:10809/vm1

down:
	target/release/dog cluster down --dir $(DIR)

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# The e2e tests start the binaries built by `build`.
test: build
	cargo nextest run --workspace --no-fail-fast

# At least 100 seeded fault schedules under many clients on many gateways (CI runs 6 fixed seeds);
# SEED=N replays one. See e2e/tests/torture.rs.
SCHEDULES ?= 100
torture: build
	SHEEPDOG_TORTURE_RANDOM=1 SHEEPDOG_TORTURE_SCHEDULES=$(SCHEDULES) $(if $(SEED),SHEEPDOG_TORTURE_SEED=$(SEED)) \
		cargo nextest run --profile torture -p sheepdog-e2e --test torture --no-capture

# Side-by-side benchmarks against qemu-nbd on the same disk, and recovery speed;
# see docs/benchmarks.md.
bench:
	cargo build --release --workspace --bins
	bench/nbd-vs-qemu-nbd.sh | tee bench/results/one-node.txt
	NODES=3 COPIES=3 bench/nbd-vs-qemu-nbd.sh | tee bench/results/three-copies.txt
	bench/recovery.sh | tee bench/results/recovery.txt
	bench/snapshots.sh | tee bench/results/snapshots.txt
	bench/aggregate.py | tee bench/results/aggregate.txt
	bench/plot.py   # needs matplotlib: pip install matplotlib

ring-figures:
	cargo run --release -p sheepdog-model --example ring_figures

# Coverage-guided fuzzing of the NBD parsers (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd fuzz && cargo +nightly fuzz run nbd_parsers -- -max_total_time=60
