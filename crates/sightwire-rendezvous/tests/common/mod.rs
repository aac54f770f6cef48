//! Shared helpers: an issuer, devices with certificates, a core in virtual time.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use sightwire_rendezvous::{CoreConfig, MemoryRegistry, Peer, Rendezvous, Transmit};
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey, TrustedIssuers};
use sightwire_signal::{
    Body, Candidate, CandidateKind, CandidateSet, ConnectId, ConnectRequest, Consent, Envelope,
    MAX_MESSAGE_LEN, Register,
};
use sightwire_signal::{DeviceId, PublicKey};

pub const UNIX_START: u64 = 1_800_000_000;

pub fn issuer() -> IssuerKey {
    IssuerKey::from_seed(&[0x15; 32])
}

pub fn device_id(n: u32) -> DeviceId {
    let b = n.to_be_bytes();
    DeviceId::from_bytes([0x02, 0x00, b[0], b[1], b[2], b[3]]).expect("a unicast address")
}

pub fn device_key(n: u32) -> PublicKey {
    let mut key = [0xD0; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    PublicKey::from_bytes(key)
}

pub fn certificate(n: u32, serial: u64) -> IdCertificate {
    certificate_for(device_id(n), device_key(n), serial, 0, u64::MAX)
}

pub fn certificate_for(
    id: DeviceId,
    key: PublicKey,
    serial: u64,
    not_before: u64,
    not_after: u64,
) -> IdCertificate {
    issuer()
        .issue(CertificateFields {
            device_id: id,
            device_key: key,
            not_before,
            not_after,
            serial,
        })
        .unwrap()
}

pub fn address(n: u32) -> SocketAddr {
    let b = n.to_be_bytes();
    SocketAddr::from(([10, b[1], b[2], b[3]], 4000 + (n % 1000) as u16))
}

pub fn device_peer(n: u32) -> Peer<u64> {
    Peer::new(u64::from(n), device_key(n), address(n))
}

pub fn viewer_peer(n: u32) -> Peer<u64> {
    let mut key = [0x77; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    Peer::new(
        1_000_000 + u64::from(n),
        PublicKey::from_bytes(key),
        SocketAddr::from(([198, 51, 100, (n % 250) as u8], 5000)),
    )
}

pub fn host(address: &str) -> Candidate {
    Candidate {
        kind: CandidateKind::Host,
        address: address.parse().unwrap(),
        priority: 126 << 24,
    }
}

pub fn register_message(certificate: IdCertificate) -> Vec<u8> {
    Envelope::new(
        1,
        Body::Register(Register {
            certificate,
            candidates: CandidateSet::new(vec![host("192.168.1.20:5000")]),
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

pub fn connect_message(id: DeviceId, want_relay: bool) -> Vec<u8> {
    connect_message_with(id, want_relay, 9, &[])
}

/// A padded `CONNECT_REQUEST` with request id `request_id` and login opening `login`.
pub fn connect_message_with(
    id: DeviceId,
    want_relay: bool,
    request_id: u64,
    login: &[u8],
) -> Vec<u8> {
    let envelope = Envelope::new(
        request_id,
        Body::ConnectRequest(ConnectRequest {
            device_id: id,
            candidates: CandidateSet::new(vec![host("10.9.9.9:6000")]),
            want_relay,
            login: bytes::Bytes::copy_from_slice(login),
        }),
    );
    let mut out = Vec::new();
    envelope.encode_padded(MAX_MESSAGE_LEN, &mut out).unwrap();
    out
}

/// A `CONSENT` notification.
pub fn consent_message(connect_id: ConnectId, login: &[u8], accept: bool) -> Vec<u8> {
    Envelope::new(
        0,
        Body::Consent(Consent {
            connect_id,
            login: bytes::Bytes::copy_from_slice(login),
            accept,
            confirmation_digest: None,
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

/// The connect id of the `INTRODUCTION` sent to `session`, if any.
pub fn introduction_to(replies: &[(u64, Envelope)], session: u64) -> Option<ConnectId> {
    replies.iter().find_map(|(s, e)| match &e.body {
        Body::Introduction(intro) if *s == session => Some(intro.connect_id),
        _ => None,
    })
}

pub fn keepalive_message(request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    Envelope::new(request_id, Body::Keepalive)
        .encode_padded(16, &mut out)
        .unwrap();
    out
}

/// A core plus virtual time.
pub struct Harness {
    pub core: Rendezvous<u64>,
    /// The registry the harness answers the core's queries with.
    pub registry: MemoryRegistry,
    /// Answer registry queries as soon as they are asked (a fast registry); off: they
    /// wait until [`Harness::answer_queries`].
    pub answer_at_once: bool,
    pub now: Instant,
}

impl Harness {
    pub fn new(config: CoreConfig) -> Self {
        let now = Instant::now();
        let core = Rendezvous::new(
            config,
            TrustedIssuers::single(issuer().public()),
            Box::new(rand::rngs::StdRng::seed_from_u64(7)),
            now,
            UNIX_START,
        );
        Self {
            core,
            registry: MemoryRegistry::default(),
            answer_at_once: true,
            now,
        }
    }

    /// Runs every query the core asked and hands it the answers.
    pub fn answer_queries(&mut self) -> usize {
        let mut answered = 0;
        while let Some(query) = self.core.poll_registry_query() {
            let answer = query.run(&mut self.registry);
            self.core.handle_registry_answer(self.now, answer);
            answered += 1;
        }
        answered
    }

    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= end) {
            self.now = at.max(self.now);
            self.core.handle_timeout(self.now);
        }
        self.now = end;
    }

    /// Sends `message` from `peer` and returns everything the core queued.
    pub fn send(&mut self, peer: &Peer<u64>, message: &[u8]) -> Vec<(u64, Envelope)> {
        self.core.handle_message(self.now, peer, message);
        if self.answer_at_once {
            self.answer_queries();
        }
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<(u64, Envelope)> {
        let mut out = Vec::new();
        while let Some(Transmit {
            session, payload, ..
        }) = self.core.poll_transmit()
        {
            out.push((session, Envelope::decode(&payload).unwrap()));
        }
        out
    }

    /// The consent flow with a device that trusts every viewer: `viewer` asks for device
    /// `n`, the device gets the introduction and answers `CONSENT{accept}` at once.
    /// Returns everything queued by both steps (the introduction included).
    pub fn connect_and_accept(
        &mut self,
        viewer: &Peer<u64>,
        n: u32,
        want_relay: bool,
    ) -> Vec<(u64, Envelope)> {
        let mut replies = self.send(viewer, &connect_message(device_id(n), want_relay));
        if let Some(connect_id) = introduction_to(&replies, device_peer(n).session) {
            let accepted = self.send(&device_peer(n), &consent_message(connect_id, &[], true));
            replies.extend(accepted);
        }
        replies
    }

    pub fn register(&mut self, n: u32) -> Vec<(u64, Envelope)> {
        self.send(&device_peer(n), &register_message(certificate(n, 1)))
    }
}

/// A padded `CONNECT_REQUEST` naming the six octets `octets` as they go on the wire, also
/// octets that are no device ID (which `ConnectRequest` cannot hold).
pub fn connect_message_naming(octets: [u8; 6], request_id: u64, login: &[u8]) -> Vec<u8> {
    let stand_in = device_id(0x00AB_CDEF);
    let mut out = connect_message_with(stand_in, false, request_id, login);
    let at = out
        .windows(6)
        .position(|window| window == stand_in.as_bytes())
        .expect("the ID is in the encoding");
    out[at..at + 6].copy_from_slice(&octets);
    out
}
