//! Loads `spec/vectors/control-messages.json` and checks the control-message codec
//! against it: valid messages decode to their fields and re-encode byte for byte, invalid
//! ones fail with the named error.

use serde_json::Value;
use sightwire_media::control_messages::{
    CatalogStream, ControlMessage, ControlMessageError, SourceState, StatusReason, Track,
};
use sightwire_media::{Codec, StreamId};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/control-messages.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file present"))
        .expect("vector file is JSON")
}

fn byte(value: &Value) -> u8 {
    u8::try_from(value.as_u64().expect("number")).expect("byte")
}

fn codec(value: &Value) -> Codec {
    Codec::from_u8(byte(value)).expect("assigned codec")
}

fn text(value: &Value) -> String {
    value.as_str().expect("string").to_owned()
}

fn expected(fields: &Value) -> ControlMessage {
    match fields["type"].as_str().expect("type") {
        "catalog" => ControlMessage::Catalog {
            streams: fields["streams"]
                .as_array()
                .expect("streams")
                .iter()
                .map(|s| CatalogStream {
                    name: text(&s["name"]),
                    tracks: s["tracks"]
                        .as_array()
                        .expect("tracks")
                        .iter()
                        .map(|t| Track {
                            stream: StreamId::new(byte(&t["stream"])).expect("id"),
                            codec: codec(&t["codec"]),
                        })
                        .collect(),
                })
                .collect(),
        },
        "select" => ControlMessage::Select {
            stream: text(&fields["stream"]),
            accepts: fields["accepts"]
                .as_array()
                .expect("accepts")
                .iter()
                .map(codec)
                .collect(),
        },
        "status" => ControlMessage::Status {
            state: [
                SourceState::Running,
                SourceState::Starting,
                SourceState::Failing,
            ][usize::from(byte(&fields["state"]))],
            reason: [
                StatusReason::None,
                StatusReason::SourceLoginRefused,
                StatusReason::SourceUnreachable,
                StatusReason::SourceNoMedia,
                StatusReason::CodecNotAccepted,
                StatusReason::UnknownStream,
            ][usize::from(byte(&fields["reason"]))],
            text: text(&fields["text"]),
        },
        other => panic!("unknown vector type {other}"),
    }
}

#[test]
fn valid_vectors_decode_to_their_fields_and_reencode_byte_exact() {
    let vectors = vectors();
    let valid = vectors["valid"].as_array().expect("valid list");
    assert!(valid.len() >= 7);
    for vector in valid {
        let name = vector["name"].as_str().expect("name");
        let bytes = hex::decode(vector["hex"].as_str().expect("hex")).expect("hex");
        let message = ControlMessage::decode(&bytes)
            .unwrap_or_else(|e| panic!("{name}: does not decode: {e}"));
        assert_eq!(message, expected(&vector["fields"]), "{name}");
        assert_eq!(message.encode().expect("encodes"), bytes, "{name}");
    }
}

#[test]
fn invalid_vectors_fail_with_the_named_error() {
    let vectors = vectors();
    for vector in vectors["invalid"].as_array().expect("invalid list") {
        let name = vector["name"].as_str().expect("name");
        let bytes = hex::decode(vector["hex"].as_str().expect("hex")).expect("hex");
        let error: ControlMessageError = ControlMessage::decode(&bytes).expect_err(name);
        let variant = format!("{error:?}");
        let wanted = vector["error"].as_str().expect("error");
        assert!(
            variant.starts_with(wanted),
            "{name}: got {variant}, want {wanted}"
        );
    }
}
