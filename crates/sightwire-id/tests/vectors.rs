//! Checks the crate against the test vectors of `spec/id.md` (`spec/vectors/id.json`,
//! written by the independent generator `spec/vectors/id-gen.py`).

use serde::Deserialize;
use sightwire_id::{
    DeviceId, DeviceUri, KeyFingerprint, MAX_INPUT_LEN, ParseError, PublicKey, UriError, crc8,
};

#[derive(Deserialize)]
struct Vectors {
    crc8: Vec<CrcVector>,
    accept: Vec<AcceptVector>,
    reject: Vec<RejectVector>,
    checked: Vec<CheckedVector>,
    fingerprint: Vec<FingerprintVector>,
    uri_accept: Vec<UriAcceptVector>,
    uri_reject: Vec<UriRejectVector>,
}

#[derive(Deserialize)]
struct CrcVector {
    input_hex: String,
    crc: String,
}

#[derive(Deserialize)]
struct AcceptVector {
    input: String,
    id: String,
}

#[derive(Deserialize)]
struct RejectVector {
    input: String,
    error: String,
    ch: Option<char>,
    position: Option<usize>,
    digits: Option<usize>,
    first_octet: Option<u8>,
    len: Option<usize>,
    looks_like: Option<char>,
}

#[derive(Deserialize)]
struct CheckedVector {
    id: String,
    checked: String,
}

#[derive(Deserialize)]
struct FingerprintVector {
    public_key_hex: String,
    fingerprint: String,
}

#[derive(Deserialize)]
struct UriAcceptVector {
    uri: String,
    id: String,
    fingerprint: String,
    canonical: String,
}

#[derive(Deserialize)]
struct UriRejectVector {
    uri: String,
    error: String,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/id.json");
    let text = std::fs::read_to_string(path).expect("spec/vectors/id.json is readable");
    serde_json::from_str(&text).expect("spec/vectors/id.json is well-formed")
}

/// The error names used in the spec.
fn parse_error_name(error: &ParseError) -> &'static str {
    match error {
        ParseError::Empty => "empty",
        ParseError::TooLong { .. } => "too-long",
        ParseError::InvalidCharacter { .. } => "invalid-character",
        ParseError::LookAlike { .. } => "look-alike",
        ParseError::WrongLength { .. } => "wrong-length",
        ParseError::CheckMismatch => "check-mismatch",
        ParseError::MissingCheck => "missing-check",
        ParseError::Multicast { .. } => "multicast",
        ParseError::AllZeros => "all-zeros",
        ParseError::Broadcast => "broadcast",
        _ => "unknown",
    }
}

fn uri_error_name(error: &UriError) -> &'static str {
    match error {
        UriError::TooLong { .. } => "too-long",
        UriError::WrongScheme => "wrong-scheme",
        UriError::InvalidId(_) => "invalid-id",
        UriError::MissingFingerprint => "missing-fingerprint",
        UriError::DuplicateParameter { .. } => "duplicate-parameter",
        UriError::MalformedParameter { .. } => "malformed-parameter",
        UriError::InvalidFingerprint(_) => "invalid-fingerprint",
        _ => "unknown",
    }
}

#[test]
fn crc8_vectors() {
    let vectors = vectors();
    assert!(!vectors.crc8.is_empty());
    for v in vectors.crc8 {
        let input = hex::decode(&v.input_hex).unwrap();
        assert_eq!(format!("{:02X}", crc8(&input)), v.crc, "{}", v.input_hex);
    }
}

#[test]
fn accepted_inputs() {
    let vectors = vectors();
    assert!(!vectors.accept.is_empty());
    // The vectors exercise the input limit exactly.
    assert!(
        vectors
            .accept
            .iter()
            .any(|v| v.input.len() == MAX_INPUT_LEN)
    );
    assert!(
        vectors
            .reject
            .iter()
            .any(|v| v.input.len() == MAX_INPUT_LEN + 1 && v.error == "too-long")
    );
    for v in vectors.accept {
        let id: DeviceId = v
            .input
            .parse()
            .unwrap_or_else(|e| panic!("{:?}: {e}", v.input));
        assert_eq!(id.to_string(), v.id, "{:?}", v.input);
    }
}

#[test]
fn rejected_inputs() {
    let vectors = vectors();
    assert!(!vectors.reject.is_empty());
    for v in vectors.reject {
        let error = v.input.parse::<DeviceId>().unwrap_err();
        assert_eq!(parse_error_name(&error), v.error, "{:?}", v.input);
        // The checked parser reads characters the same way.
        if matches!(
            v.error.as_str(),
            "invalid-character" | "look-alike" | "too-long" | "empty"
        ) {
            assert_eq!(DeviceId::parse_checked(&v.input), Err(error));
        }
        match error {
            ParseError::InvalidCharacter { ch, position } => {
                assert_eq!(Some(ch), v.ch, "{:?}", v.input);
                assert_eq!(Some(position), v.position, "{:?}", v.input);
                assert_eq!(v.looks_like, None);
            }
            ParseError::LookAlike {
                ch,
                position,
                looks_like,
            } => {
                assert_eq!(Some(ch), v.ch, "{:?}", v.input);
                assert_eq!(Some(position), v.position, "{:?}", v.input);
                assert_eq!(Some(looks_like), v.looks_like, "{:?}", v.input);
            }
            ParseError::WrongLength { digits } => assert_eq!(Some(digits), v.digits),
            ParseError::Multicast { first_octet } => assert_eq!(Some(first_octet), v.first_octet),
            ParseError::TooLong { len, .. } => assert_eq!(Some(len), v.len),
            _ => {}
        }
    }
}

#[test]
fn checked_forms() {
    let vectors = vectors();
    assert!(!vectors.checked.is_empty());
    for v in vectors.checked {
        let id: DeviceId = v.id.parse().unwrap();
        assert_eq!(id.to_checked_string(), v.checked);
        assert_eq!(DeviceId::parse_checked(&v.checked), Ok(id));
    }
}

#[test]
fn fingerprints() {
    let vectors = vectors();
    assert!(!vectors.fingerprint.is_empty());
    for v in vectors.fingerprint {
        let key: PublicKey = v.public_key_hex.parse().unwrap();
        assert_eq!(key.to_string(), v.public_key_hex.to_lowercase());
        let fingerprint = KeyFingerprint::of_public_key(&key);
        assert_eq!(fingerprint.to_string(), v.fingerprint);
        assert_eq!(v.fingerprint.parse::<KeyFingerprint>(), Ok(fingerprint));
    }
}

#[test]
fn uris() {
    let vectors = vectors();
    assert!(!vectors.uri_accept.is_empty() && !vectors.uri_reject.is_empty());
    for v in vectors.uri_accept {
        let uri: DeviceUri = v.uri.parse().unwrap_or_else(|e| panic!("{}: {e}", v.uri));
        assert_eq!(uri.id().to_string(), v.id);
        assert_eq!(uri.fingerprint().to_string(), v.fingerprint);
        assert_eq!(uri.to_string(), v.canonical);
    }
    for v in vectors.uri_reject {
        let error = v.uri.parse::<DeviceUri>().unwrap_err();
        assert_eq!(uri_error_name(&error), v.error, "{}", v.uri);
    }
}
