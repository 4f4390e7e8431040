//! CSI names and ids, and the cluster's names for them.
//!
//! - A volume's id is its name in the cluster. The CO's name (Kubernetes: `pvc-<uid>`) is used
//!   as it is when it is a valid volume name, else `csi-<hash of it>`: the same CSI name always
//!   gives the same volume, which makes CreateVolume idempotent.
//! - A snapshot's id is `VOLUME@TAG`, the cluster's own name of a snapshot, the tag made from
//!   the CSI snapshot name the same way.
//! - A clone of a volume (not of a snapshot) needs a snapshot to clone: a hidden one, tagged
//!   [`CLONE_TAG_PREFIX`] plus the clone's name, deleted with the clone and never listed.

use sheepdog_model::inode::validate_name;

/// Tags of the snapshots taken to clone a volume.
pub const CLONE_TAG_PREFIX: &str = "csi-clone.";

/// Longest CSI name used verbatim (longer ones are hashed).
const MAX_VERBATIM: usize = 128;

/// The cluster's name for the CSI name `name` (a volume name or a snapshot tag).
pub fn cluster_name(name: &str) -> String {
    if name.len() <= MAX_VERBATIM && validate_name(name).is_ok() && !name.starts_with("csi-") {
        return name.to_owned();
    }
    format!("csi-{:016x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()))
}

/// The tag of the hidden snapshot a clone of a volume is made from.
pub fn clone_tag(clone: &str) -> String {
    format!("{CLONE_TAG_PREFIX}{clone}")
}

pub fn snapshot_id(volume: &str, tag: &str) -> String {
    format!("{volume}@{tag}")
}

/// Splits a snapshot id into volume and tag; `None` if it is not one of ours.
pub fn parse_snapshot_id(id: &str) -> Option<(&str, &str)> {
    let (volume, tag) = id.split_once('@')?;
    let ours = validate_name(volume).is_ok()
        && validate_name(tag).is_ok()
        && !tag.starts_with(CLONE_TAG_PREFIX);
    ours.then_some((volume, tag))
}

/// A volume id that could name a volume; others name none.
pub fn is_volume_id(id: &str) -> bool {
    validate_name(id).is_ok()
}

/// Where a listing continues: the index of its next entry.
pub fn parse_token(token: &str, len: usize) -> Option<usize> {
    if token.is_empty() {
        return Some(0);
    }
    let index: usize = token.parse().ok()?;
    (index <= len).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_are_kept_and_others_hashed_the_same_way_each_time() {
        let pvc = "pvc-6c1f0d36-1a4e-4c4b-9d8e-0f6f1b2c3d4e";
        assert_eq!(cluster_name(pvc), pvc);
        let odd = "a/b@c";
        assert_eq!(cluster_name(odd), cluster_name(odd));
        assert!(cluster_name(odd).starts_with("csi-"));
        assert!(validate_name(&cluster_name(odd)).is_ok());
        assert_ne!(
            cluster_name("x".repeat(200).as_str()),
            cluster_name(&"x".repeat(201))
        );
        // A name that looks like a hashed one is hashed too: two CSI names, two volumes.
        assert_ne!(cluster_name(&cluster_name(odd)), cluster_name(odd));
    }

    #[test]
    fn snapshot_ids_name_a_volume_and_a_visible_tag() {
        assert_eq!(parse_snapshot_id("vm1@daily"), Some(("vm1", "daily")));
        assert_eq!(parse_snapshot_id("vm1"), None);
        assert_eq!(parse_snapshot_id("@x"), None);
        assert_eq!(parse_snapshot_id("vm1@csi-clone.c1"), None);
    }

    #[test]
    fn tokens_are_positions_in_the_listing() {
        assert_eq!(parse_token("", 3), Some(0));
        assert_eq!(parse_token("2", 3), Some(2));
        assert_eq!(parse_token("3", 3), Some(3));
        assert_eq!(parse_token("4", 3), None);
        assert_eq!(parse_token("x", 3), None);
    }
}
