#![no_main]
//! Every device ID and URI parser on arbitrary input: never panics, and whatever is
//! accepted formats canonically and parses back to the same value.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        sightwire_id::fuzzing::parse_all(text);
    }
});
