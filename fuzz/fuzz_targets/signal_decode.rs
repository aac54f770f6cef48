#![no_main]
//! Signaling decoders (datagram, stream codec, certificate) on arbitrary input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightwire_signal::fuzzing::decode_all(data));
