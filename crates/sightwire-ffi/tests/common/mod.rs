//! What the end-to-end tests share: a deployment on loopback (issuer, rendezvous,
//! relay) with one provisioned camera identity, and a Rust viewer that collects frames.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use sightwire::{Credentials, Event, ReceivedFrame, Target, Viewer};
use sightwire_examples::local::LocalNetwork;
use sightwire_id::DeviceId;

/// The device password both sides use.
pub const PASSWORD: &str = "correct horse";

/// A loopback deployment and the identity of one camera in it.
pub struct Deployment {
    pub network: LocalNetwork,
    pub id: DeviceId,
    /// The device's static private key.
    pub private_key: [u8; 32],
    /// The raw ID certificate the issuer made for it.
    pub certificate: Vec<u8>,
    pub dir: tempfile::TempDir,
}

/// Starts issuer, rendezvous and relay on loopback and provisions a camera.
pub async fn deploy() -> Deployment {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut network = LocalNetwork::start(&dir.path().join("registry.sqlite"))
        .await
        .expect("local network");
    let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().expect("device id");
    let identity = network.provision(id).expect("certificate");
    Deployment {
        network,
        id,
        private_key: *identity.keypair.private_bytes(),
        certificate: identity.certificate.to_bytes().to_vec(),
        dir,
    }
}

impl Deployment {
    /// The rendezvous as the C side is given it (`ip:port`).
    pub fn rendezvous(&self) -> String {
        self.network.rendezvous_address().to_string()
    }

    /// The rendezvous's public key, as the C ABI takes it (32 bytes).
    pub fn rendezvous_key(&self) -> [u8; 32] {
        self.network.rendezvous.public_key.to_bytes()
    }

    /// Connects a Rust viewer to the camera and collects `count` frames (or fails the
    /// test after `limit`).
    pub async fn watch(&self, count: usize, limit: Duration) -> Vec<ReceivedFrame> {
        let mut config = self.network.viewer_config();
        config.bind = "127.0.0.1:0".parse().expect("address");
        let mut viewer = tokio::time::timeout(
            limit,
            Viewer::connect(config, Target::Id(self.id), Credentials::password(PASSWORD)),
        )
        .await
        .expect("viewer connects in time")
        .expect("viewer connects");
        let mut frames = Vec::new();
        let collected = tokio::time::timeout(limit, async {
            while frames.len() < count {
                match viewer.next_event().await {
                    Some(Event::Frame { frame, .. }) => frames.push(frame),
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await;
        assert!(
            collected.is_ok(),
            "the viewer got {} of {count} frames in {limit:?}",
            frames.len()
        );
        frames
    }
}
