//! Property tests and the spec's test vectors (`spec/vectors/stream-frames.json`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sightwire_stream::{DecodeError, Decoder, MAX_BUFFERED, MAX_FRAME_LEN, PREAMBLE, encode_frame};

/// Feeds `wire` in chunks of the given sizes (cycled) and collects datagrams until the
/// end or the first error.
fn decode_chunked(
    mut decoder: Decoder,
    wire: &[u8],
    chunks: &[usize],
) -> (Vec<Bytes>, Option<DecodeError>) {
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let mut part = &rest[..size];
        rest = &rest[size..];
        while !part.is_empty() {
            let taken = decoder.push(part);
            part = &part[taken..];
            loop {
                match decoder.next_datagram() {
                    Ok(Some(datagram)) => out.push(datagram),
                    Ok(None) => break,
                    Err(error) => return (out, Some(error)),
                }
            }
            assert!(taken > 0 || part.is_empty(), "a full decoder must yield");
        }
    }
    (out, None)
}

proptest! {
    #[test]
    fn round_trip_in_any_split(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=MAX_FRAME_LEN), 0..12),
        chunks in prop::collection::vec(1usize..3000, 1..8),
    ) {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&PREAMBLE);
        for datagram in &datagrams {
            encode_frame(datagram, &mut wire).unwrap();
        }
        let (got, error) = decode_chunked(Decoder::server(), &wire, &chunks);
        prop_assert_eq!(error, None);
        prop_assert_eq!(got.len(), datagrams.len());
        for (got, sent) in got.iter().zip(&datagrams) {
            prop_assert_eq!(&got[..], &sent[..]);
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        input in prop::collection::vec(any::<u8>(), 0..8000),
        chunks in prop::collection::vec(1usize..3000, 1..8),
        server in any::<bool>(),
    ) {
        let decoder = if server { Decoder::server() } else { Decoder::client() };
        let (got, _) = decode_chunked(decoder, &input, &chunks);
        for datagram in got {
            prop_assert!((1..=MAX_FRAME_LEN).contains(&datagram.len()));
        }
        prop_assert!(MAX_BUFFERED == PREAMBLE.len() + 2 + MAX_FRAME_LEN);
    }
}

#[test]
fn spec_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/stream-frames.json");
    let text = std::fs::read_to_string(path).expect("spec/vectors/stream-frames.json");
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let wire = hex::decode(vector["wire"].as_str().unwrap()).unwrap();
        let decoder = match vector["side"].as_str().unwrap() {
            "server" => Decoder::server(),
            "client" => Decoder::client(),
            other => panic!("{name}: side {other}"),
        };
        let (got, error) = decode_chunked(decoder, &wire, &[1]);
        let expected: Vec<Vec<u8>> = vector["datagrams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| hex::decode(d.as_str().unwrap()).unwrap())
            .collect();
        let got: Vec<Vec<u8>> = got.iter().map(|d| d.to_vec()).collect();
        assert_eq!(got, expected, "{name}");
        let error = error.map(|e| match e {
            DecodeError::BadPreamble { .. } => "bad_preamble",
            DecodeError::EmptyFrame => "empty_frame",
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            _ => "other",
        });
        assert_eq!(error, vector["error"].as_str(), "{name}");
        // Whatever decodes re-encodes to the same bytes.
        if error.is_none() && vector["partial"].as_bool() != Some(true) {
            let mut again = BytesMut::new();
            if vector["side"] == "server" {
                again.extend_from_slice(&PREAMBLE);
            }
            for datagram in &expected {
                encode_frame(datagram, &mut again).unwrap();
            }
            assert_eq!(&again[..], &wire[..], "{name}");
        }
    }
}
