#![no_main]
//! Probe decoder (decode → re-encode must reproduce the input) and a running agent's
//! `handle_datagram` over a sequence of datagrams and timeouts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sightwire_punch::fuzzing::probe_decode(data);
    sightwire_punch::fuzzing::agent_datagrams(data);
});
