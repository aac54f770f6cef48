//! Every limit of `spec/media.md` hit by a test, plus the loss-recovery rules that need a
//! precise scenario (deadlines, keyframe hold-back, NACK rate limit, duplicate NACKs).

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{drain_events, drain_packets, fragments};
use sightwire_media::wire::{self, NackEntry, Packet, Report};
use sightwire_media::{
    CONTROL_WINDOW, Codec, Config, ControlError, DropReason, Event, Frame, FrameLossReason,
    MAX_PENDING_EVENTS, MediaConnection, SendError, StreamId,
};

fn video(keyframe: bool, size: usize, fill: u8) -> Frame {
    Frame::new(
        StreamId::VIDEO,
        Codec::H264,
        0,
        Bytes::from(vec![fill; size]),
    )
    .with_keyframe(keyframe)
    .with_codec_config(keyframe)
}

fn audio(capture_time_us: u64) -> Frame {
    Frame::new(
        StreamId::AUDIO,
        Codec::Opus,
        capture_time_us,
        Bytes::from_static(b"opus packet"),
    )
    .with_keyframe(true)
}

fn pair(config: Config, start: Instant) -> (MediaConnection, MediaConnection) {
    (
        MediaConnection::new(config.clone(), start).unwrap(),
        MediaConnection::new(config, start).unwrap(),
    )
}

/// Sends `frame` and returns its fragment packets.
fn send(connection: &mut MediaConnection, now: Instant, frame: Frame) -> Vec<Bytes> {
    let packetized = connection.packetize(frame).unwrap();
    connection.send_frame(now, &packetized).unwrap();
    fragments(&drain_packets(connection))
}

fn frames(events: &[Event]) -> Vec<(u32, Bytes)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Frame(received) => Some((received.frame_seq, received.frame.data.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn default_packet_size_fits_ipv6_minimum_mtu_after_session_overhead() {
    let budget = sightwire_media::IPV6_MIN_MTU
        - sightwire_media::IPV6_UDP_HEADERS
        - sightwire_media::SESSION_OVERHEAD;
    assert_eq!(budget, 1203);
    assert!(sightwire_media::DEFAULT_MAX_PACKET_SIZE <= budget);
    let start = Instant::now();
    let (mut camera, _) = pair(common::unpaced(), start);
    let packets = send(&mut camera, start, video(true, 150_000, 1));
    assert!(packets.iter().all(|packet| packet.len() <= 1200));
    assert_eq!(
        packets.len(),
        150_000usize.div_ceil(1200 - wire::FRAGMENT_HEADER_LEN)
    );
}

#[test]
fn config_out_of_range_is_rejected() {
    let start = Instant::now();
    for config in [
        {
            let mut value = common::unpaced();
            value.max_packet_size = 1000;
            value
        },
        {
            let mut value = common::unpaced();
            value.max_packet_size = 9001;
            value
        },
        {
            let mut value = common::unpaced();
            value.max_frames_in_flight = 0;
            value
        },
        {
            let mut value = common::unpaced();
            value.max_frame_size = 17 * 1024 * 1024;
            value
        },
        {
            let mut value = common::unpaced();
            value.latency_budget = Duration::ZERO;
            value
        },
        {
            let mut value = common::unpaced();
            value.latency_budget = Duration::from_secs(61);
            value
        },
        {
            let mut value = common::unpaced();
            value.nack_interval = Duration::ZERO;
            value
        },
        {
            let mut value = common::unpaced();
            value.min_bitrate_bps = 10;
            value.initial_bitrate_bps = 5;
            value
        },
    ] {
        assert!(MediaConnection::new(config, start).is_err());
    }
}

#[test]
fn max_frame_size_rejects_larger_frames_on_both_sides() {
    let start = Instant::now();
    let small = {
        let mut value = common::unpaced();
        value.max_frame_size = 10_000;
        value
    };
    let (mut sender, _) = pair(common::unpaced(), start);
    let (mut limited, mut receiver) = pair(small, start);
    assert!(matches!(
        limited.send_frame(start, &limited.packetize(video(true, 10_001, 0)).unwrap()),
        Err(SendError::FrameTooLarge {
            size: 10_001,
            limit: 10_000
        })
    ));
    for packet in send(&mut sender, start, video(true, 10_001, 0)) {
        receiver.handle_input(start, &packet).unwrap();
    }
    // The first fragment is refused and the frame given up; the other eight belong to a
    // finished frame.
    let stats = receiver.stats();
    assert_eq!(
        (stats.fragments_over_limit, stats.fragments_duplicate),
        (1, 8)
    );
    assert_eq!(
        receiver.stats().frames_evicted,
        1,
        "counted once, not per fragment"
    );
    assert_eq!(receiver.memory().receive_buffered_bytes, 0);
    assert_eq!(
        receiver.memory().receive_frames_in_flight,
        0,
        "nothing left to NACK"
    );
    // Exactly at the limit is fine, and is not held behind the rejected frame.
    for packet in send(&mut sender, start, video(true, 10_000, 0)) {
        receiver.handle_input(start, &packet).unwrap();
    }
    assert_eq!(receiver.stats().frames_delivered, 1);
}

#[test]
fn max_frames_in_flight_evicts_the_oldest_incomplete_frames() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_frames_in_flight = 4;
        value
    };
    let (mut sender, mut receiver) = pair(config, start);
    // Ten frames, each missing its last fragment.
    for index in 0..10u8 {
        let mut packets = send(&mut sender, start, video(true, 5_000, index));
        packets.pop();
        for packet in packets {
            receiver.handle_input(start, &packet).unwrap();
        }
        assert!(receiver.memory().receive_frames_in_flight <= 4);
    }
    assert_eq!(receiver.memory().receive_frames_in_flight, 4);
    assert_eq!(receiver.stats().frames_evicted, 6);
    let lost = drain_events(&mut receiver)
        .into_iter()
        .filter(|event| {
            matches!(
                event,
                Event::FrameLost {
                    reason: FrameLossReason::Evicted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(lost, 6);
}

#[test]
fn max_buffered_bytes_bounds_reassembly_memory() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_buffered_bytes = 100_000;
        value
    };
    let (mut sender, mut receiver) = pair(config, start);
    for index in 0..5u8 {
        let mut packets = send(&mut sender, start, video(true, 40_000, index));
        packets.pop();
        for packet in packets {
            receiver.handle_input(start, &packet).unwrap();
            assert!(receiver.memory().receive_buffered_bytes <= 100_000);
        }
    }
    // Two 40 KB frames fit, a third does not: three were evicted along the way.
    assert_eq!(receiver.memory().receive_frames_in_flight, 2);
    assert_eq!(receiver.stats().frames_evicted, 3);
    // A single frame larger than the whole budget is refused outright.
    let config = {
        let mut value = common::unpaced();
        value.max_buffered_bytes = 30_000;
        value
    };
    let (_, mut tight) = pair(config, start);
    for packet in send(&mut sender, start, video(true, 40_000, 9)) {
        tight.handle_input(start, &packet).unwrap();
    }
    assert_eq!(tight.memory().receive_buffered_bytes, 0);
    assert!(tight.stats().fragments_over_limit > 0);
}

#[test]
fn history_limits_bound_the_sender_and_stale_nacks_are_skipped() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_history_bytes = 50_000;
        value.max_history_frames = 3;
        value
    };
    let (mut sender, _) = pair(config, start);
    for index in 0..6u8 {
        send(&mut sender, start, video(true, 20_000, index));
        let memory = sender.memory();
        assert!(memory.history_bytes <= 50_000 && memory.history_frames <= 3);
    }
    assert_eq!(sender.memory().history_frames, 2);
    // A NACK for frame 0, long gone from history, retransmits nothing.
    let mut nack = BytesMut::new();
    let entry = NackEntry {
        stream: StreamId::VIDEO,
        frame_seq: 0,
        first_fragment: 0,
        fragment_count: 1,
    };
    wire::encode_nack(0, &[entry], &mut nack);
    sender.handle_input(start, &nack).unwrap();
    assert!(fragments(&drain_packets(&mut sender)).is_empty());
    assert_eq!(sender.stats().retransmissions_skipped, 1);
    // The age limit (by default each frame's budget: 3 × the 200 ms latency budget for
    // a keyframe, spec/media.md 5.3) empties the history.
    sender.handle_timeout(start + Duration::from_millis(599));
    assert_eq!(sender.memory().history_frames, 2);
    sender.handle_timeout(start + Duration::from_millis(601));
    assert_eq!(sender.memory().history_frames, 0);
    assert_eq!(sender.memory().history_bytes, 0);
}

#[test]
fn nack_retransmits_only_while_the_frame_can_make_its_deadline() {
    let start = Instant::now();
    let (mut sender, _) = pair(
        {
            let mut value = common::unpaced();
            value.latency_budget = Duration::from_millis(500);
            value
        },
        start,
    );
    // RTT is the 100 ms initial value; a NACK round takes rtt + reorder_delay = 105 ms.
    // A P-frame, whose budget is the latency budget (a keyframe's is three times it).
    send(&mut sender, start, video(false, 5_000, 1));
    let nack = |seq: u16| {
        let mut out = BytesMut::new();
        let entry = NackEntry {
            stream: StreamId::VIDEO,
            frame_seq: 0,
            first_fragment: 1,
            fragment_count: 2,
        };
        wire::encode_nack(seq, &[entry], &mut out);
        out
    };
    // Early (arrival at 80 ms, two more rounds fit before 500 ms): one copy each.
    sender
        .handle_input(start + Duration::from_millis(30), &nack(0))
        .unwrap();
    let retransmitted = fragments(&drain_packets(&mut sender));
    assert_eq!(retransmitted.len(), 2);
    match wire::decode(&retransmitted[0]).unwrap() {
        Packet::Fragment { header, .. } => {
            assert_ne!(header.flags & wire::FLAG_RETRANSMISSION, 0);
            assert_eq!(header.fragment_index, 1);
        }
        other => panic!("{other:?}"),
    }
    // The same NACK again (a repeated copy) is ignored.
    sender
        .handle_input(start + Duration::from_millis(31), &nack(0))
        .unwrap();
    assert!(fragments(&drain_packets(&mut sender)).is_empty());
    // Late (arrival at 350 ms, at most one more round fits): two copies each.
    sender
        .handle_input(start + Duration::from_millis(300), &nack(1))
        .unwrap();
    assert_eq!(fragments(&drain_packets(&mut sender)).len(), 4);
    // Past the deadline (arrival at 501 ms > 500 ms): nothing.
    sender
        .handle_input(start + Duration::from_millis(451), &nack(2))
        .unwrap();
    assert!(fragments(&drain_packets(&mut sender)).is_empty());
    assert_eq!(sender.stats().retransmissions_skipped, 1);
}

#[test]
fn max_transmit_queue_refuses_frames_the_driver_has_not_drained() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_transmit_queue = 300;
        value
    };
    let (mut sender, _) = pair(config, start);
    let keyframe = sender.packetize(video(true, 150_000, 0)).unwrap();
    sender.send_frame(start, &keyframe).unwrap();
    sender.send_frame(start, &keyframe).unwrap();
    let needed = 150_000usize.div_ceil(1200 - wire::FRAGMENT_HEADER_LEN);
    assert_eq!(
        sender.send_frame(start, &keyframe),
        Err(SendError::TransmitQueueFull {
            queued: 2 * needed,
            needed,
            limit: 300
        })
    );
    assert_eq!(sender.memory().transmit_queue_packets, 2 * needed);
    drain_packets(&mut sender);
    sender.send_frame(start, &keyframe).unwrap();
}

#[test]
fn a_reference_frame_refused_by_a_full_queue_breaks_its_stream_until_a_keyframe() {
    let start = Instant::now();
    // A budget long enough that the frame-drop policy (spec/media.md 4.7) lets the frames
    // through to the queue limit.
    let config = {
        let mut value = common::unpaced();
        value.max_transmit_queue = 300;
        value.latency_budget = Duration::from_secs(10);
        value
    };
    let (mut sender, _) = pair(config, start);
    let keyframe = sender.packetize(video(true, 150_000, 0)).unwrap();
    sender.send_frame(start, &keyframe).unwrap();
    sender.send_frame(start, &keyframe).unwrap();
    // A P-frame that does not fit the queue is refused…
    let p_frame = sender.packetize(video(false, 150_000, 1)).unwrap();
    assert!(matches!(
        sender.send_frame(start, &p_frame),
        Err(SendError::TransmitQueueFull { .. })
    ));
    // …and the P-frames after it, which would refer to it, are not sent even once the
    // queue has room: the stream waits for a keyframe, which the application is asked for.
    drain_packets(&mut sender);
    let small = sender.packetize(video(false, 1_000, 2)).unwrap();
    assert_eq!(
        sender.send_frame(start, &small),
        Err(SendError::FrameDropped {
            reason: DropReason::AwaitingKeyframe
        })
    );
    assert!(
        drain_events(&mut sender)
            .iter()
            .any(|event| matches!(event, Event::KeyframeRequested { .. }))
    );
    sender.send_frame(start, &keyframe).unwrap();
    drain_packets(&mut sender);
    sender.send_frame(start, &small).unwrap();
    // A keyframe refused the same way breaks the stream too: what follows refers to it.
    sender.send_frame(start, &keyframe).unwrap();
    sender.send_frame(start, &keyframe).unwrap();
    assert!(matches!(
        sender.send_frame(start, &keyframe),
        Err(SendError::TransmitQueueFull { .. })
    ));
    drain_packets(&mut sender);
    assert_eq!(
        sender.send_frame(start, &small),
        Err(SendError::FrameDropped {
            reason: DropReason::AwaitingKeyframe
        })
    );
}

#[test]
fn packetized_for_larger_packets_is_refused() {
    let start = Instant::now();
    let big = {
        let mut value = common::unpaced();
        value.max_packet_size = 9000;
        value
    };
    let (jumbo, _) = pair(big, start);
    let (mut normal, _) = pair(common::unpaced(), start);
    let frame = jumbo.packetize(video(true, 50_000, 0)).unwrap();
    assert!(matches!(
        normal.send_frame(start, &frame),
        Err(SendError::PacketTooLarge { .. })
    ));
}

#[test]
fn control_queue_window_and_message_size_limits() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_control_queue = 40;
        value
    };
    let (mut a, mut b) = pair(config, start);
    assert!(matches!(
        a.send_control(start, Bytes::from(vec![0; 1001])),
        Err(ControlError::MessageTooLong {
            len: 1001,
            limit: 1000
        })
    ));
    a.send_control(start, Bytes::from(vec![0; 1000])).unwrap();
    for index in 1..40u32 {
        a.send_control(start, Bytes::from(index.to_be_bytes().to_vec()))
            .unwrap();
    }
    assert_eq!(
        a.send_control(start, Bytes::new()),
        Err(ControlError::QueueFull { limit: 40 })
    );
    // Only a window's worth goes out before acknowledgements.
    let packets: Vec<Bytes> = drain_packets(&mut a)
        .into_iter()
        .filter(|packet| packet.first() == Some(&wire::TYPE_CONTROL_DATA))
        .collect();
    assert_eq!(packets.len(), CONTROL_WINDOW as usize);
    // Deliver all but the first: the receiver holds them out of order, delivers none.
    for packet in &packets[1..] {
        b.handle_input(start, packet).unwrap();
    }
    assert_eq!(b.memory().control_out_of_order, CONTROL_WINDOW as usize - 1);
    assert!(drain_events(&mut b).is_empty());
    b.handle_input(start, &packets[0]).unwrap();
    assert_eq!(drain_events(&mut b).len(), CONTROL_WINDOW as usize);
    // Acks free the window and the rest goes out.
    for packet in drain_packets(&mut b) {
        a.handle_input(start, &packet).unwrap();
    }
    let rest = drain_packets(&mut a)
        .into_iter()
        .filter(|packet| packet.first() == Some(&wire::TYPE_CONTROL_DATA))
        .count();
    assert_eq!(rest, 40 - CONTROL_WINDOW as usize);
    // A message beyond the receive window is dropped, not buffered.
    let mut far = BytesMut::new();
    wire::encode_control_data(1000, b"far ahead", &mut far);
    b.handle_input(start, &far).unwrap();
    assert_eq!(b.memory().control_out_of_order, 0);
}

#[test]
fn control_retransmits_until_acknowledged() {
    let start = Instant::now();
    let (mut a, mut b) = pair(common::unpaced(), start);
    a.send_control(start, Bytes::from_static(b"ptz left"))
        .unwrap();
    drain_packets(&mut a); // lost
    // Before any RTT sample the RTO is 100 ms + 4 x 50 ms.
    let mut retransmitted = Vec::new();
    let mut timeout = start;
    while retransmitted.is_empty() {
        timeout = a.poll_timeout().unwrap();
        a.handle_timeout(timeout);
        retransmitted = drain_packets(&mut a)
            .into_iter()
            .filter(|packet| packet.first() == Some(&wire::TYPE_CONTROL_DATA))
            .collect();
    }
    assert_eq!(timeout, start + Duration::from_millis(300));
    assert_eq!(retransmitted.len(), 1);
    assert_eq!(a.stats().control_retransmitted, 1);
    b.handle_input(timeout, &retransmitted[0]).unwrap();
    assert_eq!(
        drain_events(&mut b),
        vec![Event::Control(Bytes::from_static(b"ptz left"))]
    );
    for packet in drain_packets(&mut b) {
        a.handle_input(timeout, &packet).unwrap();
    }
    assert_eq!(a.memory().control_queued, 0);
}

#[test]
fn pending_events_are_bounded() {
    let start = Instant::now();
    let (mut sender, mut receiver) = pair(
        {
            let mut value = common::unpaced();
            value.max_transmit_queue = 4096;
            value
        },
        start,
    );
    for index in 0..(MAX_PENDING_EVENTS as u64 + 10) {
        for packet in send(&mut sender, start, audio(index * 20_000)) {
            receiver.handle_input(start, &packet).unwrap();
        }
    }
    assert_eq!(receiver.memory().pending_events, MAX_PENDING_EVENTS);
    assert_eq!(receiver.stats().events_dropped, 10);
}

#[test]
fn lost_frame_is_given_up_at_its_deadline_and_a_keyframe_is_requested() {
    let start = Instant::now();
    let (mut camera, mut viewer) = pair(common::unpaced(), start);
    for packet in send(&mut camera, start, video(true, 3_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    // Frame 1 loses its second fragment, for good.
    let mut packets = send(&mut camera, start, video(false, 3_000, 1));
    packets.remove(1);
    for packet in packets {
        viewer.handle_input(start, &packet).unwrap();
    }
    // Frame 2 arrives complete but must wait behind frame 1.
    for packet in send(&mut camera, start, video(false, 3_000, 2)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    assert_eq!(frames(&drain_events(&mut viewer)).len(), 1);
    // Run the viewer's timers: it NACKs, then gives frame 1 up at the deadline (frame 1
    // is queued behind a keyframe, so its budget is 3 × 200 ms − 33 ms, spec/media.md 5.3).
    let mut now = start;
    let mut nacks = 0;
    let mut keyframe_requests = 0;
    let mut events = Vec::new();
    while let Some(at) = viewer.poll_timeout() {
        if at > start + Duration::from_millis(800) {
            break;
        }
        now = at;
        viewer.handle_timeout(now);
        for packet in drain_packets(&mut viewer) {
            match packet.first() {
                Some(&wire::TYPE_NACK) => nacks += 1,
                Some(&wire::TYPE_KEYFRAME_REQUEST) => keyframe_requests += 1,
                _ => {}
            }
        }
        events.extend(drain_events(&mut viewer));
    }
    assert!(
        nacks >= 2,
        "NACK repeated while the frame can still make it ({nacks})"
    );
    assert!(keyframe_requests >= 1);
    assert!(events.contains(&Event::FrameLost {
        stream: StreamId::VIDEO,
        frame_seq: 1,
        reason: FrameLossReason::Late
    }));
    // Frame 2 depends on frame 1: held back, not delivered.
    assert!(events.contains(&Event::FrameLost {
        stream: StreamId::VIDEO,
        frame_seq: 2,
        reason: FrameLossReason::AwaitingKeyframe
    }));
    let stats = viewer.stats();
    assert_eq!(
        (stats.frames_late, stats.frames_discarded_awaiting_keyframe),
        (1, 1)
    );
    // P-frames stay held until the keyframe; the keyframe and what follows are delivered.
    for (keyframe, fill) in [(false, 3), (true, 4), (false, 5)] {
        for packet in send(&mut camera, now, video(keyframe, 3_000, fill)) {
            viewer.handle_input(now, &packet).unwrap();
        }
    }
    let delivered = frames(&drain_events(&mut viewer));
    assert_eq!(
        delivered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(delivered[0].1, Bytes::from(vec![4u8; 3_000]));
}

#[test]
fn without_hold_back_dependent_frames_are_delivered_flagged() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.hold_until_keyframe = false;
        value
    };
    let (mut camera, mut viewer) = pair(config, start);
    for packet in send(&mut camera, start, video(true, 2_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    send(&mut camera, start, video(false, 2_000, 1)); // entirely lost
    let later = start + Duration::from_millis(33);
    for packet in send(&mut camera, later, video(false, 2_000, 2)) {
        viewer.handle_input(later, &packet).unwrap();
    }
    viewer.handle_timeout(start + Duration::from_secs(1));
    let delivered: Vec<(u32, bool)> = drain_events(&mut viewer)
        .into_iter()
        .filter_map(|event| match event {
            Event::Frame(received) => Some((received.frame_seq, received.after_loss)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![(0, false), (2, true)]);
}

#[test]
fn wholly_missing_frame_is_nacked_as_all_fragments_and_recovered() {
    let start = Instant::now();
    let (mut camera, mut viewer) = pair(common::unpaced(), start);
    for packet in send(&mut camera, start, video(true, 2_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    send(&mut camera, start, video(false, 2_500, 1)); // lost entirely
    for packet in send(&mut camera, start, video(false, 2_000, 2)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    viewer.handle_timeout(start); // first report
    drain_packets(&mut viewer);
    let at = viewer.poll_timeout().unwrap();
    assert_eq!(
        at,
        start + Duration::from_millis(5),
        "NACK after the reorder delay"
    );
    viewer.handle_timeout(at);
    let nack = drain_packets(&mut viewer)
        .into_iter()
        .find(|packet| packet.first() == Some(&wire::TYPE_NACK))
        .expect("NACK sent");
    match wire::decode(&nack).unwrap() {
        Packet::Nack { entries, .. } => assert_eq!(
            wire::nack_entries(entries).collect::<Vec<_>>(),
            vec![NackEntry {
                stream: StreamId::VIDEO,
                frame_seq: 1,
                first_fragment: 0,
                fragment_count: wire::NACK_ALL_FRAGMENTS
            }]
        ),
        other => panic!("{other:?}"),
    }
    camera.handle_input(at, &nack).unwrap();
    for packet in fragments(&drain_packets(&mut camera)) {
        viewer.handle_input(at, &packet).unwrap();
    }
    let delivered = frames(&drain_events(&mut viewer));
    assert_eq!(
        delivered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(delivered[1].1, Bytes::from(vec![1u8; 2_500]));
}

#[test]
fn nacks_are_rate_limited_and_batched() {
    let start = Instant::now();
    let (mut camera, mut viewer) = pair(common::unpaced(), start);
    // Two frames with holes, arriving 1 ms apart: their NACKs go out as one packet.
    for (offset, fill) in [(0u64, 0u8), (1, 1)] {
        let now = start + Duration::from_millis(offset);
        let mut packets = send(&mut camera, now, video(true, 5_000, fill));
        packets.remove(0);
        for packet in packets {
            viewer.handle_input(now, &packet).unwrap();
        }
    }
    let mut nack_times = Vec::new();
    let mut nack_seqs = Vec::new();
    let mut now = start;
    while let Some(at) = viewer.poll_timeout() {
        if at > start + Duration::from_millis(100) {
            break;
        }
        now = now.max(at);
        viewer.handle_timeout(now);
        for packet in drain_packets(&mut viewer) {
            if let Ok(Packet::Nack { nack_seq, entries }) = wire::decode(&packet) {
                // Last-chance NACKs go out twice with the same sequence number.
                if nack_seqs.last() != Some(&nack_seq) {
                    nack_seqs.push(nack_seq);
                    nack_times.push((now, wire::nack_entries(entries).count()));
                }
            }
        }
    }
    assert_eq!(nack_times[0].1, 1);
    for pair in nack_times.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(5),
            "{nack_times:?}"
        );
    }
    // The first NACK after the 5 ms reorder delay; the second frame's was due 1 ms later
    // but waited for the 5 ms rate limit.
    assert_eq!(nack_times[0], (start + Duration::from_millis(5), 1));
    assert_eq!(nack_times[1], (start + Duration::from_millis(10), 1));
}

#[test]
fn frame_sequence_jump_beyond_the_window_resyncs_the_stream() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_frames_in_flight = 8;
        value
    };
    let (mut camera, mut viewer) = pair(config, start);
    for packet in send(&mut camera, start, video(true, 1_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    for fill in 1..20u8 {
        send(&mut camera, start, video(false, 1_000, fill)); // a long outage
    }
    for packet in send(&mut camera, start, video(true, 1_000, 20)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    let delivered = frames(&drain_events(&mut viewer));
    assert_eq!(
        delivered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![0, 20]
    );
    assert!(viewer.memory().receive_frames_in_flight <= 8);
}

#[test]
fn a_frame_stalled_at_the_window_edge_costs_only_what_it_breaks() {
    // A frame still waiting for a retransmission, then frames lost outright (a policer's
    // burst), then a frame past the frames-in-flight window: the window slides past the
    // stalled frame and keeps the complete frames behind it, so the stream resumes at the
    // keyframe inside the window instead of losing the whole window (spec/media.md 5.4).
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_frames_in_flight = 8;
        value
    };
    let (mut camera, mut viewer) = pair(config, start);
    for packet in send(&mut camera, start, video(true, 1_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    let stalled = send(&mut camera, start, video(false, 3_000, 1));
    assert!(stalled.len() > 1);
    viewer.handle_input(start, &stalled[0]).unwrap(); // the rest is lost
    for seq in 2..=10u8 {
        let packets = send(&mut camera, start, video(seq == 5, 1_000, seq));
        if seq == 8 || seq == 9 {
            continue; // lost outright
        }
        for packet in packets {
            viewer.handle_input(start, &packet).unwrap();
        }
    }
    let events = drain_events(&mut viewer);
    let delivered = frames(&events);
    assert_eq!(
        delivered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![0, 5, 6, 7],
        "frame 1 and the P-frames after it are lost, the keyframe and its frames kept"
    );
    let lost: Vec<(u32, FrameLossReason)> = events
        .iter()
        .filter_map(|event| match event {
            Event::FrameLost {
                frame_seq, reason, ..
            } => Some((*frame_seq, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        vec![
            (1, FrameLossReason::Late),
            (2, FrameLossReason::AwaitingKeyframe),
            (3, FrameLossReason::AwaitingKeyframe),
            (4, FrameLossReason::AwaitingKeyframe),
        ]
    );
    assert!(viewer.memory().receive_frames_in_flight <= 8);
}

#[test]
fn a_frame_arriving_while_the_table_is_full_is_kept() {
    // Making room for a new frame evicts the oldest incomplete one and delivers what was
    // held behind it; the new frame, not yet in the table, must not be passed over as
    // given up (it was lost without a trace, and its stream broken).
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.max_frames_in_flight = 8;
        value
    };
    let (mut camera, mut viewer) = pair(config, start);
    for packet in send(&mut camera, start, video(true, 1_000, 0)) {
        viewer.handle_input(start, &packet).unwrap();
    }
    let stalled = send(&mut camera, start, video(false, 3_000, 1));
    viewer.handle_input(start, &stalled[0]).unwrap();
    for seq in 2..=12u8 {
        for packet in send(&mut camera, start, video(seq == 6, 1_000, seq)) {
            viewer.handle_input(start, &packet).unwrap();
        }
    }
    let delivered = frames(&drain_events(&mut viewer));
    assert_eq!(
        delivered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![0, 6, 7, 8, 9, 10, 11, 12]
    );
}

#[test]
fn reports_measure_rtt_and_loss_and_drive_the_target_bitrate() {
    let start = Instant::now();
    let (mut camera, _) = pair(common::unpaced(), start);
    let initial = camera.target_bitrate_bps();
    send(&mut camera, start, video(true, 1_000, 0));
    camera.handle_timeout(start); // first report
    let mut report_bytes = BytesMut::new();
    let mut now = start;
    // Ten reports at 20 % loss, 200 ms apart: the target falls (GCC: x (1 - 0.5 loss)),
    // at most once per rtt + 300 ms = 340 ms, so on every other report.
    for step in 1..=10u32 {
        now = start + Duration::from_millis(200 * u64::from(step));
        report_bytes.clear();
        wire::encode_report(
            &Report {
                timestamp_ms: 200 * step,
                echo: Some(wire::ReportEcho {
                    timestamp_ms: 0,
                    delay_ms: 200 * step - 40,
                }),
                interval_ms: 200,
                packets_expected: 100,
                packets_received: 80,
                bytes_received: 100_000,
                jitter_us: 0,
            },
            &mut report_bytes,
        );
        camera.handle_input(now, &report_bytes).unwrap();
    }
    let stats = camera.stats();
    assert_eq!(stats.rtt, Some(Duration::from_millis(40)));
    assert!((stats.send_loss - 0.2).abs() < 1e-9);
    let expected = (initial as f64 * 0.9f64.powi(5)) as u64;
    assert!(
        camera.target_bitrate_bps().abs_diff(expected) < 1_000,
        "{} vs {expected}",
        camera.target_bitrate_bps()
    );
    let lowered = camera.target_bitrate_bps();
    assert!(
        drain_events(&mut camera)
            .iter()
            .any(|event| matches!(event, Event::TargetBitrate { .. }))
    );
    // Then no loss for five seconds: it grows 8 % per second.
    for step in 1..=25u32 {
        now += Duration::from_millis(200);
        report_bytes.clear();
        wire::encode_report(
            &Report {
                interval_ms: 200,
                packets_expected: 100,
                packets_received: 100,
                ..Report::default()
            },
            &mut report_bytes,
        );
        camera.handle_input(now, &report_bytes).unwrap();
        let _ = step;
    }
    let grown = (lowered as f64 * 1.08f64.powi(5)) as u64;
    assert!(
        camera.target_bitrate_bps().abs_diff(grown) < 1_000,
        "{} vs {grown}",
        camera.target_bitrate_bps()
    );
}

#[test]
fn pending_small_packets_are_bounded_when_the_driver_does_not_poll() {
    let start = Instant::now();
    let (mut idle, _) = pair(common::unpaced(), start);
    // 400 report intervals without draining: at most MAX_PENDING_SMALL_PACKETS wait.
    for step in 0..400u64 {
        idle.handle_timeout(start + Duration::from_millis(200 * step));
    }
    let pending = drain_packets(&mut idle).len();
    assert_eq!(pending, sightwire_media::MAX_PENDING_SMALL_PACKETS);
}

#[test]
fn nack_dedup_memory_is_bounded() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.initial_rtt = Duration::from_millis(10);
        value
    };
    let (mut sender, _) = pair(config, start);
    // Large enough that its first transmission pays for every retransmission below.
    send(&mut sender, start, video(true, 20_000, 1));
    let nack = |seq: u16| {
        let mut out = BytesMut::new();
        let entry = NackEntry {
            stream: StreamId::VIDEO,
            frame_seq: 0,
            first_fragment: 0,
            fragment_count: 1,
        };
        wire::encode_nack(seq, &[entry], &mut out);
        out
    };
    // NACKs one half RTT (5 ms) apart, so the per-fragment interval (4.4) lets each one
    // through.
    let mut now = start;
    let mut retransmissions = |sender: &mut MediaConnection, seq: u16| {
        now += Duration::from_millis(5);
        sender.handle_input(now, &nack(seq)).unwrap();
        fragments(&drain_packets(sender)).len()
    };
    assert!(retransmissions(&mut sender, 0) > 0);
    assert_eq!(retransmissions(&mut sender, 0), 0, "a repeat is ignored");
    // Eight newer NACKs push sequence 0 out of the remembered set...
    for seq in 1..=8 {
        assert!(retransmissions(&mut sender, seq) > 0);
    }
    // ...so it counts as new again: memory stays at eight entries.
    assert!(retransmissions(&mut sender, 0) > 0);
}

/// A NACK naming `frame_seq` `times` times, every fragment each time.
fn nack_repeating(seq: u16, frame_seq: u32, times: usize) -> BytesMut {
    let entry = NackEntry {
        stream: StreamId::VIDEO,
        frame_seq,
        first_fragment: 0,
        fragment_count: wire::NACK_ALL_FRAGMENTS,
    };
    let mut out = BytesMut::new();
    wire::encode_nack(seq, &vec![entry; times], &mut out);
    out
}

#[test]
fn finding_5_nack_amplification_is_bounded() {
    // Security issue 12, finding 5: one NACK naming one frame 128 times queued 128 copies
    // of every fragment. Now each fragment is queued at most once per NACK. (A budget
    // long enough that one copy is sent, not the two of the deadline rule.)
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.latency_budget = Duration::from_secs(1);
        value
    };
    let (mut sender, _) = pair(config, start);
    let sent = send(&mut sender, start, video(true, 40_000, 1));
    let fragment_count = sent.len();
    assert!(fragment_count > 30);
    let nack = nack_repeating(0, 0, wire::MAX_NACK_ENTRIES);
    sender.handle_input(start, &nack).unwrap();
    let retransmitted = fragments(&drain_packets(&mut sender));
    assert_eq!(retransmitted.len(), fragment_count);
    let stats = sender.stats();
    assert_eq!(stats.fragments_retransmitted, fragment_count as u64);
    assert_eq!(
        stats.retransmissions_deduplicated,
        (fragment_count * (wire::MAX_NACK_ENTRIES - 1)) as u64
    );
    // Sent bytes for that NACK are no more than the frame's own packets.
    let bytes = |packets: &[Bytes]| packets.iter().map(Bytes::len).sum::<usize>();
    assert!(bytes(&retransmitted) <= bytes(&sent));
}

#[test]
fn nack_for_a_fragment_still_queued_or_just_retransmitted_is_deduplicated() {
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.latency_budget = Duration::from_secs(1);
        value
    };
    let (mut sender, _) = pair(config, start);
    let fragment_count = send(&mut sender, start, video(true, 5_000, 1)).len();
    // Queued but not yet sent: a second NACK (new nack_seq) queues nothing more.
    sender
        .handle_input(start, &nack_repeating(0, 0, 1))
        .unwrap();
    let ms = |n| start + Duration::from_millis(n);
    sender
        .handle_input(ms(10), &nack_repeating(1, 0, 1))
        .unwrap();
    assert_eq!(fragments(&drain_packets(&mut sender)).len(), fragment_count);
    // Sent, but queued 40 ms ago (less than half the 100 ms RTT): deduplicated again.
    sender
        .handle_input(ms(40), &nack_repeating(2, 0, 1))
        .unwrap();
    assert!(fragments(&drain_packets(&mut sender)).is_empty());
    // Half an RTT after it was queued, a NACK is a new round and is served.
    sender
        .handle_input(ms(50), &nack_repeating(3, 0, 1))
        .unwrap();
    assert_eq!(fragments(&drain_packets(&mut sender)).len(), fragment_count);
    assert_eq!(
        sender.stats().retransmissions_deduplicated,
        2 * fragment_count as u64
    );
}

#[test]
fn retransmissions_are_bounded_by_the_credit_first_transmissions_earn() {
    // A peer NACKing one frame every half RTT for the whole latency budget gets at most
    // RETRANSMIT_CREDIT_PER_BYTE times the bytes first sent, however small the RTT.
    let start = Instant::now();
    let config = {
        let mut value = common::unpaced();
        value.initial_rtt = Duration::from_millis(2);
        value.latency_budget = Duration::from_secs(2);
        value
    };
    let (mut sender, _) = pair(config, start);
    let sent = send(&mut sender, start, video(true, 20_000, 1));
    let first_bytes: usize = sent.iter().map(Bytes::len).sum();
    let mut retransmitted_bytes = 0;
    for round in 0..200u16 {
        let now = start + Duration::from_millis(u64::from(round) * 2);
        sender
            .handle_input(now, &nack_repeating(round, 0, 1))
            .unwrap();
        retransmitted_bytes += fragments(&drain_packets(&mut sender))
            .iter()
            .map(Bytes::len)
            .sum::<usize>();
    }
    let credit = sightwire_media::RETRANSMIT_CREDIT_PER_BYTE as usize * first_bytes;
    assert!(
        retransmitted_bytes <= credit,
        "{retransmitted_bytes} > {credit}"
    );
    assert!(retransmitted_bytes > credit - 2 * 1200);
    assert!(sender.stats().retransmissions_over_budget > 0);
    // New first transmissions earn new credit.
    send(&mut sender, start, video(true, 5_000, 2));
    sender
        .handle_input(
            start + Duration::from_millis(500),
            &nack_repeating(999, 1, 1),
        )
        .unwrap();
    assert!(!fragments(&drain_packets(&mut sender)).is_empty());
}

#[test]
fn nack_entries_beyond_one_packet_wait_for_the_next() {
    let start = Instant::now();
    let (mut camera, mut viewer) = pair(common::unpaced(), start);
    viewer.handle_timeout(start);
    drain_packets(&mut viewer);
    // 300 fragments, every other one lost: 150 runs, more than one NACK holds.
    let packets = send(&mut camera, start, video(true, 300 * 1172, 0));
    assert_eq!(packets.len(), 300);
    for packet in packets.iter().step_by(2) {
        viewer.handle_input(start, packet).unwrap();
    }
    let mut counts = Vec::new();
    let mut seen = Vec::new();
    while counts.len() < 2 {
        let now = viewer.poll_timeout().unwrap();
        viewer.handle_timeout(now);
        for packet in drain_packets(&mut viewer) {
            if let Ok(Packet::Nack { nack_seq, entries }) = wire::decode(&packet)
                && !seen.contains(&nack_seq)
            {
                seen.push(nack_seq);
                counts.push((now - start, wire::nack_entries(entries).count()));
            }
        }
    }
    assert_eq!(
        counts[0],
        (Duration::from_millis(5), wire::MAX_NACK_ENTRIES)
    );
    assert_eq!(
        counts[1],
        (Duration::from_millis(10), 150 - wire::MAX_NACK_ENTRIES)
    );
}

#[test]
fn loss_is_accumulated_over_at_least_min_packets() {
    let start = Instant::now();
    let (mut camera, _) = pair(common::unpaced(), start);
    let report = |expected: u32, received: u32| {
        let mut out = BytesMut::new();
        wire::encode_report(
            &Report {
                interval_ms: 200,
                packets_expected: expected,
                packets_received: received,
                ..Report::default()
            },
            &mut out,
        );
        out
    };
    // 20 packets with 10 lost: too few to judge, nothing changes yet.
    camera.handle_input(start, &report(20, 10)).unwrap();
    assert_eq!(camera.stats().send_loss, 0.0);
    assert_eq!(camera.target_bitrate_bps(), 2_000_000);
    // 20 more without loss: 40 >= MIN_PACKETS_FOR_LOSS, loss 10/40 = 25 % over 400 ms.
    camera.handle_input(start, &report(20, 20)).unwrap();
    assert_eq!(camera.stats().send_loss, 0.25);
    assert_eq!(camera.target_bitrate_bps(), 1_750_000);
    const _: () = assert!(
        sightwire_media::MIN_PACKETS_FOR_LOSS > 20 && sightwire_media::MIN_PACKETS_FOR_LOSS <= 40
    );
}

/// A stream whose frame sequence reaches `u32::MAX` and wraps to 0 keeps delivering,
/// and delivering costs work bounded by the frames in flight — not a walk over four
/// billion sequence numbers (a fuzz-found hang; its input is the corpus seed
/// `seed-sequence-wrap`).
#[test]
fn frame_sequence_wrap_is_bounded() {
    let start = Instant::now();
    let mut receiver = MediaConnection::new(common::unpaced(), start).unwrap();
    let single = |frame_seq: u32, packet_seq: u32, keyframe: bool| {
        let header = wire::FragmentHeader {
            stream: StreamId::VIDEO,
            codec: Codec::H264,
            flags: if keyframe { wire::FLAG_KEYFRAME } else { 0 },
            packet_seq,
            frame_seq,
            capture_time_us: u64::from(packet_seq) * 33_000,
            frame_size: 4,
            fragment_index: 0,
            fragment_count: 1,
        };
        let mut packet = header.encode().to_vec();
        packet.extend_from_slice(&[1, 2, 3, 4]);
        packet
    };
    let mut delivered = Vec::new();
    for (i, (seq, keyframe)) in [
        (u32::MAX - 1, true),
        (u32::MAX, false),
        (0, false),
        (1, false),
    ]
    .into_iter()
    .enumerate()
    {
        let now = start + Duration::from_millis(33 * i as u64);
        receiver
            .handle_input(now, &single(seq, i as u32, keyframe))
            .unwrap();
        receiver.handle_timeout(now);
        delivered.extend(
            drain_events(&mut receiver)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Frame(frame) => Some(frame.frame_seq),
                    _ => None,
                }),
        );
    }
    assert_eq!(delivered, vec![u32::MAX - 1, u32::MAX, 0, 1]);
}
