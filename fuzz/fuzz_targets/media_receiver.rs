#![no_main]
//! The media receiver entry point on arbitrary packet sequences: never panics, memory
//! limits hold after every packet, and timers always make progress.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sightwire_media::fuzzing::receive_packets(data);
});
