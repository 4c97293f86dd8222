//! Descriptor decoding never panics, and whatever decodes re-encodes to a form that decodes to
//! the same descriptor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::SegmentDescriptor;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = SegmentDescriptor::decode(data) {
        let bytes = d.encode().expect("a decoded descriptor is within limits");
        let again = SegmentDescriptor::decode(&bytes).expect("re-encoded descriptor decodes");
        assert_eq!(again, d);
        // A current-version input is canonical: re-encoding reproduces it byte for byte.
        if data.get(5) == Some(&transport::descriptor::FORMAT_MINOR) {
            assert_eq!(bytes, data);
        }
    }
});
