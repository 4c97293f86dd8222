//! The discovery handshake and lookup frames: decoding arbitrary bytes never panics (header
//! and body alike, under any body limit), and whatever decodes re-encodes to a frame that
//! decodes to the same message. The tcp fabric's address parser and the `host:port/name`
//! splitter get the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::discovery::{split_remote_name, wire};
use transport::fabric::tcp::TcpAddress;

fuzz_target!(|data: &[u8]| {
    let max = data.first().map_or(0, |&b| (b as usize) << 8);
    for limit in [max, wire::DEFAULT_MAX_BODY] {
        if let Ok(msg) = wire::decode(data, limit) {
            let bytes = wire::encode(&msg).expect("a decoded message is within limits");
            let again = wire::decode(&bytes, usize::MAX).expect("re-encoded frame decodes");
            assert_eq!(again, msg);
        }
    }
    if data.len() >= wire::HEADER_LEN {
        if let Ok(h) = wire::decode_header(&data[..wire::HEADER_LEN], wire::DEFAULT_MAX_BODY) {
            assert!(h.len <= wire::DEFAULT_MAX_BODY);
            let body = &data[wire::HEADER_LEN..];
            let _ = wire::decode_body(&h, &body[..h.len.min(body.len())]);
        }
    }
    let _ = TcpAddress::parse(0, data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some((host, seg)) = split_remote_name(s) {
            assert!(!host.is_empty() && !seg.is_empty());
        }
    }
});
