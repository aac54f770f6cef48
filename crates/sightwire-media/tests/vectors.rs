//! Loads `spec/vectors/media-packets.json` and checks decode and encode against it.

use bytes::BytesMut;
use serde_json::Value;
use sightwire_media::wire::{self, FeedbackEntry, NackEntry, Packet, Report, ReportEcho};
use sightwire_media::{Codec, StreamId};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/media-packets.json");
    let text = std::fs::read_to_string(path).expect("vector file present");
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn field(fields: &Value, name: &str) -> u64 {
    fields[name]
        .as_u64()
        .unwrap_or_else(|| panic!("field {name} missing"))
}

fn stream(fields: &Value) -> StreamId {
    StreamId::new(field(fields, "stream") as u8).expect("valid stream")
}

/// Re-encodes a decoded packet with the crate's encoders.
fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    match packet {
        Packet::Fragment { header, payload } => {
            out.extend_from_slice(&header.encode());
            out.extend_from_slice(payload);
        }
        Packet::Nack { nack_seq, entries } => {
            let entries: Vec<NackEntry> = wire::nack_entries(entries).collect();
            wire::encode_nack(*nack_seq, &entries, &mut out);
        }
        Packet::KeyframeRequest { stream } => wire::encode_keyframe_request(*stream, &mut out),
        Packet::Report(report) => wire::encode_report(report, &mut out),
        Packet::ControlData { seq, message } => wire::encode_control_data(*seq, message, &mut out),
        Packet::ControlAck {
            cumulative,
            selective,
        } => wire::encode_control_ack(*cumulative, *selective, &mut out),
        Packet::Feedback {
            base_seq,
            reference_us,
            entries,
        } => {
            let decoded: Vec<FeedbackEntry> =
                wire::feedback_entries(*base_seq, *reference_us, entries).collect();
            wire::encode_feedback(*base_seq, *reference_us, &decoded, &mut out);
        }
    }
    out.to_vec()
}

#[test]
fn valid_vectors_decode_to_their_fields_and_reencode_byte_exact() {
    let vectors = vectors();
    let valid = vectors["valid"].as_array().expect("valid list");
    assert!(valid.len() >= 9);
    for vector in valid {
        let name = vector["name"].as_str().unwrap();
        let bytes = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let fields = &vector["fields"];
        let packet = wire::decode(&bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
        match (&packet, vector["kind"].as_str().unwrap()) {
            (Packet::Fragment { header, payload }, "fragment") => {
                assert_eq!(header.stream, stream(fields), "{name}");
                assert_eq!(
                    header.codec,
                    Codec::from_u8(field(fields, "codec") as u8).unwrap()
                );
                assert_eq!(u64::from(header.flags), field(fields, "flags"));
                assert_eq!(u64::from(header.packet_seq), field(fields, "packet_seq"));
                assert_eq!(u64::from(header.frame_seq), field(fields, "frame_seq"));
                assert_eq!(header.capture_time_us, field(fields, "capture_time_us"));
                assert_eq!(u64::from(header.frame_size), field(fields, "frame_size"));
                assert_eq!(
                    u64::from(header.fragment_index),
                    field(fields, "fragment_index")
                );
                assert_eq!(
                    u64::from(header.fragment_count),
                    field(fields, "fragment_count")
                );
                assert_eq!(hex::encode(payload), fields["payload"].as_str().unwrap());
            }
            (Packet::Nack { nack_seq, entries }, "nack") => {
                assert_eq!(u64::from(*nack_seq), field(fields, "nack_seq"));
                let decoded: Vec<NackEntry> = wire::nack_entries(entries).collect();
                let expected: Vec<NackEntry> = fields["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| NackEntry {
                        stream: stream(entry),
                        frame_seq: field(entry, "frame_seq") as u32,
                        first_fragment: field(entry, "first_fragment") as u16,
                        fragment_count: field(entry, "fragment_count") as u16,
                    })
                    .collect();
                assert_eq!(decoded, expected, "{name}");
            }
            (Packet::KeyframeRequest { stream: decoded }, "keyframe_request") => {
                assert_eq!(*decoded, stream(fields));
            }
            (Packet::Report(report), "report") => {
                let echo = fields["echo"].as_object().map(|_| ReportEcho {
                    timestamp_ms: field(&fields["echo"], "timestamp_ms") as u32,
                    delay_ms: field(&fields["echo"], "delay_ms") as u32,
                });
                let expected = Report {
                    timestamp_ms: field(fields, "timestamp_ms") as u32,
                    echo,
                    interval_ms: field(fields, "interval_ms") as u32,
                    packets_expected: field(fields, "packets_expected") as u32,
                    packets_received: field(fields, "packets_received") as u32,
                    bytes_received: field(fields, "bytes_received") as u32,
                    jitter_us: field(fields, "jitter_us") as u32,
                };
                assert_eq!(*report, expected, "{name}");
            }
            (Packet::ControlData { seq, message }, "control_data") => {
                assert_eq!(u64::from(*seq), field(fields, "seq"));
                assert_eq!(hex::encode(message), fields["message"].as_str().unwrap());
            }
            (
                Packet::ControlAck {
                    cumulative,
                    selective,
                },
                "control_ack",
            ) => {
                assert_eq!(u64::from(*cumulative), field(fields, "cumulative"));
                assert_eq!(u64::from(*selective), field(fields, "selective"));
            }
            (
                Packet::Feedback {
                    base_seq,
                    reference_us,
                    entries,
                },
                "feedback",
            ) => {
                assert_eq!(u64::from(*base_seq), field(fields, "base_seq"));
                assert_eq!(u64::from(*reference_us), field(fields, "reference_us"));
                let decoded: Vec<FeedbackEntry> =
                    wire::feedback_entries(*base_seq, *reference_us, entries).collect();
                let expected: Vec<FeedbackEntry> = fields["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| FeedbackEntry {
                        packet_seq: field(entry, "packet_seq") as u32,
                        arrival_us: field(entry, "arrival_us") as u32,
                    })
                    .collect();
                assert_eq!(decoded, expected, "{name}");
            }
            (other, kind) => panic!("{name}: decoded {other:?}, vector says {kind}"),
        }
        assert_eq!(encode(&packet), bytes, "{name}: re-encoding differs");
        assert!(
            wire::is_media_packet(&bytes),
            "{name}: outside the media type range"
        );
    }
}

#[test]
fn invalid_vectors_fail_with_the_named_error() {
    let vectors = vectors();
    let invalid = vectors["invalid"].as_array().expect("invalid list");
    assert!(invalid.len() >= 15);
    for vector in invalid {
        let name = vector["name"].as_str().unwrap();
        let bytes = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let error = wire::decode(&bytes).expect_err(name);
        let variant = format!("{error:?}");
        let expected = vector["error"].as_str().unwrap();
        assert!(
            variant == expected
                || variant.starts_with(&format!("{expected}("))
                || variant.starts_with(&format!("{expected} {{")),
            "{name}: got {variant}, vector says {expected}"
        );
    }
}

#[test]
fn media_type_range_excludes_other_first_bytes() {
    assert!(!wire::is_media_packet(&[]));
    assert!(!wire::is_media_packet(&[0x01, 0, 0]));
    assert!(!wire::is_media_packet(&[0x3F]));
    assert!(!wire::is_media_packet(&[0x50]));
    assert!(wire::is_media_packet(&[0x4F]));
}
