//! Fuzzes every NBD parser that sees client bytes: client flags, option headers, option data
//! (INFO/GO, EXPORT_NAME) and request headers. Run: `make fuzz` (nightly + cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sheepdog_node_agent::nbd::proto::*;

fuzz_target!(|data: &[u8]| {
    if let Some(flags) = data.get(0..4) {
        let _ = parse_client_flags(u32::from_be_bytes(flags.try_into().unwrap()));
    }
    if let Some(header) = data.get(0..OPTION_HEADER_LEN) {
        let _ = parse_option_header(header.try_into().unwrap());
    }
    if let Some(header) = data.get(0..REQUEST_LEN) {
        if let Ok(request) = Request::parse(header.try_into().unwrap()) {
            assert!(request.payload_len() <= request.length);
        }
    }
    if let Some(info) = parse_info_request(data) {
        assert!(info.name.len() <= MAX_NAME_LEN);
    }
    let _ = parse_export_name(data);
});
