//! `dog cluster check [--repair]`: compares every replica of every object.
//!
//! For each object found on any node, the copies its replica set should hold (by the same ring
//! every node computes) are read whole and verified by their block checksums, then compared by
//! digest. An object is healthy when all of its `copies` replicas exist and agree. `--repair`
//! merges the readable copies, the newest version of each block winning, and sends the result
//! to every missing, corrupt or differing copy, which merges it with its own: a write that
//! lands during the repair is never undone. The command fails while any object is unhealthy.

use super::client::failed;
use super::{Target, print_json};
use crate::store;
use serde::Serialize;
use sheepdog_api::v1;
use sheepdog_api::v1::peer_service_client::PeerServiceClient;
use sheepdog_model::{ClusterMap, NodeInfo, ObjectId, Ring};
use std::collections::{BTreeMap, HashMap};
use tonic::transport::Channel;

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    epoch: u64,
    objects: u64,
    healthy: u64,
    missing_copies: u64,
    corrupt_copies: u64,
    differing_copies: u64,
    unreachable_copies: u64,
    repaired_copies: u64,
    problems: Vec<String>,
}

/// What one replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Copy {
    Good(u64),
    Missing,
    Corrupt,
    Unreachable,
}

pub async fn run(target: Target, repair: bool) -> anyhow::Result<()> {
    let info = super::client::cluster_info(&target).await?;
    let map = ClusterMap::new(info.epoch, info.nodes.iter().map(node_info).collect());
    let ring = Ring::new(&map);
    let mut peers = HashMap::new();
    for node in &map.nodes {
        let endpoint = Channel::from_shared(format!("http://{}", node.peer_addr))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(30));
        let channel =
            tokio::time::timeout(std::time::Duration::from_secs(3), endpoint.connect()).await;
        if let Ok(Ok(channel)) = channel {
            let client = PeerServiceClient::new(channel)
                .max_decoding_message_size(80 << 20)
                .max_encoding_message_size(80 << 20);
            peers.insert(node.id.clone(), client);
        }
    }
    let mut objects: BTreeMap<ObjectId, u8> = BTreeMap::new();
    for client in peers.values_mut() {
        let list = client
            .list_objects(v1::ListObjectsRequest {
                epoch: map.epoch,
                inodes_only: false,
            })
            .await
            .map_err(failed)?
            .into_inner();
        for o in list.objects.into_iter().filter(|o| !o.tombstone) {
            if let Ok(oid) = ObjectId::from_raw(o.oid) {
                objects.insert(oid, u8::try_from(o.copies).unwrap_or(1));
            }
        }
    }
    let mut report = Report {
        epoch: map.epoch,
        objects: objects.len() as u64,
        ..Report::default()
    };
    for (&oid, &copies) in &objects {
        let set: Vec<&NodeInfo> = ring
            .replicas(oid, usize::from(copies))
            .into_iter()
            .map(|i| &map.nodes[i])
            .collect();
        let mut found = Vec::new();
        for node in &set {
            found.push(digest(peers.get_mut(&node.id), map.epoch, oid).await);
        }
        let healthy = set.len() == usize::from(copies) && agree(&found);
        if healthy {
            report.healthy += 1;
            continue;
        }
        count(&mut report, oid, &set, &found, copies);
        if repair {
            report.repaired_copies += fix(&mut peers, map.epoch, oid, copies, &set, &found).await;
        }
    }
    let unhealthy = report.objects - report.healthy;
    let fixed_all = repair
        && report.unreachable_copies == 0
        && report.problems.len() as u64 == report.repaired_copies;
    if target.json {
        print_json(&report)?;
    } else {
        println!(
            "epoch {}: {} objects, {} healthy",
            report.epoch, report.objects, report.healthy
        );
        for problem in &report.problems {
            println!("  {problem}");
        }
        if repair {
            println!("repaired {} copies", report.repaired_copies);
        }
    }
    if unhealthy > 0 && !fixed_all {
        let hint = if repair {
            ""
        } else {
            "; `dog cluster check --repair` fixes what it can"
        };
        anyhow::bail!("{unhealthy} objects lack consistent replicas on all of their nodes{hint}");
    }
    Ok(())
}

fn node_info(n: &v1::Node) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        peer_addr: n.peer_addr.clone(),
        nbd_addr: n.nbd_addr.clone(),
        zone: n.zone.clone(),
        weight: n.capacity,
        joined_epoch: 0,
    }
}

async fn digest(
    client: Option<&mut PeerServiceClient<Channel>>,
    epoch: u64,
    oid: ObjectId,
) -> Copy {
    let Some(client) = client else {
        return Copy::Unreachable;
    };
    match client
        .object_digest(v1::ObjectDigestRequest {
            epoch,
            oid: oid.raw(),
        })
        .await
    {
        Ok(resp) => {
            let resp = resp.into_inner();
            if !resp.found {
                Copy::Missing
            } else if !resp.corrupt.is_empty() {
                Copy::Corrupt
            } else {
                Copy::Good(resp.digest)
            }
        }
        Err(_) => Copy::Unreachable,
    }
}

fn agree(found: &[Copy]) -> bool {
    match found.first() {
        Some(Copy::Good(d)) => found.iter().all(|c| *c == Copy::Good(*d)),
        _ => false,
    }
}

/// The digest most good copies share; the first (primary) wins a tie.
fn majority(found: &[Copy]) -> Option<u64> {
    let mut votes: Vec<(u64, usize)> = Vec::new();
    for copy in found {
        if let Copy::Good(d) = copy {
            match votes.iter_mut().find(|(v, _)| v == d) {
                Some((_, n)) => *n += 1,
                None => votes.push((*d, 1)),
            }
        }
    }
    let mut best: Option<(u64, usize)> = None;
    for &(d, n) in &votes {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((d, n));
        }
    }
    best.map(|(d, _)| d)
}

fn count(report: &mut Report, oid: ObjectId, set: &[&NodeInfo], found: &[Copy], copies: u8) {
    let best = majority(found);
    for (node, copy) in set.iter().zip(found) {
        let problem = match copy {
            Copy::Missing => Some((&mut report.missing_copies, "missing")),
            Copy::Corrupt => Some((&mut report.corrupt_copies, "corrupt")),
            Copy::Unreachable => Some((&mut report.unreachable_copies, "unreachable")),
            Copy::Good(d) if Some(*d) != best => {
                Some((&mut report.differing_copies, "differs from the others"))
            }
            Copy::Good(_) => None,
        };
        if let Some((counter, what)) = problem {
            *counter += 1;
            report
                .problems
                .push(format!("object {oid}: copy on node {} is {what}", node.id));
        }
    }
    if set.len() < usize::from(copies) {
        report.problems.push(format!(
            "object {oid}: only {} nodes for {copies} copies",
            set.len()
        ));
    }
}

/// Merges every readable copy, newest version of each block first, and sends the result to
/// every replica that differs from it (each merges it with its own copy, so a write that lands
/// meanwhile is kept). Returns how many copies were replaced.
async fn fix(
    peers: &mut HashMap<String, PeerServiceClient<Channel>>,
    epoch: u64,
    oid: ObjectId,
    copies: u8,
    set: &[&NodeInfo],
    found: &[Copy],
) -> u64 {
    let mut good = Vec::new();
    for (node, copy) in set.iter().zip(found) {
        if !matches!(copy, Copy::Good(_)) {
            continue;
        }
        let Some(client) = peers.get_mut(&node.id) else {
            continue;
        };
        let req = v1::FetchObjectRequest {
            oid: oid.raw(),
            epoch,
        };
        if let Ok(resp) = client.fetch_object(req).await
            && let Some(copy) = whole_copy(resp.into_inner(), copies)
        {
            good.push(copy);
        }
    }
    let Some(merged) = store::merge(&good, store::table_vid(oid)) else {
        return 0;
    };
    let digest = xxhash_rust::xxh3::xxh3_64(&merged.data);
    let mut repaired = 0;
    for (node, copy) in set.iter().zip(found) {
        if *copy == Copy::Good(digest) || *copy == Copy::Unreachable {
            continue;
        }
        let Some(client) = peers.get_mut(&node.id) else {
            continue;
        };
        let put = v1::PutObjectRequest {
            epoch,
            oid: oid.raw(),
            capacity: merged.spec.capacity,
            copies: u32::from(copies),
            data: merged.data.clone().into(),
            floor: merged.floor,
            versions: crate::peer::encode_versions(&merged.versions).into(),
            if_absent: false,
        };
        if client.put_object(put).await.is_ok() {
            repaired += 1;
        }
    }
    repaired
}

/// A fetched copy, if it is one.
fn whole_copy(resp: v1::FetchObjectResponse, copies: u8) -> Option<store::Copy> {
    if !resp.found {
        return None;
    }
    let versions = resp
        .versions
        .chunks(8)
        .map(|c| c.try_into().ok().map(u64::from_le_bytes))
        .collect::<Option<Vec<u64>>>()?;
    Some(store::Copy {
        spec: store::ObjectSpec {
            capacity: resp.capacity,
            copies,
        },
        floor: resp.floor,
        versions,
        data: resp.data.into(),
    })
}
