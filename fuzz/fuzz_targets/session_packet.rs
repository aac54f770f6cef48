#![no_main]
//! Session packet and viewer-auth decoders on arbitrary input: never panic, and whatever
//! decodes re-encodes to the same bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightwire_session::fuzzing::decode_packet(data));
