//! The Noise layer: pattern, prologues, static keys, the two `IK` messages (through
//! `snow`) and the transport keypair that replaces snow's transport state.
//!
//! snow runs the handshake; its split keys go into [`Keypair`], which seals and opens in
//! place with ChaCha20-Poly1305 exactly as Noise's transport phase does (nonce = 32 zero
//! bits || 64-bit little-endian counter, empty associated data), so any Noise
//! implementation's stateless transport mode interoperates. Owning the keys here is what
//! lets them be zeroized on drop and lets the hot path encrypt in the caller's buffer,
//! with ring's assembly ChaCha20-Poly1305 (see `spec/session.md`, "Backend").

use std::fmt;
use std::time::Instant;

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::config::Footprint;
use crate::replay::{CompactReplayWindow, REJECT_AFTER_MESSAGES, ReplayError, ReplayWindow};
use crate::wire::{
    INITIATION_LEN, INITIATION_NOISE_LEN, INITIATION_PAYLOAD_LEN, Initiation, KEY_LEN, Packet,
    RESPONSE_LEN, RESPONSE_NOISE_LEN, Response, TAG_LEN, TIMESTAMP_LEN, TRANSPORT_HEADER_LEN,
    write_transport_header,
};

/// The Noise protocol name of every Sightwire session (peer and rendezvous).
pub const NOISE_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The protocol version bound into every prologue.
pub const PROTOCOL_VERSION: u8 = 1;
/// First bytes of every prologue.
pub const PROLOGUE_LABEL: &[u8] = b"sightwire-session";
/// Prologue kind byte of a viewer ↔ device session.
pub const PROLOGUE_KIND_PEER: u8 = 0x01;
/// Prologue kind byte of a device/viewer ↔ rendezvous session.
pub const PROLOGUE_KIND_RENDEZVOUS: u8 = 0x02;
/// Length of a device ID (EUI-48).
pub const DEVICE_ID_LEN: usize = 6;
/// Longest prologue: label (17) || version (1) || kind (1) || device ID (6).
pub const MAX_PROLOGUE_LEN: usize = PROLOGUE_LABEL.len() + 2 + DEVICE_ID_LEN;
/// Length of a handshake hash (BLAKE2s).
pub const HANDSHAKE_HASH_LEN: usize = 32;

pub use sightwire_id::{DeviceId, PublicKey};
/// A handshake hash: the Noise `h` after the last handshake message, unique per handshake
/// and known only to its two parties (the channel binding for viewer authorization).
pub type HandshakeHash = [u8; HANDSHAKE_HASH_LEN];

/// What a session is for; it decides the Noise prologue, so a handshake made for one
/// purpose (or one camera) cannot complete as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionKind {
    /// Viewer (initiator) ↔ device (responder). Binds the device's ID.
    Peer {
        /// The device ID (its EUI-48 MAC address, 6 bytes).
        device_id: DeviceId,
    },
    /// Device or viewer (initiator) ↔ rendezvous server (responder).
    Rendezvous,
}

/// The prologue bytes of a [`SessionKind`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Prologue {
    bytes: [u8; MAX_PROLOGUE_LEN],
    len: usize,
}

impl fmt::Debug for Prologue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prologue({:02x?})", self.as_bytes())
    }
}

impl Prologue {
    /// The exact bytes fed to Noise as the prologue.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl SessionKind {
    /// `"sightwire-session" || version || kind || device_id (peer only)`.
    pub fn prologue(&self) -> Prologue {
        let mut bytes = [0u8; MAX_PROLOGUE_LEN];
        let label = PROLOGUE_LABEL.len();
        bytes[..label].copy_from_slice(PROLOGUE_LABEL);
        bytes[label] = PROTOCOL_VERSION;
        let len = match self {
            SessionKind::Peer { device_id } => {
                bytes[label + 1] = PROLOGUE_KIND_PEER;
                bytes[label + 2..].copy_from_slice(device_id.as_bytes());
                MAX_PROLOGUE_LEN
            }
            SessionKind::Rendezvous => {
                bytes[label + 1] = PROLOGUE_KIND_RENDEZVOUS;
                label + 2
            }
        };
        Prologue { bytes, len }
    }
}

/// A static X25519 keypair (the identity of a device, viewer or rendezvous server).
/// The private half is zeroized on drop.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Generates a keypair from a cryptographic RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut private[..]);
        Self::from_private(*private)
    }

    /// Rebuilds a keypair from its stored private key (X25519 clamps on use).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let private = Zeroizing::new(private);
        let mut public = [0u8; KEY_LEN];
        if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
            dh.set(&private[..]);
            public.copy_from_slice(dh.pubkey());
        }
        Self {
            private,
            public: PublicKey::from_bytes(public),
        }
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The private key, for storage. Handle with care.
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

/// Why a Noise handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Message 1 did not decrypt: it was made for another static key, another device ID
    /// or protocol version (prologue), or it was tampered with.
    #[error(
        "initiation does not authenticate for this responder (wrong key, device ID or version)"
    )]
    InitiationNotAuthenticated,
    /// Message 2 did not decrypt: the responder does not hold the static key the initiator
    /// expected (wrong device key or a man in the middle), or it was tampered with.
    #[error(
        "response does not prove the expected responder static key (wrong key or man in the middle)"
    )]
    ResponseNotAuthenticated,
    /// snow refused a key or parameter (a local configuration problem, not network input).
    #[error("noise configuration refused: {0}")]
    Config(&'static str),
}

fn params() -> NoiseParams {
    // The pattern name is a constant that parses; a failure would be a snow bug, and the
    // fallback still names the same protocol.
    NOISE_PATTERN.parse().unwrap_or_else(|_| {
        NoiseParams::new(
            NOISE_PATTERN.into(),
            snow::params::BaseChoice::Noise,
            snow::params::HandshakeChoice {
                pattern: snow::params::HandshakePattern::IK,
                modifiers: snow::params::HandshakeModifierList { list: vec![] },
            },
            DHChoice::Curve25519,
            CipherChoice::ChaChaPoly,
            HashChoice::Blake2s,
        )
    })
}

/// Feeds snow's ephemeral-key generation from a seed drawn from the caller's RNG, so the
/// whole core stays deterministic under an injected RNG (snow would otherwise read the OS).
struct SeededResolver {
    seed: Zeroizing<[u8; 32]>,
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// Ephemeral source used to build a handshake: a seed for a ChaCha20 stream
/// (production) or an exact ephemeral private key (test vectors).
pub(crate) enum Ephemeral {
    Seed(Zeroizing<[u8; 32]>),
    #[cfg(test)]
    Fixed(Zeroizing<[u8; 32]>),
}

impl Ephemeral {
    pub(crate) fn from_rng(rng: &mut dyn RngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Ephemeral::Seed(seed)
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(*self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn build(
    local: &StaticKeypair,
    remote: Option<&PublicKey>,
    prologue: &Prologue,
    ephemeral: &Ephemeral,
    initiator: bool,
) -> Result<HandshakeState, HandshakeError> {
    let config = |_| HandshakeError::Config("builder refused a key or prologue");
    let (seed, fixed): (_, Option<&Zeroizing<[u8; 32]>>) = match ephemeral {
        Ephemeral::Seed(seed) => (seed.clone(), None),
        #[cfg(test)]
        Ephemeral::Fixed(key) => (Zeroizing::new([0; 32]), Some(key)),
    };
    let mut builder = Builder::with_resolver(params(), Box::new(SeededResolver { seed }))
        .local_private_key(&local.private[..])
        .map_err(config)?
        .prologue(prologue.as_bytes())
        .map_err(config)?;
    if let Some(remote) = remote {
        builder = builder
            .remote_public_key(remote.as_bytes())
            .map_err(config)?;
    }
    if let Some(key) = fixed {
        builder = builder.fixed_ephemeral_key_for_testing_only(&key[..]);
    }
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state.map_err(|_| HandshakeError::Config("snow could not build the handshake"))
}

/// The plaintext payload of message 1 (`spec/session.md`, §2.1).
pub(crate) struct InitiationPayload {
    /// Attempt number: strictly increasing over the initiations of one session.
    pub(crate) attempt: u64,
    /// TAI64N-style timestamp: strictly increasing over the initiations of one table.
    pub(crate) timestamp: [u8; TIMESTAMP_LEN],
}

/// Initiator: builds message 1 into a full initiation packet (with `mac1`/`mac2` zero;
/// the caller stamps them).
pub(crate) fn write_initiation(
    local: &StaticKeypair,
    remote: &PublicKey,
    prologue: &Prologue,
    ephemeral: &Ephemeral,
    sender_index: u32,
    receiver_index: u32,
    contents: &InitiationPayload,
) -> Result<(HandshakeState, [u8; INITIATION_LEN]), HandshakeError> {
    let mut state = build(local, Some(remote), prologue, ephemeral, true)?;
    let mut payload = [0u8; INITIATION_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&contents.attempt.to_be_bytes());
    payload[8..].copy_from_slice(&contents.timestamp);
    let mut noise = [0u8; INITIATION_NOISE_LEN];
    let written = state
        .write_message(&payload, &mut noise)
        .map_err(|_| HandshakeError::Config("snow could not write message 1"))?;
    if written != INITIATION_NOISE_LEN {
        return Err(HandshakeError::Config("message 1 has an unexpected length"));
    }
    let mut packet = [0u8; INITIATION_LEN];
    Packet::Initiation(Initiation {
        sender_index,
        receiver_index,
        noise: &noise,
        mac1: &[0; 16],
        mac2: &[0; 16],
    })
    .encode(&mut packet);
    Ok((state, packet))
}

/// What a responder learned from a valid message 1.
pub(crate) struct AcceptedInitiation {
    pub(crate) state: HandshakeState,
    pub(crate) remote_static: PublicKey,
    pub(crate) attempt: u64,
    /// The initiator's timestamp (big-endian: byte order is time order).
    pub(crate) timestamp: [u8; TIMESTAMP_LEN],
}

/// Responder: reads message 1.
pub(crate) fn read_initiation(
    local: &StaticKeypair,
    prologue: &Prologue,
    ephemeral: &Ephemeral,
    noise: &[u8; INITIATION_NOISE_LEN],
) -> Result<AcceptedInitiation, HandshakeError> {
    let mut state = build(local, None, prologue, ephemeral, false)?;
    let mut payload = [0u8; INITIATION_NOISE_LEN];
    let len = state
        .read_message(noise, &mut payload)
        .map_err(|_| HandshakeError::InitiationNotAuthenticated)?;
    let payload = payload
        .get(..len)
        .and_then(|p| <[u8; INITIATION_PAYLOAD_LEN]>::try_from(p).ok())
        .ok_or(HandshakeError::InitiationNotAuthenticated)?;
    let (attempt, timestamp) = payload.split_at(8);
    let attempt = <[u8; 8]>::try_from(attempt)
        .map(u64::from_be_bytes)
        .map_err(|_| HandshakeError::InitiationNotAuthenticated)?;
    let timestamp = <[u8; TIMESTAMP_LEN]>::try_from(timestamp)
        .map_err(|_| HandshakeError::InitiationNotAuthenticated)?;
    let remote_static: PublicKey = state
        .get_remote_static()
        .and_then(|s| <[u8; KEY_LEN]>::try_from(s).ok())
        .map(PublicKey::from_bytes)
        .ok_or(HandshakeError::InitiationNotAuthenticated)?;
    Ok(AcceptedInitiation {
        state,
        remote_static,
        attempt,
        timestamp,
    })
}

/// Responder: writes message 2 and derives the transport keypair.
pub(crate) fn write_response(
    mut state: HandshakeState,
    sender_index: u32,
    receiver_index: u32,
    now: Instant,
    footprint: Footprint,
) -> Result<([u8; RESPONSE_LEN], Keypair, HandshakeHash), HandshakeError> {
    let mut noise = [0u8; RESPONSE_NOISE_LEN];
    let written = state
        .write_message(&[], &mut noise)
        .map_err(|_| HandshakeError::Config("snow could not write message 2"))?;
    if written != RESPONSE_NOISE_LEN {
        return Err(HandshakeError::Config("message 2 has an unexpected length"));
    }
    let mut packet = [0u8; RESPONSE_LEN];
    Packet::Response(Response {
        sender_index,
        receiver_index,
        noise: &noise,
    })
    .encode(&mut packet);
    let (keypair, hash) = split(
        &mut state,
        false,
        sender_index,
        receiver_index,
        now,
        footprint,
    )?;
    Ok((packet, keypair, hash))
}

/// Initiator: reads message 2 and derives the transport keypair. On failure `state` is
/// unchanged (snow restores its checkpoint), so a forged response cannot spoil the
/// handshake.
pub(crate) fn read_response(
    state: &mut HandshakeState,
    noise: &[u8; RESPONSE_NOISE_LEN],
    local_index: u32,
    remote_index: u32,
    now: Instant,
    footprint: Footprint,
) -> Result<(Keypair, HandshakeHash), HandshakeError> {
    let mut payload = [0u8; RESPONSE_NOISE_LEN];
    let len = state
        .read_message(noise, &mut payload)
        .map_err(|_| HandshakeError::ResponseNotAuthenticated)?;
    if len != 0 {
        return Err(HandshakeError::ResponseNotAuthenticated);
    }
    split(state, true, local_index, remote_index, now, footprint)
}

fn split(
    state: &mut HandshakeState,
    initiator: bool,
    local_index: u32,
    remote_index: u32,
    now: Instant,
    footprint: Footprint,
) -> Result<(Keypair, HandshakeHash), HandshakeError> {
    if !state.is_handshake_finished() {
        return Err(HandshakeError::Config(
            "split before the handshake finished",
        ));
    }
    let hash: HandshakeHash = state
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::Config("handshake hash has an unexpected length"))?;
    let (initiator_to_responder, responder_to_initiator) = state.dangerously_get_raw_split();
    let (send, recv) = if initiator {
        (
            Zeroizing::new(initiator_to_responder),
            Zeroizing::new(responder_to_initiator),
        )
    } else {
        (
            Zeroizing::new(responder_to_initiator),
            Zeroizing::new(initiator_to_responder),
        )
    };
    let keypair = Keypair::new(&send, &recv, local_index, remote_index, now, footprint)
        .ok_or(HandshakeError::Config("ring refused a transport key"))?;
    Ok((keypair, hash))
}

/// Why a transport packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The output buffer cannot hold header, plaintext and tag.
    #[error("output buffer of {available} bytes is too small for {needed}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The plaintext is longer than [`crate::MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes exceeds the limit of {limit}")]
    PlaintextTooLong {
        /// Plaintext length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The sending counter reached [`REJECT_AFTER_MESSAGES`]: the keys may not be used again.
    #[error("sending counter exhausted; a new handshake is required")]
    CounterExhausted,
    /// No session with this id.
    #[error("no such session")]
    UnknownSession,
    /// The session has no transport keys yet (handshake in progress).
    #[error("session is not established yet")]
    NotEstablished,
    /// The current keys are older than the reject-after time.
    #[error("session keys have expired")]
    KeysExpired,
}

/// ring's AEAD key, scrubbed on drop.
///
/// ring does not zeroize its key objects. The key lives in its own heap allocation;
/// on drop it is overwritten in place with the all-zero key of the same algorithm (same
/// variant, so the same bytes) and the memory is passed through `black_box`, which keeps
/// the compiler from treating the overwrite as a dead store before the allocation is
/// freed. `black_box` is documented as best effort (zeroize's volatile writes cannot be
/// applied to a foreign type without `unsafe`); it holds for today's rustc/LLVM.
/// Expanding ring's key per packet instead would cost two ~500-byte copies per packet
/// (measured: 5-10 % of a 200-1400 byte seal+open).
struct ScrubbedKey(Box<LessSafeKey>);

impl ScrubbedKey {
    fn new(bytes: &[u8; 32]) -> Option<Self> {
        aead_key(bytes).map(|k| Self(Box::new(k)))
    }
}

impl Clone for ScrubbedKey {
    fn clone(&self) -> Self {
        Self(Box::new((*self.0).clone()))
    }
}

impl Drop for ScrubbedKey {
    fn drop(&mut self) {
        if let Some(zero) = aead_key(&[0; 32]) {
            *self.0 = zero;
        }
        std::hint::black_box(&*self.0);
    }
}

/// The two transport keys, as [`Footprint`] chose to store them.
#[derive(Clone)]
enum TransportKeys {
    /// ring's keys, expanded once (each in its own allocation, scrubbed on drop).
    Expanded {
        send: ScrubbedKey,
        recv: ScrubbedKey,
    },
    /// The raw keys (zeroized on drop), expanded on the stack for each packet.
    Raw {
        send: Zeroizing<[u8; 32]>,
        recv: Zeroizing<[u8; 32]>,
    },
}

/// Runs `f` with ring's key for `raw`, expanded on the stack, then overwrites that
/// stack copy with the all-zero key (as [`ScrubbedKey`] does on drop).
fn with_raw_key<T>(raw: &[u8; 32], f: impl FnOnce(&LessSafeKey) -> T) -> Option<T> {
    let mut key = aead_key(raw)?;
    let result = f(&key);
    if let Some(zero) = aead_key(&[0; 32]) {
        key = zero;
    }
    std::hint::black_box(&key);
    Some(result)
}

/// The replay window, as [`Footprint`] chose to store it.
#[derive(Debug, Clone)]
pub(crate) enum Replay {
    /// [`REPLAY_WINDOW`](crate::REPLAY_WINDOW) counters, in its own allocation.
    Wide(Box<ReplayWindow>),
    /// [`COMPACT_REPLAY_WINDOW`](crate::COMPACT_REPLAY_WINDOW) counters, inline.
    Compact(CompactReplayWindow),
}

impl Replay {
    pub(crate) fn check(&self, counter: u64) -> Result<(), ReplayError> {
        match self {
            Replay::Wide(window) => window.check(counter),
            Replay::Compact(window) => window.check(counter),
        }
    }

    pub(crate) fn mark(&mut self, counter: u64) {
        match self {
            Replay::Wide(window) => window.mark(counter),
            Replay::Compact(window) => window.mark(counter),
        }
    }
}

/// One direction pair of transport keys, with its indices, counter and replay window.
#[derive(Clone)]
pub(crate) struct Keypair {
    keys: TransportKeys,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) created: Instant,
    pub(crate) send_counter: u64,
    pub(crate) replay: Replay,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

/// Noise's ChaChaPoly nonce: 32 zero bits, then the counter as 64-bit little-endian.
fn noise_nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(nonce)
}

fn aead_key(bytes: &[u8; 32]) -> Option<LessSafeKey> {
    // ChaCha20-Poly1305 accepts every 32-byte key; `None` is unreachable.
    UnboundKey::new(&CHACHA20_POLY1305, bytes)
        .ok()
        .map(LessSafeKey::new)
}

impl Keypair {
    /// `None` only if ring refuses a 32-byte ChaCha20-Poly1305 key (it never does).
    pub(crate) fn new(
        send: &[u8; 32],
        recv: &[u8; 32],
        local_index: u32,
        remote_index: u32,
        now: Instant,
        footprint: Footprint,
    ) -> Option<Self> {
        let (keys, replay) = match footprint {
            Footprint::Compact => (
                TransportKeys::Raw {
                    send: Zeroizing::new(*send),
                    recv: Zeroizing::new(*recv),
                },
                Replay::Compact(CompactReplayWindow::new()),
            ),
            _ => (
                TransportKeys::Expanded {
                    send: ScrubbedKey::new(send)?,
                    recv: ScrubbedKey::new(recv)?,
                },
                Replay::Wide(Box::default()),
            ),
        };
        Some(Self {
            keys,
            local_index,
            remote_index,
            created: now,
            send_counter: 0,
            replay,
        })
    }

    /// Seals `buf[TRANSPORT_HEADER_LEN..][..plaintext_len]` in place, writing the header in
    /// front and the tag behind. Returns the packet length.
    pub(crate) fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        let needed = TRANSPORT_HEADER_LEN + plaintext_len + TAG_LEN;
        if buf.len() < needed {
            return Err(SealError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::CounterExhausted);
        }
        let too_long = SealError::PlaintextTooLong {
            len: plaintext_len,
            limit: crate::wire::MAX_PLAINTEXT_LEN,
        };
        let (header, rest) = buf.split_at_mut(TRANSPORT_HEADER_LEN);
        let (body, tail) = rest.split_at_mut(plaintext_len);
        let mut seal = |key: &LessSafeKey| {
            key.seal_in_place_separate_tag(noise_nonce(counter), Aad::empty(), body)
        };
        let tag = match &self.keys {
            TransportKeys::Expanded { send, .. } => seal(&send.0),
            TransportKeys::Raw { send, .. } => {
                with_raw_key(send, seal).unwrap_or(Err(ring::error::Unspecified))
            }
        }
        .map_err(|_| too_long)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        write_transport_header(header, self.remote_index, counter);
        self.send_counter = counter + 1;
        Ok(needed)
    }

    /// Opens `ciphertext` (body || tag) in place; returns the plaintext length. Does not
    /// touch the replay window: the caller checks before and marks after.
    pub(crate) fn open_in_place(&self, counter: u64, ciphertext: &mut [u8]) -> Result<usize, ()> {
        if ciphertext.len() < TAG_LEN {
            return Err(());
        }
        let mut open = |key: &LessSafeKey| {
            key.open_in_place(noise_nonce(counter), Aad::empty(), ciphertext)
                .map(|plaintext| plaintext.len())
                .map_err(|_| ())
        };
        match &self.keys {
            TransportKeys::Expanded { recv, .. } => open(&recv.0),
            TransportKeys::Raw { recv, .. } => with_raw_key(recv, open).unwrap_or(Err(())),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_send_counter_for_test(&mut self, counter: u64) {
        self.send_counter = counter;
    }
}

#[cfg(test)]
pub(crate) fn fixed_ephemeral(key: [u8; 32]) -> Ephemeral {
    Ephemeral::Fixed(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prologues_differ_by_kind_and_device() {
        let a = SessionKind::Peer {
            device_id: DeviceId::from_bytes([0, 1, 2, 3, 4, 5]).unwrap(),
        }
        .prologue();
        let b = SessionKind::Peer {
            device_id: DeviceId::from_bytes([0, 1, 2, 3, 4, 6]).unwrap(),
        }
        .prologue();
        let r = SessionKind::Rendezvous.prologue();
        assert_ne!(a, b);
        assert_ne!(a.as_bytes(), r.as_bytes());
        assert_eq!(a.as_bytes().len(), MAX_PROLOGUE_LEN);
        assert_eq!(&r.as_bytes()[..17], b"sightwire-session");
        assert_eq!(
            r.as_bytes()[17..],
            [PROTOCOL_VERSION, PROLOGUE_KIND_RENDEZVOUS]
        );
    }

    #[test]
    fn static_keypair_debug_shows_no_private_bytes() {
        // A private key whose bytes are distinctive in every form Debug could print.
        let keypair = StaticKeypair::from_private([0xc7; KEY_LEN]);
        let debug = format!("{keypair:?}");
        let alternate = format!("{keypair:#?}");
        for text in [&debug, &alternate] {
            assert!(!text.contains("c7c7"), "{text}");
            assert!(!text.contains("199"), "{text}"); // 0xc7 in decimal
            assert!(text.contains(&format!("{:?}", keypair.public())), "{text}");
        }
        assert_eq!(keypair.private_bytes(), &[0xc7; KEY_LEN]);
        // The public half is derived, not the private bytes.
        assert_ne!(keypair.public().as_bytes(), keypair.private_bytes());
    }

    #[test]
    fn exhausted_send_counter_refuses_to_seal() {
        let now = Instant::now();
        let mut k = Keypair::new(&[1; 32], &[2; 32], 1, 2, now, Footprint::Fast).unwrap();
        k.set_send_counter_for_test(REJECT_AFTER_MESSAGES - 1);
        let mut buf = [0u8; 64];
        assert!(k.seal_in_place(&mut buf, 4).is_ok());
        assert_eq!(
            k.seal_in_place(&mut buf, 4),
            Err(SealError::CounterExhausted)
        );
        assert_eq!(
            k.seal_in_place(&mut [0u8; 10], 4),
            Err(SealError::BufferTooSmall {
                needed: 33,
                available: 10
            })
        );
    }
}
