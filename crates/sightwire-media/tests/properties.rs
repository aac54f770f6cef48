//! Property tests: reassembly under any permutation and duplication, hostile input never
//! panics, memory limits hold under adversarial fragments, codecs round-trip.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{drain_events, drain_packets, fragments};
use proptest::prelude::*;
use sightwire_media::wire::{self, FragmentHeader, NackEntry, Packet, Report, ReportEcho};
use sightwire_media::{
    Codec, Event, Frame, MAX_STREAMS, MediaConnection, PacketizedFrame, StreamId,
};

fn frame(stream: StreamId, codec: Codec, keyframe: bool, data: Bytes) -> Frame {
    Frame::new(stream, codec, 1_000, data).with_keyframe(keyframe)
}

/// Payload length of fragment `index` under the spec's even split, if the layout is valid.
fn even_split_len(size: usize, count: u16, index: u16) -> Option<usize> {
    let chunk = size.div_ceil(usize::from(count));
    let start = chunk * usize::from(index);
    let end = (start + chunk).min(size);
    (start < end && chunk * (usize::from(count) - 1) < size).then(|| end - start)
}

fn codec() -> impl Strategy<Value = Codec> {
    proptest::sample::select(Codec::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any order of a frame's fragments, with any duplicates, yields exactly the frame.
    #[test]
    fn any_permutation_and_duplication_reassembles(
        data in proptest::collection::vec(any::<u8>(), 1..40_000),
        packet_size in 1024usize..=1500,
        order_seed in any::<u64>(),
        duplicates in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        codec in codec(),
    ) {
        let start = Instant::now();
        let config = { let mut value = common::unpaced(); value.max_packet_size = packet_size; value };
        let mut sender = MediaConnection::new(config.clone(), start).unwrap();
        let mut receiver = MediaConnection::new(config, start).unwrap();
        let data = Bytes::from(data);
        let packetized = sender.packetize(frame(StreamId::VIDEO, codec, true, data.clone())).unwrap();
        sender.send_frame(start, &packetized).unwrap();
        let mut packets = fragments(&drain_packets(&mut sender));
        prop_assert_eq!(packets.len(), usize::from(packetized.fragment_count()));
        prop_assert!(packets.iter().all(|packet| packet.len() <= packet_size));
        for index in &duplicates {
            let copy = packets[index.index(packets.len())].clone();
            packets.push(copy);
        }
        // Fisher-Yates with a seeded generator.
        let mut rng = sightwire_testkit::TestRng::new(order_seed);
        for i in (1..packets.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            packets.swap(i, j);
        }
        let now = start + Duration::from_millis(10);
        for packet in &packets {
            receiver.handle_input(now, packet).unwrap();
        }
        let delivered: Vec<Bytes> = drain_events(&mut receiver)
            .into_iter()
            .filter_map(|event| match event {
                Event::Frame(received) => Some(received.frame.data),
                _ => None,
            })
            .collect();
        prop_assert_eq!(delivered, vec![data]);
        prop_assert_eq!(receiver.stats().fragments_duplicate, duplicates.len() as u64);
        prop_assert_eq!(receiver.memory().receive_buffered_bytes, 0);
    }

    /// The even split covers the frame exactly, every fragment non-empty and within size.
    #[test]
    fn packetization_covers_the_frame(size in 1usize..300_000, packet_size in 1024usize..=9000) {
        let data = Bytes::from(vec![0u8; size]);
        let packetized = PacketizedFrame::new(frame(StreamId::AUDIO, Codec::Opus, true, data), packet_size).unwrap();
        let mut total = 0;
        for index in 0..packetized.fragment_count() {
            let fragment = packetized.fragment(index).unwrap();
            prop_assert!(!fragment.is_empty());
            prop_assert!(fragment.len() + wire::FRAGMENT_HEADER_LEN <= packet_size);
            total += fragment.len();
        }
        prop_assert_eq!(total, size);
        prop_assert!(packetized.fragment(packetized.fragment_count()).is_none());
    }

    /// Arbitrary bytes never panic, whatever the packet type byte says.
    #[test]
    fn garbage_never_panics(
        packets in proptest::collection::vec(
            (0x3fu8..=0x46, proptest::collection::vec(any::<u8>(), 0..1300)), 1..40),
    ) {
        let start = Instant::now();
        let mut connection = MediaConnection::new(common::unpaced(), start).unwrap();
        for (step, (kind, mut body)) in packets.into_iter().enumerate() {
            body.insert(0, kind);
            let now = start + Duration::from_millis(step as u64 * 7);
            let _ = connection.handle_input(now, &body);
            connection.handle_timeout(now);
            drain_packets(&mut connection);
            drain_events(&mut connection);
        }
    }

    /// Well-formed but adversarial fragments (any stream, sequence, size, layout) never
    /// push the receiver past its frame, byte or in-flight limits.
    #[test]
    fn memory_limits_hold_under_adversarial_fragments(
        fragments in proptest::collection::vec(
            (0u8..MAX_STREAMS as u8, 0u32..200, any::<bool>(), 1u32..80_000, 1u16..200, any::<u16>(), 0u64..30),
            1..300),
    ) {
        let start = Instant::now();
        let config = { let mut value = common::unpaced(); value.max_frame_size = 60_000; value.max_frames_in_flight = 12; value.max_buffered_bytes = 150_000; value };
        let mut connection = MediaConnection::new(config.clone(), start).unwrap();
        let mut now = start;
        for (stream, frame_seq, far, frame_size, count, index, step) in fragments {
            now += Duration::from_millis(step);
            let frame_seq = if far { frame_seq.wrapping_mul(1_000_003) } else { frame_seq };
            let count = count.min(frame_size as u16).max(1);
            let index = index % count;
            let Some(payload_len) = even_split_len(frame_size as usize, count, index) else {
                continue;
            };
            let header = FragmentHeader {
                stream: StreamId::new(stream).unwrap(),
                codec: Codec::H264,
                flags: 0,
                packet_seq: 0,
                frame_seq,
                capture_time_us: 0,
                frame_size,
                fragment_index: index,
                fragment_count: count,
            };
            let mut packet = header.encode().to_vec();
            packet.resize(packet.len() + payload_len, 0xAB);
            connection.handle_input(now, &packet).unwrap();
            if connection.poll_timeout().is_some_and(|at| at <= now) {
                connection.handle_timeout(now);
            }
            drain_packets(&mut connection);
            drain_events(&mut connection);
            let memory = connection.memory();
            prop_assert!(memory.receive_buffered_bytes <= config.max_buffered_bytes);
            prop_assert!(memory.receive_frames_in_flight <= config.max_frames_in_flight);
        }
    }

    /// Every packet kind round-trips through its encoder and the decoder.
    #[test]
    fn codecs_round_trip(
        stream in 0u8..MAX_STREAMS as u8,
        seq in any::<u32>(),
        small in any::<u16>(),
        timestamp in any::<u64>(),
        message in proptest::collection::vec(any::<u8>(), 0..=wire::MAX_CONTROL_MESSAGE_LEN),
        entries in proptest::collection::vec((0u8..MAX_STREAMS as u8, any::<u32>(), any::<u16>(), any::<u16>()), 1..=wire::MAX_NACK_ENTRIES),
        echo in any::<Option<(u32, u32)>>(),
        counters in any::<[u32; 6]>(),
    ) {
        let stream = StreamId::new(stream).unwrap();
        let entries: Vec<NackEntry> = entries.into_iter().map(|(stream, frame_seq, first_fragment, fragment_count)| NackEntry {
            stream: StreamId::new(stream).unwrap(), frame_seq, first_fragment, fragment_count,
        }).collect();
        let mut out = BytesMut::new();
        wire::encode_nack(small, &entries, &mut out);
        match wire::decode(&out).unwrap() {
            Packet::Nack { nack_seq, entries: raw } => {
                prop_assert_eq!(nack_seq, small);
                prop_assert_eq!(wire::nack_entries(raw).collect::<Vec<_>>(), entries);
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }
        let report = Report {
            timestamp_ms: counters[0],
            echo: echo.map(|(timestamp_ms, delay_ms)| ReportEcho { timestamp_ms, delay_ms }),
            interval_ms: counters[1],
            packets_expected: counters[2],
            packets_received: counters[3],
            bytes_received: counters[4],
            jitter_us: counters[5],
        };
        let mut out = BytesMut::new();
        wire::encode_report(&report, &mut out);
        prop_assert_eq!(wire::decode(&out).unwrap(), Packet::Report(report));
        let mut out = BytesMut::new();
        wire::encode_control_data(seq, &message, &mut out);
        prop_assert_eq!(wire::decode(&out).unwrap(), Packet::ControlData { seq, message: &message });
        let mut out = BytesMut::new();
        wire::encode_control_ack(seq, u32::from(small), &mut out);
        prop_assert_eq!(wire::decode(&out).unwrap(), Packet::ControlAck { cumulative: seq, selective: u32::from(small) });
        let mut out = BytesMut::new();
        wire::encode_keyframe_request(stream, &mut out);
        prop_assert_eq!(wire::decode(&out).unwrap(), Packet::KeyframeRequest { stream });
        let header = FragmentHeader {
            stream, codec: Codec::Mjpeg, flags: wire::FLAG_KEYFRAME, packet_seq: seq, frame_seq: seq ^ 1,
            capture_time_us: timestamp, frame_size: 1, fragment_index: 0, fragment_count: 1,
        };
        let mut packet = header.encode().to_vec();
        packet.push(9);
        prop_assert_eq!(wire::decode(&packet).unwrap(), Packet::Fragment { header, payload: &[9] });
    }

    /// Control messages arrive exactly once and in order over a lossy, reordering path.
    #[test]
    fn control_messages_arrive_in_order_despite_loss(
        count in 1usize..60,
        loss_seed in any::<u64>(),
    ) {
        let link = common::Link { delay: Duration::from_millis(20), loss: 0.2 };
        let mut pair = common::Pair::new(link, loss_seed, |start| {
            let a = MediaConnection::new(common::unpaced(), start).unwrap();
            let b = MediaConnection::new(common::unpaced(), start).unwrap();
            (a, b)
        });
        let start = pair.start();
        let mut sent = Vec::new();
        for index in 0..count {
            let message = Bytes::from(format!("message {index}"));
            pair.a().send_control(start, message.clone()).unwrap();
            sent.push(message);
        }
        pair.run_until(start + Duration::from_secs(30));
        let received: Vec<Bytes> = pair.b_events().iter().filter_map(|(_, event)| match event {
            Event::Control(message) => Some(message.clone()),
            _ => None,
        }).collect();
        prop_assert_eq!(received, sent);
        prop_assert_eq!(pair.a().memory().control_queued, 0);
    }
}
