//! End to end on loopback: issuer, rendezvous, relay, cameras and viewers, all real,
//! over real UDP sockets.

use std::time::Duration;

use sightwire::{
    ConnectError, Credentials, Device, DeviceConfig, Event, PathKind, PathPolicy, RESOLVE_TIMEOUT,
    ResolveError, Target, Viewer,
};
use sightwire_examples::local::LocalNetwork;
use sightwire_examples::source::FrameSource;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use tokio::time::timeout;

const PASSWORD: &str = "correct horse";
const KEEPALIVE: Duration = Duration::from_secs(2);

struct Setup {
    network: LocalNetwork,
    device: Device,
    uri: DeviceUri,
    _dir: TempDir,
}

/// A directory removed on drop (keeps the test free of a tempfile dependency).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sightwire-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(name: &str, policy: PathPolicy) -> Setup {
    setup_with(name, policy, |_| {}).await
}

async fn setup_with(name: &str, policy: PathPolicy, configure: fn(&mut DeviceConfig)) -> Setup {
    let dir = TempDir::new(name);
    // A short keepalive interval so the restart test runs in seconds.
    let core = {
        let mut value = sightwire_rendezvous::CoreConfig::default();
        value.keepalive_interval = KEEPALIVE;
        value
    };
    let mut network = LocalNetwork::start_with(&dir.0.join("registry.sqlite"), core)
        .await
        .unwrap();
    let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
    let identity = network.provision(id).unwrap();
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let mut config = DeviceConfig::new(identity, network.rendezvous.clone());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.password = Some(PASSWORD.into());
    config.path_policy = policy;
    configure(&mut config);
    let mut device = Device::start(config).await.unwrap();
    wait_for(&mut device, |e| matches!(e, Event::Registered { .. })).await;
    Setup {
        network,
        device,
        uri,
        _dir: dir,
    }
}

async fn wait_for(device: &mut Device, mut matches: impl FnMut(&Event) -> bool) -> Event {
    timeout(Duration::from_secs(15), async {
        loop {
            let event = device.next_event().await.expect("device running");
            if matches(&event) {
                return event;
            }
        }
    })
    .await
    .expect("event in time")
}

async fn connect(
    setup: &Setup,
    target: Target,
    password: &str,
    policy: PathPolicy,
) -> Result<Viewer, ConnectError> {
    let mut config = setup.network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.path_policy = policy;
    Viewer::connect(config, target, Credentials::password(password)).await
}

/// Streams `frames` synthetic frames from the device at 100 fps and checks that every
/// viewer receives each one byte for byte and in order. Returns the path each viewer saw.
async fn stream_and_check(setup: &mut Setup, viewers: &mut [Viewer], frames: u32) -> Vec<PathKind> {
    let mut source = FrameSource::synthetic(100, 25, Some(frames));
    let expected: Vec<_> = std::iter::from_fn(|| source.next_frame()).collect();
    let mut paths = vec![None; viewers.len()];
    for frame in &expected {
        setup
            .device
            .send_frame(frame.clone())
            .await
            .expect("the endpoint stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, viewer) in viewers.iter_mut().enumerate() {
        let mut received = Vec::new();
        timeout(Duration::from_secs(10), async {
            while received.len() < expected.len() {
                match viewer.next_event().await.expect("viewer running") {
                    Event::Frame { frame, .. } => received.push(frame),
                    Event::PeerConnected { path: Some(p), .. }
                    | Event::PathChanged { path: p, .. } => paths[i] = Some(p.kind),
                    Event::Stats { stats, .. } => {
                        if let Some(p) = stats.path {
                            paths[i] = Some(p.kind);
                        }
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "viewer {i} got {} of {} frames",
                received.len(),
                expected.len()
            )
        });
        for (got, sent) in received.iter().zip(&expected) {
            assert_eq!(got.frame.data, sent.data, "frame payload differs");
            assert_eq!(got.frame.keyframe, sent.keyframe);
            assert_eq!(got.frame.capture_time_us, sent.capture_time_us);
        }
    }
    paths
        .into_iter()
        .map(|p| p.expect("a path was reported"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_byte_identical_and_in_order() {
    let mut setup = setup("order", PathPolicy::Any).await;
    let viewer = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any)
        .await
        .expect("viewer connects");
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    let paths = stream_and_check(&mut setup, &mut [viewer], 60).await;
    // Both ends on 127.0.0.1: a LAN path.
    assert_eq!(paths, vec![PathKind::Lan]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_at_once() {
    let mut setup = setup("two", PathPolicy::Any).await;
    let first = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any)
        .await
        .unwrap();
    let second = connect(
        &setup,
        Target::Id(setup.uri.id()),
        PASSWORD,
        PathPolicy::Any,
    )
    .await
    .unwrap();
    assert_ne!(first.peer(), second.peer());
    for _ in 0..2 {
        wait_for(&mut setup.device, |e| {
            matches!(e, Event::PeerConnected { .. })
        })
        .await;
    }
    let paths = stream_and_check(&mut setup, &mut [first, second], 40).await;
    assert_eq!(paths.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_mode_streams_through_the_relay() {
    let mut setup = setup("relay", PathPolicy::RelayOnly).await;
    let viewer = connect(
        &setup,
        Target::Uri(setup.uri),
        PASSWORD,
        PathPolicy::RelayOnly,
    )
    .await
    .expect("viewer connects through the relay");
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    let paths = stream_and_check(&mut setup, &mut [viewer], 40).await;
    assert_eq!(paths, vec![PathKind::Relay]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_by_the_device() {
    let mut setup = setup("password", PathPolicy::Any).await;
    let started = std::time::Instant::now();
    let result = connect(&setup, Target::Uri(setup.uri), "wrong", PathPolicy::Any).await;
    // Refused at the login, before any address was disclosed: the same answer as an
    // unknown or offline camera.
    assert_eq!(result.err(), Some(ConnectError::Unavailable));
    assert!(started.elapsed() >= sightwire_rendezvous::CONSENT_WINDOW);
    // The camera never opened a connection for it.
    assert!(
        timeout(Duration::from_millis(300), async {
            loop {
                if let Some(Event::PeerConnected { .. }) = setup.device.next_event().await {
                    return;
                }
            }
        })
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_pinned_to_another_key_refuses_the_device() {
    let setup = setup("pinned", PathPolicy::Any).await;
    let wrong = DeviceUri::new(
        setup.uri.id(),
        KeyFingerprint::of_public_key(&[9; 32].into()),
    );
    let result = connect(&setup, Target::Uri(wrong), PASSWORD, PathPolicy::Any).await;
    assert_eq!(result.err(), Some(ConnectError::KeyMismatch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_is_reported() {
    let setup = setup("unknown", PathPolicy::Any).await;
    let other: DeviceId = "02:00:00:00:00:42".parse().unwrap();
    let result = connect(&setup, Target::Id(other), PASSWORD, PathPolicy::Any).await;
    // Deliberately the same answer as a wrong password (spec/signaling.md §4.5).
    assert_eq!(result.err(), Some(ConnectError::Unavailable));
}

/// The rendezvous given by host name: the tokio driver resolves it (`localhost`, through
/// `/etc/hosts`); a name that does not exist fails the viewer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_by_host_name() {
    let dir = TempDir::new("by-name");
    let mut network = LocalNetwork::start(&dir.0.join("registry.sqlite"))
        .await
        .unwrap();
    network.name_rendezvous("localhost").unwrap();
    let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
    let identity = network.provision(id).unwrap();
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let mut config = DeviceConfig::new(identity, network.rendezvous.clone());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.password = Some(PASSWORD.into());
    let mut device = Device::start(config).await.unwrap();
    wait_for(&mut device, |e| matches!(e, Event::Registered { .. })).await;
    let mut config = network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let viewer = Viewer::connect(config, Target::Uri(uri), Credentials::password(PASSWORD))
        .await
        .unwrap();
    viewer.close().await;

    let mut config = network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    // RFC 6761: `.invalid` never resolves.
    config.rendezvous.address = "nowhere.invalid:3478".parse().unwrap();
    let started = std::time::Instant::now();
    let result = Viewer::connect(config, Target::Uri(uri), Credentials::password(PASSWORD)).await;
    let took = started.elapsed();
    assert!(
        matches!(
            result.as_ref().err(),
            Some(ConnectError::RendezvousUnresolved(
                ResolveError::NotFound | ResolveError::Timeout
            ))
        ),
        "{:?}",
        result.err()
    );
    // The resolver's answer (or its bound), not the 20 s connect timeout.
    assert!(took < RESOLVE_TIMEOUT + Duration::from_secs(2), "{took:?}");
    device.shutdown().await;
    network.shutdown().await;
}

async fn restart_case(name: &str, graceful: bool) {
    let mut setup = setup(name, PathPolicy::Any).await;
    let viewer = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any)
        .await
        .unwrap();
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    setup.network.restart_rendezvous(graceful).await.unwrap();
    let restarted = std::time::Instant::now();
    // The peer session does not go through the rendezvous: frames keep flowing.
    stream_and_check(&mut setup, &mut [viewer], 30).await;
    // The device notices the new server (told so, or its keepalive goes unanswered) and
    // registers again; a new viewer can then find it.
    wait_for(&mut setup.device, |e| matches!(e, Event::Registered { .. })).await;
    let took = restarted.elapsed();
    println!(
        "{} restart: device re-registered {took:?} after it (keepalive interval {KEEPALIVE:?})",
        if graceful { "graceful" } else { "crash" }
    );
    // One keepalive interval, plus the unanswered keepalive's retries (3 x 1.5 s), plus slack.
    assert!(took <= KEEPALIVE + Duration::from_millis(6_500), "{took:?}");
    let again = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_a_graceful_rendezvous_restart() {
    restart_case("graceful", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_a_rendezvous_crash() {
    restart_case("crash", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_and_talk_back_audio_reach_the_device() {
    let mut setup = setup("talkback", PathPolicy::Any).await;
    let viewer = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any)
        .await
        .unwrap();
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    // PTZ command over the reliable control channel, then 20 ms of G.711 talk-back.
    viewer
        .send_control(bytes::Bytes::from_static(b"ptz left 10"))
        .await
        .expect("the endpoint stopped");
    let audio = sightwire::Frame::new(
        sightwire::StreamId::AUDIO,
        sightwire::Codec::G711Mu,
        0,
        bytes::Bytes::from(vec![0x7f; 160]),
    )
    .with_keyframe(true);
    viewer
        .send_frame(audio.clone())
        .await
        .expect("the endpoint stopped");
    let control = wait_for(&mut setup.device, |e| matches!(e, Event::Control { .. })).await;
    let Event::Control { message, .. } = control else {
        unreachable!()
    };
    assert_eq!(&message[..], b"ptz left 10");
    let frame = wait_for(&mut setup.device, |e| matches!(e, Event::Frame { .. })).await;
    let Event::Frame { frame, .. } = frame else {
        unreachable!()
    };
    assert_eq!(frame.frame.data, audio.data);
    assert_eq!(frame.frame.stream, sightwire::StreamId::AUDIO);
}

/// One viewer endpoint (one socket, one rendezvous session) watches two cameras; closing
/// one watch leaves the other streaming, and talk-back goes only to its own camera.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_viewer_endpoint_watches_two_cameras() {
    let mut setup = setup("grid", PathPolicy::Any).await;
    let id: DeviceId = "1C:C3:16:AB:CD:F0".parse().unwrap();
    let identity = setup.network.provision(id).unwrap();
    let mut config = DeviceConfig::new(identity, setup.network.rendezvous.clone());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.password = Some(PASSWORD.into());
    let mut second_device = Device::start(config).await.unwrap();
    wait_for(&mut second_device, |e| {
        matches!(e, Event::Registered { .. })
    })
    .await;

    let mut config = setup.network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let endpoint = sightwire::ViewerEndpoint::bind(config).await.unwrap();
    let mut first = endpoint
        .watch(Target::Uri(setup.uri), Credentials::password(PASSWORD))
        .await
        .expect("first camera");
    let mut second = endpoint
        .watch(Target::Id(id), Credentials::password(PASSWORD))
        .await
        .expect("second camera");
    assert_eq!(first.local_addr(), endpoint.local_addr());
    assert_eq!(second.local_addr(), endpoint.local_addr());
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    wait_for(&mut second_device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;

    // Each camera's frames reach its own watch only.
    let frame = |device: u8| {
        sightwire::Frame::new(
            sightwire::StreamId::VIDEO,
            sightwire::Codec::H264,
            0,
            bytes::Bytes::from(vec![device; 3000]),
        )
        .with_keyframe(true)
        .with_codec_config(true)
    };
    setup
        .device
        .send_frame(frame(1))
        .await
        .expect("the endpoint stopped");
    second_device
        .send_frame(frame(2))
        .await
        .expect("the endpoint stopped");
    for (viewer, expected) in [(&mut first, 1u8), (&mut second, 2u8)] {
        let data = timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Event::Frame { frame, .. }) = viewer.next_event().await {
                    return frame.frame.data;
                }
            }
        })
        .await
        .expect("a frame");
        assert!(
            data.iter().all(|&b| b == expected),
            "frame from the wrong camera"
        );
    }

    // Talk-back goes to the watch's own camera.
    second
        .send_control(bytes::Bytes::from_static(b"zoom"))
        .await
        .expect("the endpoint stopped");
    let control = wait_for(&mut second_device, |e| matches!(e, Event::Control { .. })).await;
    assert!(matches!(control, Event::Control { message, .. } if &message[..] == b"zoom"));

    // Closing the first watch closes its connection; the second keeps streaming.
    first.close().await;
    wait_for(&mut setup.device, |e| matches!(e, Event::PeerClosed { .. })).await;
    second_device
        .send_frame(frame(2))
        .await
        .expect("the endpoint stopped");
    timeout(Duration::from_secs(10), async {
        loop {
            match second.next_event().await {
                Some(Event::Frame { .. }) => return,
                Some(_) => {}
                None => panic!("the second watch ended with the first"),
            }
        }
    })
    .await
    .expect("the second camera still streams");
    endpoint.shutdown().await;
    second_device.shutdown().await;
}

/// Issue 14: a viewer joining a camera with a 4 s GOP mid-GOP decodes a picture at once,
/// from the device's GOP cache, instead of waiting for the encoder's next keyframe; it
/// catches up and follows live, and every frame it gets decodes. The device here does not
/// answer keyframe requests (a file or an RTSP camera cannot): the cache alone serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_mid_gop_gets_a_picture_at_once() {
    const FPS: u32 = 25;
    const GOP: u32 = 100;
    let mut setup = setup("midgop", PathPolicy::Any).await;
    let mut source = FrameSource::synthetic(FPS, GOP, None);
    let mut sent: Vec<sightwire::Frame> = Vec::new();
    let mut ticker = tokio::time::interval(source.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // 2.4 s into the GOP before the viewer starts connecting.
    while sent.len() < 60 {
        ticker.tick().await;
        let frame = source.next_frame().expect("endless");
        sent.push(frame.clone());
        setup
            .device
            .send_frame(frame)
            .await
            .expect("the endpoint stopped");
    }
    let mut config = setup.network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let started = std::time::Instant::now();
    let connect = Viewer::connect(
        config,
        Target::Uri(setup.uri),
        Credentials::password(PASSWORD),
    );
    tokio::pin!(connect);
    let mut requests = 0;
    let mut viewer = loop {
        tokio::select! {
                    _ = ticker.tick() => {
                        let frame = source.next_frame().expect("endless");
                        sent.push(frame.clone());
                        setup.device.send_frame(frame).await
        .expect("the endpoint stopped");
                    }
                    Some(event) = setup.device.next_event() => {
                        requests += usize::from(matches!(event, Event::KeyframeRequested { .. }));
                    }
                    viewer = &mut connect => break viewer.expect("viewer connects"),
                }
    };
    let connected = started.elapsed();
    let into_gop = Duration::from_millis((sent.len() as u64 % u64::from(GOP)) * 40);
    let mut received: Vec<(Duration, sightwire::Frame)> = Vec::new();
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < watch_until {
        tokio::select! {
                    _ = ticker.tick() => {
                        let frame = source.next_frame().expect("endless");
                        sent.push(frame.clone());
                        setup.device.send_frame(frame).await
        .expect("the endpoint stopped");
                    }
                    Some(event) = setup.device.next_event() => {
                        requests += usize::from(matches!(event, Event::KeyframeRequested { .. }));
                    }
                    event = viewer.next_event() => {
                        if let Some(Event::Frame { frame, .. }) = event {
                            received.push((started.elapsed(), frame.frame));
                        }
                    }
                }
    }
    let (first_at, first) = received.first().cloned().expect("a frame");
    // Frame numbers from capture times (the source stamps frame n at n / FPS).
    let number = |frame: &sightwire::Frame| {
        (frame.capture_time_us / source.interval.as_micros() as u64) as usize
    };
    let numbers: Vec<usize> = received.iter().map(|(_, f)| number(f)).collect();
    println!(
        "joined {into_gop:?} into a 4 s GOP on loopback: connected after {connected:?}, first \
         frame (source frame {}) after {first_at:?}, {} frames in 3 s, the device asked the \
         camera for {requests} keyframes",
        numbers[0],
        received.len()
    );
    assert!(first.keyframe, "the first frame is the cached keyframe");
    assert!(numbers[0].is_multiple_of(GOP as usize));
    // Measured from connected: connecting itself (rendezvous, punching, handshake) is not
    // what the cache changes, and takes longer on a loaded machine.
    assert!(
        first_at.saturating_sub(connected) < Duration::from_secs(1),
        "first frame after {first_at:?} (connected after {connected:?})"
    );
    assert!(into_gop >= Duration::from_secs(2), "{into_gop:?}");
    // Every frame after it, in order, none twice, none missing (each synthetic frame is a
    // reference frame: a gap would leave the next one undecodable), byte for byte.
    assert_eq!(
        numbers,
        (numbers[0]..numbers[0] + numbers.len()).collect::<Vec<_>>()
    );
    for ((_, got), n) in received.iter().zip(&numbers) {
        assert_eq!(got.data, sent[*n].data, "frame {n} differs");
    }
    // It caught up: the last frame it has is at most 200 ms older than the newest sent.
    assert!(numbers.last().unwrap() + 5 >= sent.len() - 1);
    assert!(requests >= 1, "the camera was asked for a fresh keyframe");
}

/// A viewer whose UDP never reaches the servers (`spec/stream.md`): its rendezvous UDP
/// address is a socket that swallows everything, given by name (`localhost`, so the
/// stream is opened to the resolved address and names the host in TLS), with the real
/// rendezvous's TCP/TLS stream port on the same IP. After 2 s without an answer it falls back to the stream,
/// reaches the camera through the relay over TCP/TLS (`relay-tcp`), and the frames
/// arrive, in order. Prints the time to the first frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_viewer_gets_video_over_tcp() {
    let setup = setup("udp-blocked", PathPolicy::Any).await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = setup.network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.rendezvous.address = format!("localhost:{}", silent.local_addr().unwrap().port())
        .parse()
        .unwrap();
    config.rendezvous.stream_port = Some(setup.network.rendezvous_stream_port());

    let started = std::time::Instant::now();
    let sending = std::sync::atomic::AtomicBool::new(true);
    let device = &setup.device;
    // The camera streams 25 fps, a keyframe every second, until the viewer has seen 50.
    let send = async {
        let mut source = FrameSource::synthetic(25, 25, None);
        while sending.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(frame) = source.next_frame() {
                device.send_frame(frame).await.expect("device stopped");
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    let watch = async {
        let mut viewer = Viewer::connect(
            config,
            Target::Uri(setup.uri),
            Credentials::password(PASSWORD),
        )
        .await
        .expect("the viewer connects over TCP/TLS");
        let connected = started.elapsed();
        let (mut udp_blocked, mut path, mut first_frame, mut frames) =
            (false, None, None, Vec::new());
        timeout(Duration::from_secs(15), async {
            while frames.len() < 50 {
                match viewer.next_event().await.expect("viewer running") {
                    Event::UdpBlocked => udp_blocked = true,
                    Event::PeerConnected { path: Some(p), .. }
                    | Event::PathChanged { path: p, .. } => {
                        path = Some(p);
                    }
                    Event::Frame { frame, .. } => {
                        first_frame.get_or_insert_with(|| started.elapsed());
                        frames.push(frame.frame.capture_time_us);
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} frames over TCP/TLS", frames.len()));
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        (viewer, connected, udp_blocked, path, first_frame, frames)
    };
    let ((), (viewer, connected, udp_blocked, path, first_frame, frames)) =
        tokio::join!(send, watch);
    let first_frame = first_frame.unwrap();
    println!(
        "udp blocked: connected after {connected:?}, first frame after {first_frame:?} (path {})",
        path.map_or("none", |p| p.kind_name())
    );
    assert!(udp_blocked, "the viewer reported UdpBlocked");
    let path = path.expect("a path was reported");
    assert_eq!(path.kind_name(), "relay-tcp");
    assert_eq!(path.kind, PathKind::Relay);
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "frames in order");
    assert!(
        first_frame < Duration::from_secs(5),
        "first frame after {first_frame:?}"
    );
    drop(viewer);
}

/// Neither UDP nor the stream reaches the rendezvous: the connect fails within seconds
/// with `Unreachable`, not after the 20 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_both_blocked_is_reported_at_once() {
    let setup = setup("unreachable", PathPolicy::Any).await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A TCP port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = setup.network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.rendezvous.address = silent.local_addr().unwrap().into();
    config.rendezvous.stream_port = Some(closed.port());
    let started = std::time::Instant::now();
    let result = Viewer::connect(
        config,
        Target::Uri(setup.uri),
        Credentials::password(PASSWORD),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        result.err(),
        Some(ConnectError::RendezvousUnreachable),
        "after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// The camera's UDP never reaches the servers (its rendezvous UDP address swallows
/// everything; the stream port is the real one): it registers over TCP/TLS, serves an
/// ordinary viewer through the relay over its stream (`relay-tcp` on the camera's side,
/// plain `relay` on the viewer's), and the frames arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_camera_serves_a_viewer_over_tcp() {
    let dir = TempDir::new("udp-blocked-camera");
    let mut network = LocalNetwork::start(&dir.0.join("registry.sqlite"))
        .await
        .unwrap();
    let id: DeviceId = "1C:C3:16:AB:CD:EE".parse().unwrap();
    let identity = network.provision(id).unwrap();
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rendezvous = network.rendezvous.clone();
    rendezvous.address = silent.local_addr().unwrap().into();
    rendezvous.stream_port = Some(network.rendezvous_stream_port());
    let mut config = DeviceConfig::new(identity, rendezvous);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.password = Some(PASSWORD.into());
    let started = std::time::Instant::now();
    let mut device = Device::start(config).await.unwrap();
    let mut blocked = false;
    timeout(Duration::from_secs(15), async {
        loop {
            match device.next_event().await.expect("device running") {
                Event::UdpBlocked => blocked = true,
                Event::Registered { .. } => return,
                _ => {}
            }
        }
    })
    .await
    .expect("the camera registers over TCP/TLS");
    let registered = started.elapsed();
    assert!(blocked, "the camera reported UdpBlocked");

    let mut config = network.viewer_config();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let sending = std::sync::atomic::AtomicBool::new(true);
    let device = &mut device;
    let camera_side = async {
        let mut source = FrameSource::synthetic(25, 25, None);
        let mut path = None;
        while sending.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(frame) = source.next_frame() {
                device.send_frame(frame).await.expect("device stopped");
            }
            // The camera's own view of the path.
            while let Ok(Some(event)) = timeout(Duration::from_millis(1), device.next_event()).await
            {
                if let Event::PeerConnected { path: Some(p), .. } = event {
                    path = Some(p);
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        path
    };
    let viewer_side = async {
        let mut viewer = Viewer::connect(config, Target::Uri(uri), Credentials::password(PASSWORD))
            .await
            .expect("the viewer connects");
        let mut frames = Vec::new();
        timeout(Duration::from_secs(15), async {
            while frames.len() < 30 {
                if let Event::Frame { frame, .. } = viewer.next_event().await.expect("viewer") {
                    frames.push(frame.frame.capture_time_us);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} frames", frames.len()));
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        (viewer, frames)
    };
    let (path, (viewer, frames)) = tokio::join!(camera_side, viewer_side);
    println!(
        "camera behind a UDP block: registered after {registered:?}, camera path {}",
        path.map_or("none", |p| p.kind_name())
    );
    assert_eq!(path.map(|p| p.kind_name()), Some("relay-tcp"));
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "frames in order");
    drop(viewer);
}

/// A 4K-like H.264 stream: every `GOP`th frame a keyframe of 1.0–1.3 MB (over 1 MiB),
/// 60 KB P-frames between, 30 fps, all frames references.
fn frame_4k(index: u32, keyframe_size: usize, capture_time_us: u64) -> sightwire::Frame {
    use bytes::BufMut;
    const GOP: u32 = 15;
    let keyframe = index.is_multiple_of(GOP);
    let size = if keyframe { keyframe_size } else { 60_000 };
    let mut data = bytes::BytesMut::with_capacity(size);
    data.put_slice(&[0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
    data.put_u32(index);
    let mut state = u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.put_u8(state as u8);
    }
    sightwire::Frame::new(
        sightwire::StreamId::VIDEO,
        sightwire::Codec::H264,
        capture_time_us,
        data.freeze(),
    )
    .with_keyframe(keyframe)
    .with_codec_config(keyframe)
}

/// Keyframes over 1 MiB (4K at 20 Mbit/s) arrive byte for byte; one over the media limit
/// (4 MiB by default) is refused with a typed event on the device, and the viewer sees the
/// gap: the frames that referred to it are not sent, and the next keyframe comes marked
/// `after_loss`. Never an undecodable frame handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_over_1_mib_arrive_whole_and_an_oversized_one_is_an_explicit_gap() {
    use sightwire::{DEFAULT_MAX_FRAME_SIZE, FrameError, SendError};
    // A path rate for 4K from the start (the default starts at 2 Mbit/s and ramps).
    let mut setup = setup_with("4k", PathPolicy::Any, |config| {
        config.media.initial_bitrate_bps = 40_000_000;
        config.media.max_bitrate_bps = 100_000_000;
    })
    .await;
    let mut viewer = connect(&setup, Target::Uri(setup.uri), PASSWORD, PathPolicy::Any)
        .await
        .expect("viewer connects");
    wait_for(&mut setup.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    // Four GOPs; the third one's keyframe is over the limit.
    const FRAMES: u32 = 60;
    let oversized = 30;
    let start = std::time::Instant::now();
    let mut sent = std::collections::HashMap::new();
    for index in 0..FRAMES {
        let keyframe_size = match index {
            30 => DEFAULT_MAX_FRAME_SIZE + 1,
            _ => 1_000_000 + (index as usize % 4) * 100_000,
        };
        let capture = start.elapsed().as_micros() as u64;
        let frame = frame_4k(index, keyframe_size, capture);
        sent.insert(capture, (index, frame.clone()));
        setup
            .device
            .send_frame(frame)
            .await
            .expect("the endpoint stopped");
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let refused = wait_for(&mut setup.device, |e| {
        matches!(e, Event::FrameNotSent { .. })
    })
    .await;
    let Event::FrameNotSent {
        peer: Some(_),
        error: FrameError::Send(SendError::FrameTooLarge { size, limit }),
        ..
    } = refused
    else {
        panic!("not a refusal of the oversized keyframe: {refused:?}");
    };
    assert_eq!(
        (size, limit),
        (DEFAULT_MAX_FRAME_SIZE + 1, DEFAULT_MAX_FRAME_SIZE)
    );
    // A frame that cannot be framed at all (empty) is nobody's: reported without a peer.
    let empty = {
        let mut value = frame_4k(1, 0, start.elapsed().as_micros() as u64);
        value.data = bytes::Bytes::new();
        value
    };
    setup
        .device
        .send_frame(empty)
        .await
        .expect("the endpoint stopped");
    let refused = wait_for(&mut setup.device, |e| {
        matches!(e, Event::FrameNotSent { .. })
    })
    .await;
    assert!(
        matches!(
            refused,
            Event::FrameNotSent {
                peer: None,
                error: FrameError::Packetize(sightwire::PacketizeError::EmptyFrame),
                ..
            }
        ),
        "{refused:?}"
    );

    // The viewer: everything up to the last GOP's frames.
    let mut received = Vec::new();
    let _ = timeout(Duration::from_secs(10), async {
        while let Some(event) = viewer.next_event().await {
            if let Event::Frame { frame, .. } = event {
                let (index, _) = sent[&frame.frame.capture_time_us];
                received.push((index, frame));
                if index == FRAMES - 1 {
                    break;
                }
            }
        }
    })
    .await;
    let indices: Vec<u32> = received.iter().map(|(i, _)| *i).collect();
    let mut previous: Option<u32> = None;
    for (index, frame) in &received {
        let (_, original) = &sent[&frame.frame.capture_time_us];
        assert_eq!(frame.frame.data, original.data, "frame {index} differs");
        assert_eq!(frame.frame.keyframe, original.keyframe);
        let gap = previous.is_some_and(|p| p + 1 != *index);
        assert!(
            !gap || frame.after_loss,
            "frame {index} after a gap is not marked"
        );
        assert!(
            frame.frame.keyframe || previous == Some(index - 1),
            "frame {index} handed out without its reference"
        );
        previous = Some(*index);
    }
    // Every keyframe within the limit arrived, the oversized one and its GOP did not.
    for key in [0, 15, 45] {
        assert!(
            indices.contains(&key),
            "keyframe {key} missing: {indices:?}"
        );
    }
    assert!(!indices.iter().any(|i| (oversized..45).contains(i)));
    let after = received.iter().find(|(i, _)| *i == 45).map(|(_, f)| f);
    assert!(after.is_some_and(|f| f.after_loss));
    eprintln!(
        "4k: {} of {FRAMES} frames delivered ({} of the 15 the oversized keyframe took with it)",
        received.len(),
        indices
            .iter()
            .filter(|i| (oversized..45).contains(*i))
            .count()
    );
}
