//! The rendezvous's stand-in for a device that cannot be reached (spec/signaling.md
//! §4.5, step 5): for an unknown, revoked or offline ID, or one whose device does not
//! answer, a viewer that opened a password login gets a second login message anyway,
//! after a delay drawn like a device's round trip, so that "no such camera" looks like
//! "wrong password".

use std::time::Duration;

use bytes::Bytes;
use rand::{CryptoRng, RngCore};
use sightwire_id::{DeviceId, PublicKey};
use sightwire_session::auth::PasswordKey;
use sightwire_session::login::DeviceLogin;

/// Length of the device's login reply (the second message of the password login).
pub const DECOY_LOGIN_REPLY_LEN: usize = sightwire_session::login::LOGIN_RESPONSE_LEN;

/// Shortest delay before the decoy reply: a fast LAN-to-cloud round trip of a device.
pub const DECOY_DELAY_MIN: Duration = Duration::from_millis(40);
/// Longest delay before the decoy reply: a slow mobile or satellite uplink.
pub const DECOY_DELAY_MAX: Duration = Duration::from_millis(250);

/// The ID a decoy binds when a connect request named six octets that are no device ID
/// (`spec/signaling.md` §4.5): any ID gives the same distribution, as the password key is
/// random.
pub(crate) const DECOY_STAND_IN_ID: DeviceId = match DeviceId::from_bytes([0x02, 0, 0, 0, 0, 1]) {
    Ok(id) => id,
    Err(_) => panic!("a unicast address"),
};

/// The delay before the decoy reply, uniform in [`DECOY_DELAY_MIN`]..=[`DECOY_DELAY_MAX`]
/// (millisecond steps).
pub(crate) fn decoy_delay(rng: &mut dyn RngCore) -> Duration {
    let min = DECOY_DELAY_MIN.as_millis() as u64;
    let span = DECOY_DELAY_MAX.as_millis() as u64 - min + 1;
    Duration::from_millis(min + rng.next_u64() % span)
}

/// The second login message a device with an unknown password would send in answer to
/// `msg1` from the viewer whose Noise static key is `viewer_key`, for `device_id`; `None`
/// if `msg1` would make a real device stay silent (empty or malformed).
///
/// It is a real device's answer, computed with a fresh random password key: distributed
/// exactly like a real one, and the viewer's check of it fails exactly as for a wrong
/// password.
pub fn decoy_login_reply<R: RngCore + CryptoRng + ?Sized>(
    msg1: &[u8],
    viewer_key: &PublicKey,
    device_id: DeviceId,
    rng: &mut R,
) -> Option<Bytes> {
    if msg1.is_empty() {
        return None;
    }
    let key = PasswordKey::random(rng);
    DeviceLogin::respond(&key, viewer_key, &device_id, msg1, rng)
        .ok()
        .map(|(_, reply)| Bytes::from(reply))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn decoy_delays_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1_000 {
            let delay = decoy_delay(&mut rng);
            assert!((DECOY_DELAY_MIN..=DECOY_DELAY_MAX).contains(&delay));
        }
    }

    #[test]
    fn decoy_reply_fails_for_the_viewer_exactly_like_a_wrong_password() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = DeviceId::from_bytes([2; 6]).unwrap();
        assert_eq!(decoy_login_reply(&[], &[1; 32].into(), id, &mut rng), None);
        assert_eq!(
            decoy_login_reply(&[7; 32], &[1; 32].into(), id, &mut rng),
            None
        );
        let password = PasswordKey::random(&mut rng);
        let (login, msg1) =
            sightwire_session::login::ViewerLogin::start(&password, &[1; 32].into(), &id, &mut rng);
        let reply = decoy_login_reply(&msg1, &[1; 32].into(), id, &mut rng).unwrap();
        assert_eq!(reply.len(), DECOY_LOGIN_REPLY_LEN);
        // The same error a real device with another password causes.
        let (wrong_login, msg1_again) =
            sightwire_session::login::ViewerLogin::start(&password, &[1; 32].into(), &id, &mut rng);
        let other = PasswordKey::random(&mut rng);
        let (_, real_reply) =
            DeviceLogin::respond(&other, &[1; 32].into(), &id, &msg1_again, &mut rng).unwrap();
        assert_eq!(
            login.finish(&reply).unwrap_err(),
            wrong_login.finish(&real_reply).unwrap_err()
        );
    }
}
