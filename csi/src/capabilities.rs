//! Which volume capabilities the driver supports: block or an ext4/xfs file system; one
//! writer on one node, several writers on one node, readers on many nodes, and writers on
//! many nodes for block volumes only (a KubeVirt live migration: the gateways are coherent,
//! a file system mounted twice is not).

use crate::proto::csi::volume_capability::access_mode::Mode;
use crate::proto::csi::volume_capability::{AccessType, MountVolume};
use crate::proto::csi::{VolumeCapability, volume_capability::AccessMode};

/// File systems a Filesystem volume may have; the first is the default.
pub const FILE_SYSTEMS: [&str; 2] = ["ext4", "xfs"];

/// How a capability asks for a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// Why a capability is not supported, or how it asks for the volume.
pub fn check(capability: &VolumeCapability) -> Result<(Access, Mode), String> {
    let mode = capability
        .access_mode
        .as_ref()
        .map(AccessMode::mode)
        .ok_or("a volume capability without an access mode")?;
    let access = match &capability.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(MountVolume {
            fs_type,
            mount_flags,
            ..
        })) => {
            let fs_type = if fs_type.is_empty() {
                FILE_SYSTEMS[0].to_owned()
            } else {
                fs_type.clone()
            };
            if !FILE_SYSTEMS.contains(&fs_type.as_str()) {
                return Err(format!(
                    "file system {fs_type:?} is not supported: use one of {FILE_SYSTEMS:?}"
                ));
            }
            Access::Mount {
                fs_type,
                flags: mount_flags.clone(),
            }
        }
        None => return Err("a volume capability without an access type (block or mount)".into()),
    };
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeReaderOnly => {}
        Mode::MultiNodeMultiWriter if access == Access::Block => {}
        Mode::MultiNodeMultiWriter => {
            return Err("several writers on several nodes need a Block volume (volumeMode: Block): a file system cannot be mounted on two nodes at once".into());
        }
        Mode::MultiNodeSingleWriter => {
            return Err("access mode MULTI_NODE_SINGLE_WRITER is not supported: use MULTI_NODE_READER_ONLY for readers, or a writer mode".into());
        }
        Mode::Unknown => return Err("access mode UNKNOWN is not supported".into()),
    }
    Ok((access, mode))
}

/// Checks every capability; the first unsupported one says why.
pub fn check_all(capabilities: &[VolumeCapability]) -> Result<(), String> {
    if capabilities.is_empty() {
        return Err("volume capabilities are required".into());
    }
    capabilities.iter().try_for_each(|c| check(c).map(drop))
}

/// Whether the mode lets several nodes write at once (the volume is opened shared).
pub fn is_multi_writer(mode: Mode) -> bool {
    mode == Mode::MultiNodeMultiWriter
}

/// Whether the mode only reads.
pub fn is_read_only(mode: Mode) -> bool {
    matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::csi::volume_capability::BlockVolume;

    fn capability(access: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount(fs: &str) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })
    }

    #[test]
    fn live_migration_needs_block_and_file_systems_are_ext4_or_xfs() {
        let block = AccessType::Block(BlockVolume {});
        assert!(check(&capability(block.clone(), Mode::MultiNodeMultiWriter)).is_ok());
        let err = check(&capability(mount(""), Mode::MultiNodeMultiWriter)).unwrap_err();
        assert!(err.contains("Block"), "{err}");
        let (access, _) = check(&capability(mount(""), Mode::SingleNodeWriter)).unwrap();
        assert_eq!(
            access,
            Access::Mount {
                fs_type: "ext4".into(),
                flags: vec![]
            }
        );
        assert!(check(&capability(mount("xfs"), Mode::MultiNodeReaderOnly)).is_ok());
        assert!(check(&capability(mount("ntfs"), Mode::SingleNodeWriter)).is_err());
        assert!(check(&capability(block, Mode::MultiNodeSingleWriter)).is_err());
        assert!(check_all(&[]).is_err());
    }
}
