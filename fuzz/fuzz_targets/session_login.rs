#![no_main]
//! Arbitrary bytes as each PAKE login message: never panic, never accept a forgery.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightwire_session::fuzzing::login_messages(data));
