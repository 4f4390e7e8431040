//! NBD protocol constants and message parsers, transcribed from the NBD protocol specification
//! (`doc/proto.md` of the NetworkBlockDevice/nbd project, sections "Handshake", "Option types",
//! "Option reply types", "Transmission phase" and "Error values").
//!
//! The parsers are pure functions over byte slices so that they can be fuzzed
//! (`fuzz/fuzz_targets/nbd_parsers.rs`) and property-tested.

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, sent by the server in the greeting and by the client before each option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic number of option replies.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// Information types of NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Error values.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Largest READ or WRITE payload served: 32 MiB, the size QEMU assumes.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option data accepted (an export name is at most 4096 bytes).
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest export name the spec allows.
pub const MAX_NAME_LEN: usize = 4096;

/// Something a peer sent that breaks the protocol so badly that the connection must end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("bad request magic {0:#x}")]
    RequestMagic(u32),
    #[error("bad option magic {0:#x}")]
    OptionMagic(u64),
    #[error("unknown client flags {0:#x}")]
    ClientFlags(u32),
    #[error("option data of {0} bytes is larger than {MAX_OPTION_LEN}")]
    OptionTooLarge(u32),
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn parse(buf: &[u8; REQUEST_LEN]) -> Result<Self, ProtocolError> {
        let magic = be_u32(&buf[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::RequestMagic(magic));
        }
        Ok(Self {
            flags: u16::from_be_bytes([buf[4], buf[5]]),
            kind: u16::from_be_bytes([buf[6], buf[7]]),
            handle: be_u64(&buf[8..16]),
            offset: be_u64(&buf[16..24]),
            length: be_u32(&buf[24..28]),
        })
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.length
        } else {
            0
        }
    }
}

/// Checks the client flags that follow the greeting.
pub fn parse_client_flags(flags: u32) -> Result<bool, ProtocolError> {
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::ClientFlags(flags));
    }
    Ok(flags & FLAG_C_NO_ZEROES != 0)
}

/// An option header: (option, data length).
pub fn parse_option_header(buf: &[u8; OPTION_HEADER_LEN]) -> Result<(u32, u32), ProtocolError> {
    let magic = be_u64(&buf[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtocolError::OptionMagic(magic));
    }
    let (option, len) = (be_u32(&buf[8..12]), be_u32(&buf[12..16]));
    if len > MAX_OPTION_LEN {
        return Err(ProtocolError::OptionTooLarge(len));
    }
    Ok((option, len))
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

/// Parses NBD_OPT_INFO/GO data; `None` means malformed (reply NBD_REP_ERR_INVALID).
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let name_len = be_u32(data.get(0..4)?) as usize;
    if name_len > MAX_NAME_LEN {
        return None;
    }
    let name = std::str::from_utf8(data.get(4..4 + name_len)?)
        .ok()?
        .to_owned();
    let rest = data.get(4 + name_len..)?;
    let count = usize::from(u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?));
    let list = rest.get(2..)?;
    if list.len() != 2 * count {
        return None;
    }
    let infos = list
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some(InfoRequest { name, infos })
}

/// Parses NBD_OPT_EXPORT_NAME data; `None` when it is not a valid name.
pub fn parse_export_name(data: &[u8]) -> Option<String> {
    if data.len() > MAX_NAME_LEN {
        return None;
    }
    std::str::from_utf8(data).ok().map(str::to_owned)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[0..4].try_into().unwrap())
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[0..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse_in_network_order() {
        let mut buf = [0u8; REQUEST_LEN];
        buf[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        buf[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        buf[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        buf[8..16].copy_from_slice(&7u64.to_be_bytes());
        buf[16..24].copy_from_slice(&4096u64.to_be_bytes());
        buf[24..28].copy_from_slice(&512u32.to_be_bytes());
        let req = Request::parse(&buf).unwrap();
        assert_eq!(
            req,
            Request {
                flags: 1,
                kind: 1,
                handle: 7,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(req.payload_len(), 512);
        buf[0] = 0;
        assert!(Request::parse(&buf).is_err());
    }

    #[test]
    fn info_requests_parse_and_malformed_ones_do_not() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"vm1");
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let parsed = parse_info_request(&data).unwrap();
        assert_eq!(
            parsed,
            InfoRequest {
                name: "vm1".into(),
                infos: vec![INFO_BLOCK_SIZE]
            }
        );
        assert_eq!(parse_info_request(&data[..data.len() - 1]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn unknown_client_flags_and_huge_options_are_refused() {
        assert_eq!(parse_client_flags(3), Ok(true));
        assert!(parse_client_flags(4).is_err());
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        hdr[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        hdr[12..16].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert_eq!(
            parse_option_header(&hdr),
            Err(ProtocolError::OptionTooLarge(MAX_OPTION_LEN + 1))
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_info_request(&bytes);
            let _ = parse_export_name(&bytes);
            if bytes.len() >= REQUEST_LEN {
                let _ = Request::parse(bytes[..REQUEST_LEN].try_into().unwrap());
            }
            if bytes.len() >= OPTION_HEADER_LEN {
                let _ = parse_option_header(bytes[..OPTION_HEADER_LEN].try_into().unwrap());
            }
        }
    }
}
