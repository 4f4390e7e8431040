//! A deliberately minimal NBD client for sending what real clients never send: malformed
//! options, out-of-range and oversized requests, bad magic. Real I/O tests use qemu-io,
//! qemu-img and libnbd's tools instead.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_GO: u32 = 7;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) | 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_TRIM: u16 = 4;
pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    /// Connects and reads the greeting; sends client flags (fixed newstyle + no zeroes).
    pub fn connect(port: u16) -> Self {
        Self::connect_with_flags(port, 3)
    }

    pub fn connect_with_flags(port: u16, flags: u32) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Self { stream };
        let mut greeting = [0u8; 18];
        raw.stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        raw.stream.write_all(&flags.to_be_bytes()).unwrap();
        raw
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        self.send_option_claiming(option, data.len() as u32, data);
    }

    /// Sends an option header claiming `len` bytes, followed by `data`.
    pub fn send_option_claiming(&mut self, option: u32, len: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_be_bytes().to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(data);
        let _ = self.stream.write_all(&msg);
    }

    /// Reads one option reply: (option, reply type, data).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut head = [0u8; 20];
        self.stream.read_exact(&mut head).unwrap();
        assert_eq!(
            u64::from_be_bytes(head[0..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).unwrap();
        (option, kind, data)
    }

    /// NBD_OPT_GO data for `name` with no info requests.
    pub fn go_data(name: &str) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        data
    }

    /// Negotiates `name` with NBD_OPT_GO; returns the export size.
    pub fn go(port: u16, name: &str) -> (Self, u64) {
        let mut raw = Self::connect(port);
        raw.send_option(OPT_GO, &Self::go_data(name));
        let mut size = None;
        loop {
            let (_, kind, data) = raw.option_reply();
            match kind {
                REP_INFO if data[0..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                }
                REP_INFO => {}
                REP_ACK => break,
                other => panic!(
                    "NBD_OPT_GO failed with reply {other:#x}: {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        (raw, size.expect("NBD_INFO_EXPORT"))
    }

    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        handle: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut msg = 0x2560_9513u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&kind.to_be_bytes());
        msg.extend_from_slice(&handle.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&length.to_be_bytes());
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg).unwrap();
    }

    /// Reads a simple reply: (handle, error). The caller reads any data that follows.
    pub fn reply(&mut self) -> (u64, u32) {
        let mut head = [0u8; 16];
        self.stream.read_exact(&mut head).unwrap();
        assert_eq!(
            u32::from_be_bytes(head[0..4].try_into().unwrap()),
            0x6744_6698
        );
        let error = u32::from_be_bytes(head[4..8].try_into().unwrap());
        (u64::from_be_bytes(head[8..16].try_into().unwrap()), error)
    }

    /// A successful read of `len` bytes at `offset`.
    pub fn read_ok(&mut self, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, CMD_READ, handle, offset, len, &[]);
        assert_eq!(self.reply(), (handle, 0));
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).unwrap();
        data
    }

    /// Whether the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
