#![no_main]
//! Camera-viewer control messages (spec/control.md): decoding arbitrary bytes never
//! panics, and whatever decodes re-encodes to the same bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(message) = sightwire_media::control_messages::ControlMessage::decode(data) {
        assert_eq!(message.encode().as_deref(), Ok(data));
    }
});
