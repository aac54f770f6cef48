//! The C ABI's checks and limits, called as C would call them: null pointers, wrong
//! lengths, unterminated or oversized strings, small buffers, too many addresses, an
//! unknown address family, and the resolve round trip of a rendezvous given by name.

use std::ffi::CString;
use std::ptr::{null, null_mut};

use sightwire_ffi::*;
use sightwire_session::StaticKeypair;
use sightwire_signal::cert::{CertificateFields, IssuerKey};

const NOW: u64 = 5_000_000;
const UNIX_US: u64 = 1_800_000_000_000_000;

struct Identity {
    private_key: [u8; 32],
    certificate: Vec<u8>,
    rendezvous_key: [u8; 32],
}

fn identity(seed: u8) -> Identity {
    let keypair = StaticKeypair::from_private([seed; 32]);
    let issuer = IssuerKey::from_seed(&[9; 32]);
    let certificate = issuer
        .issue(CertificateFields {
            device_id: sightwire::DeviceId::from_bytes([0x1C, 0xC3, 0x16, 0xAB, 0xCD, 0xEF])
                .expect("a unicast address"),
            device_key: *keypair.public(),
            not_before: 0,
            not_after: u64::MAX / 2,
            serial: 1,
        })
        .expect("certificate");
    Identity {
        private_key: [seed; 32],
        certificate: certificate.to_bytes().to_vec(),
        rendezvous_key: [3; 32],
    }
}

/// `sightwire_config_new` with `id`'s fields and `rendezvous`.
fn new_config(id: &Identity, rendezvous: &[u8], out: *mut *mut SightwireConfig) -> SightwireResult {
    // SAFETY: every pointer covers its length; `rendezvous` ends with a NUL (or the test
    // checks the scan stops at the limit inside it).
    unsafe {
        sightwire_config_new(
            id.private_key.as_ptr(),
            id.private_key.len(),
            id.certificate.as_ptr(),
            id.certificate.len(),
            rendezvous.as_ptr().cast(),
            id.rendezvous_key.as_ptr(),
            id.rendezvous_key.len(),
            out,
        )
    }
}

fn device_for(rendezvous: &str) -> *mut SightwireDevice {
    let id = identity(7);
    let rendezvous = CString::new(rendezvous).expect("no NUL");
    let mut config = null_mut();
    assert_eq!(
        new_config(&id, rendezvous.as_bytes_with_nul(), &mut config),
        SightwireResult::Ok
    );
    let mut device = null_mut();
    // SAFETY: a live configuration, freed once after the device copied it.
    unsafe {
        assert_eq!(
            sightwire_device_new(config, NOW, &mut device),
            SightwireResult::Ok
        );
        sightwire_config_free(config);
        assert_eq!(
            sightwire_device_set_unix_time(device, UNIX_US),
            SightwireResult::Ok
        );
    }
    device
}

#[test]
fn configurations_are_checked_field_by_field() {
    let id = identity(7);
    let address = b"192.0.2.1:3478\0";
    let mut config = null_mut();
    assert_eq!(
        new_config(&id, address, null_mut()),
        SightwireResult::NullPointer
    );

    let mut short_key = identity(7);
    short_key.private_key = [7; 32];
    // SAFETY: 31 of the 32 bytes are readable.
    let result = unsafe {
        sightwire_config_new(
            short_key.private_key.as_ptr(),
            31,
            id.certificate.as_ptr(),
            id.certificate.len(),
            address.as_ptr().cast(),
            id.rendezvous_key.as_ptr(),
            32,
            &mut config,
        )
    };
    assert_eq!(result, SightwireResult::InvalidKey);

    // A certificate for another key, and a truncated one.
    let mut other = identity(7);
    other.certificate = identity(8).certificate;
    assert_eq!(
        new_config(&other, address, &mut config),
        SightwireResult::InvalidCertificate
    );
    other.certificate = id.certificate[..100].to_vec();
    assert_eq!(
        new_config(&other, address, &mut config),
        SightwireResult::InvalidCertificate
    );
    // A certificate naming a multicast address (octet 1 is the ID's first octet): no
    // device ID, refused at the boundary like any other invalid certificate.
    other.certificate = id.certificate.clone();
    other.certificate[1] |= 0x01;
    assert_eq!(
        new_config(&other, address, &mut config),
        SightwireResult::InvalidCertificate
    );

    assert_eq!(
        new_config(&id, b"no port here\0", &mut config),
        SightwireResult::InvalidAddress
    );
    // A string with no NUL within SIGHTWIRE_MAX_RENDEZVOUS_LEN: the scan stops there.
    let mut long = vec![b'a'; SIGHTWIRE_MAX_RENDEZVOUS_LEN + 1];
    long.push(0);
    assert_eq!(
        new_config(&id, &long, &mut config),
        SightwireResult::InvalidArgument
    );
    assert!(config.is_null(), "nothing was created");

    assert_eq!(new_config(&id, address, &mut config), SightwireResult::Ok);
    let password_ok = vec![b'p'; SIGHTWIRE_MAX_PASSWORD_LEN];
    let password_long = vec![b'p'; SIGHTWIRE_MAX_PASSWORD_LEN + 1];
    let (ok, long) = (
        CString::new(password_ok).expect("no NUL"),
        CString::new(password_long).expect("no NUL"),
    );
    // SAFETY: a live configuration and NUL-terminated strings; freed once.
    unsafe {
        assert_eq!(
            sightwire_config_set_password(config, ok.as_ptr()),
            SightwireResult::Ok
        );
        assert_eq!(
            sightwire_config_set_password(config, long.as_ptr()),
            SightwireResult::InvalidArgument
        );
        assert_eq!(
            sightwire_config_set_password(config, null()),
            SightwireResult::Ok
        );
        assert_eq!(
            sightwire_config_set_password(null_mut(), ok.as_ptr()),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_config_set_max_viewers(config, 4),
            SightwireResult::Ok
        );
        assert_eq!(
            sightwire_config_set_relay_only(config, true),
            SightwireResult::Ok
        );
        sightwire_config_free(config);
        sightwire_config_free(null_mut());
    }
}

#[test]
fn a_device_speaks_first_to_its_rendezvous_and_checks_its_buffers() {
    let device = device_for("192.0.2.1:3478");
    let mut transmit = SightwireTransmit::default();
    let mut buf = vec![0u8; SIGHTWIRE_MAX_DATAGRAM_LEN];
    let mut deadline = 0;
    // SAFETY: a live device, writable outputs of the sizes given; freed once.
    unsafe {
        assert_eq!(
            sightwire_device_handle_timeout(device, NOW),
            SightwireResult::Ok
        );
        // One byte short: refused, and the datagram is still there afterwards.
        assert_eq!(
            sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len() - 1),
            SightwireResult::BufferTooSmall
        );
        assert_eq!(
            sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len()),
            SightwireResult::Ok
        );
        assert_eq!(transmit.destination.family, SIGHTWIRE_FAMILY_IPV4);
        assert_eq!(&transmit.destination.address[..4], &[192, 0, 2, 1]);
        assert_eq!(transmit.destination.port, 3478);
        assert!(transmit.len > 0 && transmit.len <= SIGHTWIRE_MAX_DATAGRAM_LEN);
        assert_eq!(buf[0], 0x01, "a Noise handshake initiation");
        assert_eq!(
            sightwire_device_poll_timeout(device, &mut deadline),
            SightwireResult::Ok
        );
        assert!(deadline > NOW, "a retransmission is scheduled");

        // Datagrams: the sender's family is checked, the length bounded, garbage ignored.
        let from = SightwireAddress {
            family: SIGHTWIRE_FAMILY_IPV4,
            address: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 3478,
        };
        let mut datagram = vec![0xEEu8; 65_536];
        assert_eq!(
            sightwire_device_handle_datagram(device, NOW, &from, datagram.as_mut_ptr(), 65_536),
            SightwireResult::InvalidArgument
        );
        assert_eq!(
            sightwire_device_handle_datagram(device, NOW, &from, datagram.as_mut_ptr(), 100),
            SightwireResult::Ok
        );
        let bad_family = SightwireAddress { family: 5, ..from };
        assert_eq!(
            sightwire_device_handle_datagram(device, NOW, &bad_family, datagram.as_mut_ptr(), 1),
            SightwireResult::InvalidArgument
        );
        assert_eq!(
            sightwire_device_handle_datagram(device, NOW, null(), datagram.as_mut_ptr(), 1),
            SightwireResult::NullPointer
        );

        // Frames: none may be empty; with no viewer a frame is queued for nobody.
        let data = [0u8, 0, 0, 1, 0x65, 0x88];
        let mut frame = SightwireFrame {
            data: data.as_ptr(),
            len: data.len(),
            codec: SightwireCodec::H264 as u32,
            stream: 0,
            keyframe: true,
            codec_config: false,
            capture_time_us: 0,
        };
        let mut queued = 9;
        assert_eq!(
            sightwire_device_send_frame(device, NOW, &frame, &mut queued),
            SightwireResult::Ok
        );
        assert_eq!(queued, 0);
        frame.len = 0;
        assert_eq!(
            sightwire_device_send_frame(device, NOW, &frame, null_mut()),
            SightwireResult::FrameRefused
        );
        frame.len = data.len();
        let mut registered = true;
        assert_eq!(
            sightwire_device_is_registered(device, &mut registered),
            SightwireResult::Ok
        );
        assert!(!registered);

        assert_eq!(
            sightwire_device_shutdown(device, NOW + 1),
            SightwireResult::Ok
        );
        assert_eq!(
            sightwire_device_send_frame(device, NOW + 1, &frame, null_mut()),
            SightwireResult::ShutDown
        );
        sightwire_device_free(device);
    }
}

#[test]
fn null_handles_are_refused_everywhere() {
    let mut transmit = SightwireTransmit::default();
    let mut event = SightwireEvent::default();
    let mut buf = [0u8; SIGHTWIRE_MAX_DATAGRAM_LEN];
    let mut value = 0u64;
    // SAFETY: every handle is null, which each function checks before anything else.
    unsafe {
        let device: *mut SightwireDevice = null_mut();
        assert_eq!(
            sightwire_device_new(null(), NOW, null_mut()),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_device_handle_timeout(device, NOW),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len()),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_device_poll_event(device, &mut event),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_device_poll_timeout(device, &mut value),
            SightwireResult::NullPointer
        );
        sightwire_device_free(device);

        let camera: *mut SightwireCamera = null_mut();
        assert_eq!(
            sightwire_camera_start(null(), null_mut()),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_camera_poll_event(camera, &mut event),
            SightwireResult::NullPointer
        );
        assert_eq!(
            sightwire_camera_send_frame(camera, null()),
            SightwireResult::NullPointer
        );
        assert_eq!(sightwire_camera_stop(camera), 0);
    }
}

#[test]
fn a_rendezvous_name_is_resolved_by_the_application() {
    let device = device_for("rendezvous.example:3478");
    let mut host = [0u8; 256];
    let mut port = 0u16;
    let mut transmit = SightwireTransmit::default();
    let mut buf = vec![0u8; SIGHTWIRE_MAX_DATAGRAM_LEN];
    // SAFETY: a live device, writable outputs of the sizes given; freed once.
    unsafe {
        assert_eq!(
            sightwire_device_handle_timeout(device, NOW),
            SightwireResult::Ok
        );
        // Too small for the name and its NUL: kept for the next call.
        assert_eq!(
            sightwire_device_poll_resolve(device, host.as_mut_ptr().cast(), 18, &mut port),
            SightwireResult::BufferTooSmall
        );
        assert_eq!(
            sightwire_device_poll_resolve(device, host.as_mut_ptr().cast(), host.len(), &mut port),
            SightwireResult::Ok
        );
        assert_eq!(&host[..20], b"rendezvous.example\0\0");
        assert_eq!(port, 3478);
        assert_eq!(
            sightwire_device_poll_resolve(device, host.as_mut_ptr().cast(), host.len(), &mut port),
            SightwireResult::Empty
        );

        let address = SightwireAddress {
            family: SIGHTWIRE_FAMILY_IPV4,
            address: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 3478,
        };
        let too_many = vec![address; SIGHTWIRE_MAX_RESOLVED_ADDRESSES + 1];
        assert_eq!(
            sightwire_device_handle_resolved(device, NOW, too_many.as_ptr(), too_many.len()),
            SightwireResult::InvalidArgument
        );
        let unknown = [SightwireAddress {
            family: 0,
            ..address
        }];
        assert_eq!(
            sightwire_device_handle_resolved(device, NOW, unknown.as_ptr(), 1),
            SightwireResult::InvalidArgument
        );
        let at_limit = vec![address; SIGHTWIRE_MAX_RESOLVED_ADDRESSES];
        assert_eq!(
            sightwire_device_handle_resolved(device, NOW, at_limit.as_ptr(), at_limit.len()),
            SightwireResult::Ok
        );
        assert_eq!(
            sightwire_device_handle_timeout(device, NOW + 1),
            SightwireResult::Ok
        );
        let mut handshake_sent = false;
        while sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len())
            == SightwireResult::Ok
        {
            handshake_sent |= transmit.destination == address;
        }
        assert!(handshake_sent, "the handshake goes to the resolved address");
        sightwire_device_free(device);
    }
}
