//! The driver's socket: buffers sized as configured, as far as the kernel allows.

use sightwire::{Device, DeviceConfig, DeviceIdentity, RendezvousServer};
use sightwire_session::StaticKeypair;
use sightwire_signal::cert::{CertificateFields, IssuerKey};

fn kernel_max(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn socket_buffers_are_enlarged_as_far_as_the_kernel_allows() {
    let keypair = StaticKeypair::from_private([5; 32]);
    let certificate = IssuerKey::from_seed(&[6; 32])
        .issue(CertificateFields {
            device_id: sightwire::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0, 0, 1]).unwrap(),
            device_key: *keypair.public(),
            not_before: 0,
            not_after: u64::MAX / 2,
            serial: 1,
        })
        .unwrap();
    // Nobody answers at the rendezvous address: the device just keeps trying.
    let rendezvous = RendezvousServer::new(
        "127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap(),
        [1; 32].into(),
    );
    let requested = 1 << 20;
    let mut config = DeviceConfig::new(DeviceIdentity::new(keypair, certificate), rendezvous);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.socket_buffer_bytes = requested;
    let device = Device::start(config).await.unwrap();
    let granted = device.socket_buffers();

    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = socket2::SockRef::from(&plain);
    let default = (
        sock.recv_buffer_size().unwrap(),
        sock.send_buffer_size().unwrap(),
    );
    println!("requested {requested}, granted {granted:?}, kernel default {default:?}");
    assert!(granted.receive >= default.0 && granted.send >= default.1);
    // Linux grants min(request, max) doubled: more than the default whenever the
    // maximum allows anything above it.
    if kernel_max("rmem_max").is_some_and(|max| max * 2 > default.0) {
        assert!(granted.receive > default.0, "{granted:?} vs {default:?}");
    }
    if kernel_max("wmem_max").is_some_and(|max| max * 2 > default.1) {
        assert!(granted.send > default.1, "{granted:?} vs {default:?}");
    }
    device.shutdown().await;
}
