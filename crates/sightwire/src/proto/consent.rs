//! Consent before disclosure (`spec/signaling.md` §4.5): the rendezvous introduces a
//! viewer to a device without any address; the device admits a key it trusts at once,
//! or runs the password login (SPAKE2, `sightwire_session::login`) through the
//! rendezvous, and only its `accept` lets the rendezvous disclose either side's
//! addresses. Knowing a device ID grants nothing: a stranger learns neither where the
//! camera is nor whether it exists, and never takes one of its viewer slots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightwire_id::DeviceId;
use sightwire_session::PublicKey;
use sightwire_session::login::{DeviceLogin, ViewerLogin};
use sightwire_signal::{Body, ConnectId, Consent, Introduction};

use super::{Endpoint, Role};

/// Most introductions a device tracks at once (oldest forgotten first). Each holds one
/// login state of a few hundred bytes.
pub const MAX_PENDING_CONSENTS: usize = 32;
/// How long a device remembers an introduction it consented to (or is logging in),
/// waiting for the rendezvous's offer. The rendezvous answers within its 3 s window.
pub(crate) const CONSENT_TTL: Duration = Duration::from_secs(10);

/// What a device knows of one introduction.
#[derive(Debug)]
pub(crate) struct Consenting {
    pub(crate) viewer_key: PublicKey,
    /// The password login in progress, if any.
    login: Option<DeviceLogin>,
    /// What this device last sent for the introduction (its login message, or empty for
    /// a bare accept), resent when the rendezvous introduces again (something was lost).
    last_sent: Bytes,
    /// The digest of the confirmation the login expects, sent with `last_sent` so the
    /// rendezvous may disclose on the viewer's confirmation itself.
    digest: Option<[u8; 32]>,
    pub(crate) accepted: bool,
    since: Instant,
}

/// A device's introductions, bounded.
#[derive(Debug, Default)]
pub(crate) struct Consents {
    entries: BTreeMap<ConnectId, Consenting>,
}

impl Consents {
    fn insert(&mut self, now: Instant, id: ConnectId, entry: Consenting) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.since) < CONSENT_TTL);
        if self.entries.len() >= MAX_PENDING_CONSENTS
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.since)
                .map(|(id, _)| *id)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(id, entry);
    }

    /// Takes the consent for `id` if the device accepted it for `viewer_key`.
    pub(crate) fn take_accepted(&mut self, id: ConnectId, viewer_key: &PublicKey) -> bool {
        match self.entries.get(&id) {
            Some(e) if e.accepted && e.viewer_key == *viewer_key => {
                self.entries.remove(&id);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Endpoint {
    /// Device: the rendezvous introduces a viewer.
    pub(crate) fn device_on_introduction(&mut self, now: Instant, intro: Introduction) {
        let Role::Device(device) = &mut self.role else {
            return;
        };
        let key = intro.viewer_key;
        let device_id = device.certificate.device_id();
        // The same introduction again: something this device sent was lost. Send it
        // again; nothing is decided twice (and no login guess is counted twice).
        if let Some(entry) = device.consents.entries.get(&intro.connect_id) {
            if entry.viewer_key == key {
                let (last, accepted, digest) =
                    (entry.last_sent.clone(), entry.accepted, entry.digest);
                self.send_consent(now, intro.connect_id, last, accepted, digest);
            }
            return;
        }
        if self
            .conns
            .contains_key(&crate::events::PeerId(intro.connect_id.0))
        {
            return;
        }
        let Role::Device(device) = &mut self.role else {
            return;
        };
        if device.authorizer.is_trusted(&key) {
            tracing::info!(
                connect = intro.connect_id.0,
                "introduction from a trusted key"
            );
            device.consents.insert(
                now,
                intro.connect_id,
                Consenting {
                    viewer_key: key,
                    login: None,
                    last_sent: Bytes::new(),
                    digest: None,
                    accepted: true,
                    since: now,
                },
            );
            return self.send_consent(now, intro.connect_id, Bytes::new(), true, None);
        }
        let Some(password) = device.password.as_ref() else {
            tracing::debug!("introduction from an unknown key, and no password: ignored");
            return;
        };
        if intro.login.is_empty() {
            tracing::debug!("introduction from an unknown key without a login: ignored");
            return;
        }
        if let Err(throttled) = device.throttle.check(now, &key) {
            tracing::info!(?throttled, "login throttled");
            return;
        }
        match DeviceLogin::respond(
            password,
            &key,
            &device_id,
            &intro.login,
            &mut self.agent_rng,
        ) {
            Ok((login, reply)) => {
                // The reply lets the viewer test one guess: it counts until confirmed.
                device.throttle.record_failure(now, &key);
                let reply = Bytes::from(reply);
                let digest = Some(login.expected_confirmation_digest());
                device.consents.insert(
                    now,
                    intro.connect_id,
                    Consenting {
                        viewer_key: key,
                        login: Some(login),
                        last_sent: reply.clone(),
                        digest,
                        accepted: false,
                        since: now,
                    },
                );
                self.send_consent(now, intro.connect_id, reply, false, digest);
            }
            Err(error) => tracing::debug!(%error, "bad login opening"),
        }
    }

    /// Device: the viewer's last login message, relayed by the rendezvous.
    pub(crate) fn device_on_consent(&mut self, now: Instant, consent: Consent) {
        let Role::Device(device) = &mut self.role else {
            return;
        };
        let Some(entry) = device.consents.entries.get_mut(&consent.connect_id) else {
            return;
        };
        let Some(login) = entry.login.take() else {
            if entry.accepted {
                // The viewer's confirmation again: our accept was lost.
                self.send_consent(now, consent.connect_id, Bytes::new(), true, None);
            }
            return;
        };
        let key = entry.viewer_key;
        match login.finish(&consent.login) {
            Ok(()) => {
                tracing::info!(connect = consent.connect_id.0, "password login succeeded");
                device.throttle.record_success(now, &key);
                entry.accepted = true;
                entry.last_sent = Bytes::new();
                entry.digest = None;
                self.send_consent(now, consent.connect_id, Bytes::new(), true, None);
            }
            Err(error) => {
                tracing::info!(connect = consent.connect_id.0, %error, "password login failed");
                device.consents.entries.remove(&consent.connect_id);
            }
        }
    }

    /// Viewer: the device's answer to our login opening, relayed by the rendezvous
    /// (`request_id` is our connect request's).
    pub(crate) fn viewer_on_consent(&mut self, now: Instant, request_id: u64, consent: Consent) {
        let Some(watch_id) = self.watch_of_request(request_id) else {
            return;
        };
        let Some(watch) = self.watch_mut(watch_id) else {
            return;
        };
        let Some(login) = watch.login.take() else {
            // The device's login message again (the rendezvous resends it when our
            // request is retransmitted): our confirmation may have been lost.
            if let Some((id, reply)) = watch.login_reply.clone()
                && id == consent.connect_id
            {
                self.send_consent(now, id, reply, false, None);
            }
            return;
        };
        match login.finish(&consent.login) {
            Ok(reply) => {
                let reply = Bytes::from(reply);
                watch.login_reply = Some((consent.connect_id, reply.clone()));
                self.send_consent(now, consent.connect_id, reply, false, None);
            }
            // A wrong password, or the rendezvous standing in for a device that is not
            // there: indistinguishable by design. The rendezvous's UNAVAILABLE follows.
            Err(error) => tracing::info!(%error, "login not confirmed by the device"),
        }
    }

    /// Viewer: the login opening for a new connect request to `device_id`, if the watch
    /// has a password.
    pub(crate) fn start_login(
        &mut self,
        password: Option<&sightwire_session::auth::PasswordKey>,
        device_id: &DeviceId,
    ) -> Option<(ViewerLogin, Bytes)> {
        let password = password?;
        let own_key = *self.sessions.local_public();
        let (login, opening) =
            ViewerLogin::start(password, &own_key, device_id, &mut self.agent_rng);
        Some((login, Bytes::from(opening)))
    }

    fn send_consent(
        &mut self,
        now: Instant,
        connect_id: ConnectId,
        login: Bytes,
        accept: bool,
        confirmation_digest: Option<[u8; 32]>,
    ) {
        self.send_signal(
            now,
            Body::Consent(Consent {
                connect_id,
                login,
                accept,
                confirmation_digest,
            }),
            0,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consent_table_is_bounded_and_forgets_the_oldest() {
        let start = Instant::now();
        let mut consents = Consents::default();
        for n in 0..MAX_PENDING_CONSENTS as u64 + 5 {
            let entry = Consenting {
                viewer_key: [n as u8; 32].into(),
                login: None,
                last_sent: Bytes::new(),
                digest: None,
                accepted: true,
                since: start + Duration::from_millis(n),
            };
            consents.insert(start + Duration::from_millis(n), ConnectId(n + 1), entry);
        }
        assert_eq!(consents.len(), MAX_PENDING_CONSENTS);
        // The five oldest are gone; the newest is there, for its key only.
        assert!(!consents.take_accepted(ConnectId(1), &[0; 32].into()));
        let newest = MAX_PENDING_CONSENTS as u64 + 5;
        assert!(!consents.take_accepted(ConnectId(newest), &[0; 32].into()));
        assert!(consents.take_accepted(ConnectId(newest), &[(newest - 1) as u8; 32].into()));
    }

    #[test]
    fn consents_expire() {
        let start = Instant::now();
        let mut consents = Consents::default();
        let entry = |since| Consenting {
            viewer_key: [1; 32].into(),
            login: None,
            last_sent: Bytes::new(),
            digest: None,
            accepted: true,
            since,
        };
        consents.insert(start, ConnectId(1), entry(start));
        let later = start + CONSENT_TTL;
        consents.insert(later, ConnectId(2), entry(later));
        assert_eq!(consents.len(), 1);
        assert!(!consents.take_accepted(ConnectId(1), &[1; 32].into()));
    }
}
