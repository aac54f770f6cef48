//! Loads `spec/vectors/punch-probes.json` (generated independently by
//! `spec/vectors/punch-gen.py`) and checks the codec against it both ways.

use std::net::SocketAddr;

use serde_json::Value;
use sightwire_punch::probe::{MAX_PROBE_LEN, Probe, ProbeKind, TRANSACTION_ID_LEN, TransactionId};
use sightwire_punch::{ProbeError, PunchKey, Role};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/punch-probes.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("vector JSON")
}

fn key(v: &Value) -> PunchKey {
    let bytes: [u8; 32] = hex::decode(v["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    PunchKey::new(bytes)
}

#[test]
fn valid_vectors_decode_and_encode_exactly() {
    let v = vectors();
    let key = key(&v);
    let valid = v["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 5);
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let packet = hex::decode(case["packet"].as_str().unwrap()).unwrap();
        let transaction: [u8; TRANSACTION_ID_LEN] =
            hex::decode(case["transaction"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
        let sender = match case["sender"].as_str().unwrap() {
            "controlling" => Role::Controlling,
            _ => Role::Controlled,
        };
        let kind = match case["kind"].as_str().unwrap() {
            "request" => ProbeKind::Request {
                nominate: case["nominate"].as_bool().unwrap(),
            },
            "response" => ProbeKind::Response {
                observed: case["observed"]
                    .as_str()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap(),
            },
            "open" => ProbeKind::Open,
            other => panic!("{name}: unknown kind {other}"),
        };
        let expected = Probe {
            kind,
            sender,
            transaction: TransactionId(transaction),
        };
        assert_eq!(Probe::decode(&packet, &key), Ok(expected), "{name}: decode");
        let mut buf = [0u8; MAX_PROBE_LEN];
        let len = expected.encode(&key, &mut buf);
        assert_eq!(&buf[..len], packet.as_slice(), "{name}: encode");
    }
}

#[test]
fn invalid_vectors_fail_with_the_named_error() {
    let v = vectors();
    let key = key(&v);
    let invalid = v["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 10);
    for case in invalid {
        let name = case["name"].as_str().unwrap();
        let packet = hex::decode(case["packet"].as_str().unwrap()).unwrap();
        let error = Probe::decode(&packet, &key).expect_err(name);
        let variant = match error {
            ProbeError::Empty => "Empty",
            ProbeError::NotPunch(_) => "NotPunch",
            ProbeError::UnknownType(_) => "UnknownType",
            ProbeError::Truncated { .. } => "Truncated",
            ProbeError::UnsupportedVersion(_) => "UnsupportedVersion",
            ProbeError::UnknownAddressFamily(_) => "UnknownAddressFamily",
            ProbeError::TrailingBytes { .. } => "TrailingBytes",
            ProbeError::BadTag => "BadTag",
            ProbeError::InvalidFlags(_) => "InvalidFlags",
            ProbeError::ReservedNotZero(_) => "ReservedNotZero",
            other => panic!("{name}: unexpected {other:?}"),
        };
        assert_eq!(variant, case["error"].as_str().unwrap(), "{name}");
    }
}
