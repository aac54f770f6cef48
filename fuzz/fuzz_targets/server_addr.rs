#![no_main]
//! The server address parser (`--rendezvous`, `[relay] address`) on arbitrary input: never
//! panics, and whatever is accepted prints as text that parses back to the same value.
use sightwire_signal::server_addr::ServerAddr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(address) = text.parse::<ServerAddr>()
    {
        assert_eq!(address.to_string().parse::<ServerAddr>(), Ok(address));
    }
});
