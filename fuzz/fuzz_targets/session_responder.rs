#![no_main]
//! A device's session table (the responder's handshake entry point, cookies, transport,
//! timers) fed attacker datagrams next to a genuine session: no panic, no response larger
//! than its request, limits hold, and the genuine session keeps working.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightwire_session::fuzzing::responder_input(data));
