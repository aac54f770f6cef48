//! DoS cookies: `mac1`/`mac2` on initiations and the cookie reply (WireGuard's design,
//! with Sightwire's own labels). See `spec/session.md`, "DoS cookies".

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, generic_array::GenericArray};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::noise::PublicKey;

use crate::wire::{
    COOKIE_LEN, COOKIE_NONCE_LEN, CookieReply, INITIATION_LEN, INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET, MAC_LEN, TAG_LEN,
};

/// Label hashed with the responder's static key to make the `mac1` key.
pub const LABEL_MAC1: &[u8] = b"sightwire-session mac1 v1";
/// Label hashed with the responder's static key to make the cookie-reply encryption key.
pub const LABEL_COOKIE: &[u8] = b"sightwire-session cookie v1";
/// How long the responder keeps one cookie secret before drawing a new one.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it received (the secret lifetime minus a margin
/// for the reply's flight time, so the responder still holds the secret).
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(118);

type Mac16 = Blake2sMac<U16>;

/// Keyed BLAKE2s-128 of `data`.
pub(crate) fn mac16(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    // BLAKE2s accepts keys of 1..=32 bytes; every key here is 16 or 32 bytes.
    let Ok(mut mac) = <Mac16 as KeyInit>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn labelled_key(label: &[u8], static_public: &PublicKey) -> Zeroizing<[u8; 32]> {
    let mut hash = Blake2s256::new();
    hash.update(label);
    hash.update(static_public.as_bytes());
    Zeroizing::new(hash.finalize().into())
}

/// Source address as cookie input: IPv4 (4) or IPv6 (16) address bytes, then port (2).
fn address_bytes(addr: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let len = match addr {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&a.port().to_be_bytes());
            6
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&a.port().to_be_bytes());
            18
        }
    };
    (out, len)
}

fn xnonce(nonce: &[u8; COOKIE_NONCE_LEN]) -> &GenericArray<u8, chacha20poly1305::consts::U24> {
    GenericArray::from_slice(nonce)
}

/// Responder side: checks `mac1`/`mac2` and makes cookie replies.
#[derive(Clone)]
pub(crate) struct CookieChecker {
    mac1_key: Zeroizing<[u8; 32]>,
    reply_cipher: XChaCha20Poly1305,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieChecker")
            .field("secret_born", &self.secret_born)
            .finish_non_exhaustive()
    }
}

impl CookieChecker {
    pub(crate) fn new(local_static_public: &PublicKey) -> Self {
        let cookie_key = labelled_key(LABEL_COOKIE, local_static_public);
        Self {
            mac1_key: labelled_key(LABEL_MAC1, local_static_public),
            reply_cipher: XChaCha20Poly1305::new(GenericArray::from_slice(&cookie_key[..])),
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_secret_for_test(&mut self, secret: [u8; 32], now: Instant) {
        *self.secret = secret;
        self.secret_born = Some(now);
    }

    #[cfg(test)]
    pub(crate) fn set_cookie_for_test(jar: &mut CookieJar, cookie: [u8; COOKIE_LEN], now: Instant) {
        jar.cookie = Some((Zeroizing::new(cookie), now));
    }

    /// Whether the initiation's `mac1` is right (cheap: one BLAKE2s, no DH).
    pub(crate) fn mac1_ok(&self, packet: &[u8; INITIATION_LEN]) -> bool {
        let expected = mac16(&self.mac1_key[..], &packet[..INITIATION_MAC1_OFFSET]);
        expected
            .ct_eq(&packet[INITIATION_MAC1_OFFSET..INITIATION_MAC2_OFFSET])
            .into()
    }

    fn refresh_secret(&mut self, now: Instant, rng: &mut dyn RngCore) {
        let stale = self
            .secret_born
            .is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_SECRET_LIFETIME);
        if stale {
            rng.fill_bytes(&mut self.secret[..]);
            self.secret_born = Some(now);
        }
    }

    fn cookie_for(
        &mut self,
        now: Instant,
        rng: &mut dyn RngCore,
        src: SocketAddr,
    ) -> [u8; COOKIE_LEN] {
        self.refresh_secret(now, rng);
        let (addr, len) = address_bytes(src);
        mac16(&self.secret[..], addr.get(..len).unwrap_or_default())
    }

    /// Whether the initiation's `mac2` proves a cookie recently given to `src`.
    pub(crate) fn mac2_ok(
        &mut self,
        now: Instant,
        rng: &mut dyn RngCore,
        packet: &[u8; INITIATION_LEN],
        src: SocketAddr,
    ) -> bool {
        let cookie = self.cookie_for(now, rng, src);
        let expected = mac16(&cookie, &packet[..INITIATION_MAC2_OFFSET]);
        expected.ct_eq(&packet[INITIATION_MAC2_OFFSET..]).into()
    }

    /// Builds the cookie reply for an initiation from `src` (61 bytes, smaller than the
    /// 157-byte initiation that caused it).
    pub(crate) fn reply(
        &mut self,
        now: Instant,
        rng: &mut dyn RngCore,
        packet: &[u8; INITIATION_LEN],
        src: SocketAddr,
        nonce: [u8; COOKIE_NONCE_LEN],
        out: &mut [u8],
    ) -> Option<usize> {
        let cookie = self.cookie_for(now, rng, src);
        let mut sealed = [0u8; COOKIE_LEN + TAG_LEN];
        sealed[..COOKIE_LEN].copy_from_slice(&cookie);
        let (body, tag_out) = sealed.split_at_mut(COOKIE_LEN);
        let mac1 = &packet[INITIATION_MAC1_OFFSET..INITIATION_MAC2_OFFSET];
        let tag = self
            .reply_cipher
            .encrypt_in_place_detached(xnonce(&nonce), mac1, body)
            .ok()?;
        tag_out.copy_from_slice(&tag);
        // The reply is addressed to the initiation's sender index (bytes 1..5).
        let sender_index = u32::from_be_bytes([packet[1], packet[2], packet[3], packet[4]]);
        crate::wire::Packet::CookieReply(CookieReply {
            receiver_index: sender_index,
            nonce: &nonce,
            encrypted_cookie: &sealed,
        })
        .encode(out)
    }
}

/// Initiator side: stamps `mac1`/`mac2` onto initiations to one responder and keeps the
/// cookie that responder gave.
#[derive(Clone)]
pub(crate) struct CookieJar {
    mac1_key: Zeroizing<[u8; 32]>,
    reply_cipher: XChaCha20Poly1305,
    cookie: Option<(Zeroizing<[u8; COOKIE_LEN]>, Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    pub(crate) fn new(remote_static_public: &PublicKey) -> Self {
        let cookie_key = labelled_key(LABEL_COOKIE, remote_static_public);
        Self {
            mac1_key: labelled_key(LABEL_MAC1, remote_static_public),
            reply_cipher: XChaCha20Poly1305::new(GenericArray::from_slice(&cookie_key[..])),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Writes `mac1` and (with a fresh cookie) `mac2` into an initiation.
    pub(crate) fn stamp(&mut self, now: Instant, packet: &mut [u8; INITIATION_LEN]) {
        let mac1 = mac16(&self.mac1_key[..], &packet[..INITIATION_MAC1_OFFSET]);
        packet[INITIATION_MAC1_OFFSET..INITIATION_MAC2_OFFSET].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match &self.cookie {
            Some((cookie, received))
                if now.saturating_duration_since(*received) < COOKIE_LIFETIME =>
            {
                mac16(&cookie[..], &packet[..INITIATION_MAC2_OFFSET])
            }
            _ => [0; MAC_LEN],
        };
        packet[INITIATION_MAC2_OFFSET..].copy_from_slice(&mac2);
    }

    /// Decrypts and keeps the cookie from a reply to the last stamped initiation.
    /// Returns `false` (and keeps nothing) if the reply does not authenticate.
    pub(crate) fn consume_reply(&mut self, now: Instant, reply: &CookieReply<'_>) -> bool {
        let Some(mac1) = self.last_mac1 else {
            return false;
        };
        let mut cookie = Zeroizing::new([0u8; COOKIE_LEN]);
        cookie.copy_from_slice(&reply.encrypted_cookie[..COOKIE_LEN]);
        let tag = GenericArray::from_slice(&reply.encrypted_cookie[COOKIE_LEN..]);
        let opened = self
            .reply_cipher
            .decrypt_in_place_detached(xnonce(reply.nonce), &mac1, &mut cookie[..], tag)
            .is_ok();
        if opened {
            self.cookie = Some((cookie, now));
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cookie_round_trip_and_address_binding() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let responder_static = PublicKey::from_bytes([9u8; 32]);
        let now = Instant::now();
        let mut checker = CookieChecker::new(&responder_static);
        let mut jar = CookieJar::new(&responder_static);
        let mut packet = [0x01u8; INITIATION_LEN];
        jar.stamp(now, &mut packet);
        assert!(checker.mac1_ok(&packet));
        let src: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(
            !checker.mac2_ok(now, &mut rng, &packet, src),
            "no cookie yet"
        );
        let mut out = [0u8; 128];
        let len = checker
            .reply(now, &mut rng, &packet, src, [3; 24], &mut out)
            .unwrap();
        let crate::wire::Packet::CookieReply(reply) =
            crate::wire::Packet::decode(&out[..len]).unwrap()
        else {
            panic!("not a cookie reply")
        };
        assert!(jar.consume_reply(now, &reply));
        jar.stamp(now, &mut packet);
        assert!(checker.mac2_ok(now, &mut rng, &packet, src));
        let other: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        assert!(
            !checker.mac2_ok(now, &mut rng, &packet, other),
            "cookie is bound to the address"
        );
        // After the secret rotates, the old cookie stops working.
        let later = now + COOKIE_SECRET_LIFETIME;
        assert!(!checker.mac2_ok(later, &mut rng, &packet, src));
        // After its lifetime the initiator stops using the cookie.
        jar.stamp(now + COOKIE_LIFETIME, &mut packet);
        assert_eq!(&packet[INITIATION_MAC2_OFFSET..], &[0u8; MAC_LEN]);
    }

    #[test]
    fn tampered_reply_is_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let now = Instant::now();
        let mut checker = CookieChecker::new(&PublicKey::from_bytes([1; 32]));
        let mut jar = CookieJar::new(&PublicKey::from_bytes([1; 32]));
        let mut packet = [0x01u8; INITIATION_LEN];
        jar.stamp(now, &mut packet);
        let mut out = [0u8; 128];
        let src: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let len = checker
            .reply(now, &mut rng, &packet, src, [4; 24], &mut out)
            .unwrap();
        out[len - 1] ^= 1;
        let crate::wire::Packet::CookieReply(reply) =
            crate::wire::Packet::decode(&out[..len]).unwrap()
        else {
            panic!("not a cookie reply")
        };
        assert!(!jar.consume_reply(now, &reply));
    }
}
