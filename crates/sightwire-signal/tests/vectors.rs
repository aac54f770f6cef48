//! Loads the vectors in `spec/vectors/` (written by an independent Python implementation,
//! `vectors/generate.py`) and checks this crate against them.

use std::path::PathBuf;

use serde::Deserialize;
use sightwire_signal::cert::{
    CertificateError, IdCertificate, IssuerKey, IssuerPublicKey, TrustedIssuers,
};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey, RelayGrantToken};
use sightwire_signal::{DecodeError, DeviceId, Envelope};

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex<const N: usize>(text: &str) -> [u8; N] {
    hex::decode(text).unwrap().try_into().unwrap()
}

#[derive(Deserialize)]
struct CertFile {
    issuer_seed: String,
    issuer_public_key: String,
    issuer_id: String,
    vectors: Vec<CertVector>,
}

#[derive(Deserialize)]
struct CertVector {
    name: String,
    certificate: String,
    verify_at: u64,
    device_id: Option<String>,
    device_key: Option<String>,
    not_before: Option<u64>,
    not_after: Option<u64>,
    serial: Option<u64>,
    error: Option<String>,
}

fn trust(file: &CertFile) -> TrustedIssuers {
    let public = IssuerPublicKey::from_bytes(&unhex(&file.issuer_public_key)).unwrap();
    assert_eq!(public.id().to_string(), file.issuer_id);
    TrustedIssuers::single(public)
}

#[test]
fn valid_certificates_verify_and_reissue_identically() {
    let file: CertFile = load("cert-valid.json");
    let issuer = IssuerKey::from_seed(&unhex(&file.issuer_seed));
    assert_eq!(
        hex::encode(issuer.public().to_bytes()),
        file.issuer_public_key
    );
    let trust = trust(&file);
    assert!(!file.vectors.is_empty());
    for vector in &file.vectors {
        let bytes = hex::decode(&vector.certificate).unwrap();
        let cert = IdCertificate::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        let fields = *cert
            .verify(&trust, vector.verify_at)
            .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        assert_eq!(
            hex::encode(fields.device_id.as_bytes()),
            vector.device_id.clone().unwrap(),
            "{}",
            vector.name
        );
        assert_eq!(
            hex::encode(fields.device_key),
            vector.device_key.clone().unwrap(),
            "{}",
            vector.name
        );
        assert_eq!(
            Some(fields.not_before),
            vector.not_before,
            "{}",
            vector.name
        );
        assert_eq!(Some(fields.not_after), vector.not_after, "{}", vector.name);
        assert_eq!(Some(fields.serial), vector.serial, "{}", vector.name);
        // Ed25519 is deterministic: issuing the same fields gives the same bytes.
        assert_eq!(
            issuer.issue(fields).unwrap().to_bytes().to_vec(),
            bytes,
            "{}",
            vector.name
        );
    }
}

#[test]
fn invalid_certificates_are_rejected_with_the_named_error() {
    let file: CertFile = load("cert-invalid.json");
    let trust = trust(&file);
    assert!(!file.vectors.is_empty());
    for vector in &file.vectors {
        let bytes = hex::decode(&vector.certificate).unwrap();
        let error = IdCertificate::decode(&bytes)
            .and_then(|cert| cert.verify(&trust, vector.verify_at).copied())
            .expect_err(&vector.name);
        let kind = match error {
            CertificateError::WrongLength { .. } => "wrong_length",
            CertificateError::UnsupportedVersion { .. } => "unsupported_version",
            CertificateError::EmptyValidity { .. } => "empty_validity",
            CertificateError::UnknownIssuer { .. } => "unknown_issuer",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::NotYetValid { .. } => "not_yet_valid",
            CertificateError::Expired { .. } => "expired",
            CertificateError::InvalidDeviceId { .. } => "invalid_device_id",
            other => panic!("{}: unexpected {other:?}", vector.name),
        };
        assert_eq!(Some(kind), vector.error.as_deref(), "{}", vector.name);
    }
}

#[derive(Deserialize)]
struct EnvelopeFile {
    vectors: Vec<EnvelopeVector>,
}

#[derive(Deserialize)]
struct EnvelopeVector {
    name: String,
    encoded: String,
    error: Option<String>,
}

#[test]
fn envelopes_decode_and_reencode_byte_for_byte() {
    let file: EnvelopeFile = load("signal-envelopes.json");
    assert!(file.vectors.len() >= 10);
    for vector in &file.vectors {
        let bytes = hex::decode(&vector.encoded).unwrap();
        let envelope = Envelope::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        let reencoded = if vector.name.ends_with("-padded") {
            let mut out = Vec::new();
            envelope.encode_padded(bytes.len(), &mut out).unwrap();
            out
        } else {
            envelope.to_bytes().unwrap().to_vec()
        };
        assert_eq!(hex::encode(reencoded), vector.encoded, "{}", vector.name);
    }
}

#[test]
fn invalid_envelopes_are_rejected_with_the_named_error() {
    let file: EnvelopeFile = load("signal-invalid.json");
    assert!(!file.vectors.is_empty());
    for vector in &file.vectors {
        let bytes = hex::decode(&vector.encoded).unwrap();
        let error = Envelope::decode(&bytes).expect_err(&vector.name);
        let kind = match error {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Protobuf { .. } => "protobuf",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongLength { .. } => "wrong_length",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::TooManyCandidates { .. } => "too_many_candidates",
            DecodeError::Certificate(_) => "certificate",
            DecodeError::NotADeviceId { .. } => "not_a_device_id",
            other => panic!("{}: unexpected {other:?}", vector.name),
        };
        assert_eq!(Some(kind), vector.error.as_deref(), "{}", vector.name);
    }
}

#[derive(Deserialize)]
struct GrantFile {
    vectors: Vec<GrantVector>,
}

#[derive(Deserialize)]
struct GrantVector {
    key: String,
    allocation_id: String,
    role: u8,
    expires_at: u64,
    device_id: String,
    device_key: String,
    viewer_key: String,
    nonce: String,
    verify_at: u64,
    token: String,
}

#[test]
fn relay_grants_match_the_vectors() {
    let file: GrantFile = load("signal-relay-grant.json");
    assert!(!file.vectors.is_empty());
    for vector in &file.vectors {
        let key = RelayGrantKey::from_bytes(unhex(&vector.key));
        let claims = GrantClaims {
            allocation_id: unhex(&vector.allocation_id),
            role: if vector.role == 1 {
                GrantRole::Device
            } else {
                GrantRole::Viewer
            },
            expires_at: vector.expires_at,
            device_id: DeviceId::from_bytes(unhex(&vector.device_id)).unwrap(),
            device_key: unhex::<32>(&vector.device_key).into(),
            viewer_key: unhex::<32>(&vector.viewer_key).into(),
        };
        assert_eq!(
            hex::encode(key.seal(&claims, unhex(&vector.nonce)).0),
            vector.token
        );
        let token = RelayGrantToken::from_slice(&hex::decode(&vector.token).unwrap()).unwrap();
        assert_eq!(key.verify(&token, vector.verify_at), Ok(claims));
    }
}

#[derive(Deserialize)]
struct NodesFile {
    vectors: Vec<NodesVector>,
}

#[derive(Deserialize)]
struct NodesVector {
    nodes: Vec<String>,
    device_id: String,
    weights: std::collections::BTreeMap<String, String>,
    home: String,
    successor: Option<String>,
}

/// Homes and successors (spec/multinode.md §3) as `spec/vectors/nodes-gen.py` computes
/// them with Python's own BLAKE2s.
#[test]
fn node_homes_match_the_vectors() {
    use sightwire_signal::nodes::{NodeList, NodeName, weight};
    let file: NodesFile = load("nodes.json");
    assert!(file.vectors.len() >= 40);
    for v in file.vectors {
        let id: [u8; 6] = unhex(&v.device_id);
        let list = NodeList::new(
            v.nodes
                .iter()
                .map(|n| (NodeName::new(n).unwrap(), ()))
                .collect(),
        )
        .unwrap();
        for (name, ()) in list.iter() {
            assert_eq!(
                format!("{:016x}", weight(name, id)),
                v.weights[name.as_str()],
                "weight of {} on {name}",
                v.device_id
            );
        }
        let (home, successor) = list.home_and_successor(id);
        let name = |i: usize| list.get(i).unwrap().0.as_str().to_owned();
        assert_eq!(
            name(home),
            v.home,
            "home of {} in {:?}",
            v.device_id,
            v.nodes
        );
        assert_eq!(
            successor.map(name),
            v.successor,
            "successor of {}",
            v.device_id
        );
    }
}
