//! Prometheus metrics of a node, served at `/metrics` on its gRPC port
//! (`curl http://127.0.0.1:7000/metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// An NBD operation, as a bounded label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    Other,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::Other => "other",
        }
    }
}

impl EncodeLabelValue for Op {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: Op,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<OpLabel, Counter>,
    errors: Family<OpLabel, Counter>,
    bytes: Family<OpLabel, Counter>,
    latency: Family<OpLabel, Histogram>,
    pub epoch: Gauge,
    pub nodes: Gauge,
    pub lease_valid: Gauge,
    pub objects: Gauge,
    pub stored_bytes: Gauge,
    pub recovery_total: Gauge,
    pub recovery_done: Gauge,
    pub recovery_missing: Gauge,
    pub recovered_epoch: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let latency = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
        });
        let mut m = Self {
            registry: Registry::with_prefix("sheepdog"),
            requests: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            latency,
            epoch: Gauge::default(),
            nodes: Gauge::default(),
            lease_valid: Gauge::default(),
            objects: Gauge::default(),
            stored_bytes: Gauge::default(),
            recovery_total: Gauge::default(),
            recovery_done: Gauge::default(),
            recovery_missing: Gauge::default(),
            recovered_epoch: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("nbd_requests", "NBD requests served", m.requests.clone());
        r.register(
            "nbd_errors",
            "NBD requests answered with an error",
            m.errors.clone(),
        );
        r.register(
            "nbd_bytes",
            "Bytes read or written over NBD",
            m.bytes.clone(),
        );
        r.register(
            "nbd_request_duration_seconds",
            "Time to serve an NBD request",
            m.latency.clone(),
        );
        r.register(
            "cluster_epoch",
            "Epoch of this node's cluster map",
            m.epoch.clone(),
        );
        r.register(
            "cluster_nodes",
            "Nodes in this node's cluster map",
            m.nodes.clone(),
        );
        r.register(
            "lease_valid",
            "1 while this node may serve I/O",
            m.lease_valid.clone(),
        );
        r.register(
            "store_objects",
            "Objects stored on this node",
            m.objects.clone(),
        );
        r.register(
            "store_bytes",
            "Disk bytes used by the objects on this node",
            m.stored_bytes.clone(),
        );
        r.register(
            "recovery_objects",
            "Objects to recover for the current epoch",
            m.recovery_total.clone(),
        );
        r.register(
            "recovery_objects_done",
            "Objects recovered for the current epoch",
            m.recovery_done.clone(),
        );
        r.register(
            "recovery_objects_missing",
            "Objects no reachable node had",
            m.recovery_missing.clone(),
        );
        r.register(
            "recovered_epoch",
            "Newest epoch this node has fully recovered",
            m.recovered_epoch.clone(),
        );
        m
    }
}

impl Metrics {
    /// Records one served NBD request.
    pub fn request(&self, op: Op, bytes: u64, took: Duration, failed: bool) {
        let label = OpLabel { op };
        self.requests.get_or_create(&label).inc();
        self.bytes.get_or_create(&label).inc_by(bytes);
        self.latency
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&label).inc();
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
