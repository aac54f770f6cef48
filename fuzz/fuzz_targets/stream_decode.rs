#![no_main]
//! The stream decoder (spec/stream.md §2) on arbitrary bytes, as a server (preamble first)
//! and as a client: never panics, never yields an empty or oversize datagram.
use sightwire_stream::{Decoder, MAX_FRAME_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for mut decoder in [Decoder::server(), Decoder::client()] {
        let mut rest = data;
        'feed: while !rest.is_empty() {
            let taken = decoder.push(rest);
            rest = &rest[taken..];
            loop {
                match decoder.next_datagram() {
                    Ok(Some(datagram)) => assert!((1..=MAX_FRAME_LEN).contains(&datagram.len())),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            assert!(taken > 0 || rest.is_empty());
        }
    }
});
