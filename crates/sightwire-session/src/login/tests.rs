use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

const DEVICE: DeviceId = match DeviceId::from_bytes([0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]) {
    Ok(id) => id,
    Err(_) => panic!("a unicast address"),
};
const VIEWER: PublicKey = PublicKey::from_bytes([9; 32]);

fn key(byte: u8) -> PasswordKey {
    PasswordKey::from_bytes([byte; 32])
}

/// Runs a login where each side has its own view; returns where it stopped.
fn run(
    seed: u64,
    viewer: (&PasswordKey, &PublicKey, &DeviceId),
    device: (&PasswordKey, &PublicKey, &DeviceId),
) -> Result<(), (LoginMessage, LoginError)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (v, msg1) = ViewerLogin::start(viewer.0, viewer.1, viewer.2, &mut rng);
    let (d, msg2) = DeviceLogin::respond(device.0, device.1, device.2, &msg1, &mut rng)
        .map_err(|e| (LoginMessage::Start, e))?;
    let msg3 = v.finish(&msg2).map_err(|e| (LoginMessage::Response, e))?;
    d.finish(&msg3).map_err(|e| (LoginMessage::Confirm, e))
}

/// The three messages of one honest login.
fn transcript(seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let k = key(1);
    let (v, msg1) = ViewerLogin::start(&k, &VIEWER, &DEVICE, &mut rng);
    let (_, msg2) = DeviceLogin::respond(&k, &VIEWER, &DEVICE, &msg1, &mut rng).unwrap();
    let msg3 = v.finish(&msg2).unwrap();
    (msg1, msg2, msg3)
}

#[test]
fn message_sizes_are_fixed_and_fit_the_introduction() {
    for seed in 0..8 {
        let (msg1, msg2, msg3) = transcript(seed);
        assert_eq!(msg1.len(), LOGIN_START_LEN);
        assert_eq!(msg2.len(), LOGIN_RESPONSE_LEN);
        assert_eq!(msg3.len(), LOGIN_CONFIRM_LEN);
        assert_eq!(
            (msg1[0], msg2[0], msg3[0]),
            (TYPE_LOGIN_START, TYPE_LOGIN_RESPONSE, TYPE_LOGIN_CONFIRM)
        );
    }
    assert_eq!(
        (LOGIN_START_LEN, LOGIN_RESPONSE_LEN, LOGIN_CONFIRM_LEN),
        (34, 66, 33)
    );
    const { assert!(MAX_LOGIN_MESSAGE_LEN <= 128) };
}

#[test]
fn the_real_kdf_and_the_login_agree() {
    let password = b"correct horse battery staple";
    let viewer_key = PasswordKey::derive(password, &DEVICE);
    let device_key = PasswordKey::from_bytes(*PasswordKey::derive(password, &DEVICE).as_bytes());
    assert_eq!(
        run(
            1,
            (&viewer_key, &VIEWER, &DEVICE),
            (&device_key, &VIEWER, &DEVICE)
        ),
        Ok(())
    );
}

#[test]
fn a_failed_viewer_sends_nothing() {
    // A device impostor (no password) answers with a guess: the viewer rejects msg2 and
    // has no msg3 to send, so the impostor learns only that one guess was wrong.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (v, msg1) = ViewerLogin::start(&key(1), &VIEWER, &DEVICE, &mut rng);
    let (_, msg2) = DeviceLogin::respond(&key(2), &VIEWER, &DEVICE, &msg1, &mut rng).unwrap();
    assert_eq!(v.finish(&msg2), Err(LoginError::ConfirmationFailed));
}

#[test]
fn small_order_and_non_canonical_elements_are_refused() {
    let (msg1, msg2, _) = transcript(5);
    // The identity point, a point of order 2 (y = -1), and a non-canonical encoding.
    let identity = {
        let mut e = [0u8; 32];
        e[0] = 1;
        e
    };
    let order_two = {
        let mut e = [0xffu8; 32];
        e[0] = 0xec;
        e[31] = 0x7f;
        e
    };
    let non_canonical = {
        // y = p + 1 encodes 1 (the identity) non-canonically.
        let mut e = [0xffu8; 32];
        e[0] = 0xee;
        e[31] = 0x7f;
        e
    };
    for element in [identity, order_two, non_canonical] {
        let mut bad1 = msg1.clone();
        bad1[2..34].copy_from_slice(&element);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        assert_eq!(
            DeviceLogin::respond(&key(1), &VIEWER, &DEVICE, &bad1, &mut rng).map(|_| ()),
            Err(LoginError::InvalidElement {
                message: LoginMessage::Start
            })
        );
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (v, _) = ViewerLogin::start(&key(1), &VIEWER, &DEVICE, &mut rng);
        let mut bad2 = msg2.clone();
        bad2[2..34].copy_from_slice(&element);
        assert_eq!(
            v.finish(&bad2),
            Err(LoginError::InvalidElement {
                message: LoginMessage::Response
            })
        );
    }
    // A mixed-order point: a valid element plus the order-2 point.
    let valid = curve25519_dalek::edwards::CompressedEdwardsY(msg1[2..34].try_into().unwrap())
        .decompress()
        .unwrap();
    let two = curve25519_dalek::edwards::CompressedEdwardsY(order_two)
        .decompress()
        .unwrap();
    let mut mixed = msg1.clone();
    mixed[2..34].copy_from_slice((valid + two).compress().as_bytes());
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    assert!(matches!(
        DeviceLogin::respond(&key(1), &VIEWER, &DEVICE, &mixed, &mut rng),
        Err(LoginError::InvalidElement { .. })
    ));
}

#[test]
fn typed_errors_for_shape() {
    let (msg1, msg2, msg3) = transcript(9);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    assert_eq!(
        DeviceLogin::respond(&key(1), &VIEWER, &DEVICE, &msg1[..33], &mut rng).map(|_| ()),
        Err(LoginError::WrongLength {
            message: LoginMessage::Start,
            len: 33,
            expected: 34
        })
    );
    assert_eq!(
        DeviceLogin::respond(&key(1), &VIEWER, &DEVICE, &msg2[..34], &mut rng).map(|_| ()),
        Err(LoginError::WrongType {
            message: LoginMessage::Start,
            found: TYPE_LOGIN_RESPONSE
        })
    );
    let (v, _) = ViewerLogin::start(&key(1), &VIEWER, &DEVICE, &mut rng);
    assert_eq!(
        v.finish(&msg3),
        Err(LoginError::WrongLength {
            message: LoginMessage::Response,
            len: 33,
            expected: 66
        })
    );
    let (_, msg1b) = ViewerLogin::start(&key(1), &VIEWER, &DEVICE, &mut rng);
    let (d, _) = DeviceLogin::respond(&key(1), &VIEWER, &DEVICE, &msg1b, &mut rng).unwrap();
    assert_eq!(
        d.finish(&[]),
        Err(LoginError::WrongLength {
            message: LoginMessage::Confirm,
            len: 0,
            expected: 33
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn right_password_both_finish(
        seed: u64,
        pw: [u8; 32],
        viewer: [u8; 32],
        device in any::<[u8; 6]>().prop_filter_map("a device ID", |b| DeviceId::from_bytes(b).ok()),
    ) {
        let k = PasswordKey::from_bytes(pw);
        let viewer = PublicKey::from_bytes(viewer);
        prop_assert_eq!(run(seed, (&k, &viewer, &device), (&k, &viewer, &device)), Ok(()));
    }

    #[test]
    fn wrong_password_is_rejected(seed: u64, a: [u8; 32], b: [u8; 32]) {
        prop_assume!(a != b);
        let (ka, kb) = (PasswordKey::from_bytes(a), PasswordKey::from_bytes(b));
        let result = run(seed, (&ka, &VIEWER, &DEVICE), (&kb, &VIEWER, &DEVICE));
        // The device cannot tell from msg1; the viewer rejects the device's confirmation.
        prop_assert_eq!(result, Err((LoginMessage::Response, LoginError::ConfirmationFailed)));
    }

    #[test]
    fn swapped_viewer_key_or_device_id_is_rejected(
        seed: u64,
        other_viewer: [u8; 32],
        other_device in any::<[u8; 6]>().prop_filter_map("a device ID", |b| DeviceId::from_bytes(b).ok()),
    ) {
        let other_viewer = PublicKey::from_bytes(other_viewer);
        prop_assume!(other_viewer != VIEWER && other_device != DEVICE);
        let k = key(1);
        // The rendezvous hands the device another viewer key than the viewer's own.
        prop_assert_eq!(
            run(seed, (&k, &VIEWER, &DEVICE), (&k, &other_viewer, &DEVICE)),
            Err((LoginMessage::Response, LoginError::ConfirmationFailed))
        );
        // The viewer reached a device with another ID (same password).
        prop_assert_eq!(
            run(seed, (&k, &VIEWER, &DEVICE), (&k, &VIEWER, &other_device)),
            Err((LoginMessage::Response, LoginError::ConfirmationFailed))
        );
    }

    #[test]
    fn any_mutated_message_is_rejected(
        seed: u64,
        which in 0..3usize,
        position: usize,
        flip in 1..=255u8,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let k = key(1);
        let (v, mut msg1) = ViewerLogin::start(&k, &VIEWER, &DEVICE, &mut rng);
        if which == 0 {
            let i = position % msg1.len();
            msg1[i] ^= flip;
        }
        let Ok((d, mut msg2)) = DeviceLogin::respond(&k, &VIEWER, &DEVICE, &msg1, &mut rng) else {
            prop_assert_eq!(which, 0);
            return Ok(());
        };
        if which == 1 {
            let i = position % msg2.len();
            msg2[i] ^= flip;
        }
        let Ok(mut msg3) = v.finish(&msg2) else {
            prop_assert!(which <= 1);
            return Ok(());
        };
        prop_assert_eq!(which, 2, "a mutated msg1 or msg2 must not pass the viewer");
        let i = position % msg3.len();
        msg3[i] ^= flip;
        prop_assert!(d.finish(&msg3).is_err());
    }

    #[test]
    fn arbitrary_bytes_give_typed_errors(seed: u64, bytes in proptest::collection::vec(any::<u8>(), 0..140), typed: bool) {
        let mut bytes = bytes;
        // Half the time make the type byte and length right, so the deeper checks run.
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let k = key(1);
        let mut as_msg1 = bytes.clone();
        if typed {
            as_msg1.resize(LOGIN_START_LEN, 0);
            as_msg1[0] = TYPE_LOGIN_START;
        }
        let _ = DeviceLogin::respond(&k, &VIEWER, &DEVICE, &as_msg1, &mut rng);
        let (v, msg1) = ViewerLogin::start(&k, &VIEWER, &DEVICE, &mut rng);
        if typed {
            bytes.resize(LOGIN_RESPONSE_LEN, 0);
            bytes[0] = TYPE_LOGIN_RESPONSE;
        }
        prop_assert!(v.finish(&bytes).is_err());
        let (d, _) = DeviceLogin::respond(&k, &VIEWER, &DEVICE, &msg1, &mut rng).unwrap();
        if typed {
            bytes.resize(LOGIN_CONFIRM_LEN, 0);
            bytes[0] = TYPE_LOGIN_CONFIRM;
        }
        prop_assert!(d.finish(&bytes).is_err());
    }
}

/// Writes a genuine transcript as the fuzz seed corpus (`fuzz/corpus/session_login`).
#[test]
#[ignore = "run by hand to refresh the fuzz corpus"]
fn write_fuzz_seeds() {
    let (msg1, msg2, msg3) = transcript(1);
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/session_login"
    );
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in [
        ("seed-msg1", msg1),
        ("seed-msg2", msg2),
        ("seed-msg3", msg3),
    ] {
        std::fs::write(format!("{dir}/{name}"), bytes).unwrap();
    }
}

#[test]
fn fuzz_entry_point_on_genuine_messages() {
    let (msg1, msg2, msg3) = transcript(1);
    for m in [&msg1[..], &msg2, &msg3, &[], &[TYPE_LOGIN_START]] {
        crate::fuzzing::login_messages(m);
    }
}

proptest! {
    /// The digest a device gives the rendezvous matches the viewer's msg3 exactly when
    /// the viewer knows the password: a wrong password (or any other msg3) never
    /// matches, so the rendezvous cannot disclose to it.
    #[test]
    fn the_confirmation_digest_matches_only_the_right_confirmation(
        seed in any::<u64>(),
        wrong in 2u8..=255,
        flip in 1usize..LOGIN_CONFIRM_LEN,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let right = key(1);
        let (viewer, msg1) = ViewerLogin::start(&right, &VIEWER, &DEVICE, &mut rng);
        let (device, msg2) = DeviceLogin::respond(&right, &VIEWER, &DEVICE, &msg1, &mut rng).unwrap();
        let expected = device.expected_confirmation_digest();
        let msg3 = viewer.finish(&msg2).unwrap();
        prop_assert_eq!(confirmation_digest(&msg3), expected);
        let mut tampered = msg3.clone();
        tampered[flip] ^= 1;
        prop_assert_ne!(confirmation_digest(&tampered), expected);

        // A viewer with another password: the device answers, but its digest is not
        // the one the device expects (and the viewer stops at msg2 anyway).
        let (guesser, msg1) = ViewerLogin::start(&key(wrong), &VIEWER, &DEVICE, &mut rng);
        let (device, msg2) = DeviceLogin::respond(&right, &VIEWER, &DEVICE, &msg1, &mut rng).unwrap();
        prop_assert!(guesser.finish(&msg2).is_err());
        prop_assert_ne!(device.expected_confirmation_digest(), expected);
    }
}
