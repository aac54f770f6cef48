//! Runs the fuzz target's entry point over its committed seed corpus and over random
//! inputs, so the fuzz harness itself stays exercised without `cargo fuzz`.

use proptest::prelude::*;

#[test]
fn seed_corpus_passes_the_fuzz_entry_point() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-seeds/media_receiver");
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus present") {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            sightwire_media::fuzzing::receive_packets(&std::fs::read(&path).unwrap());
            seeds += 1;
        }
    }
    assert!(seeds >= 3, "found {seeds} seeds");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_pass_the_fuzz_entry_point(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        sightwire_media::fuzzing::receive_packets(&data);
    }
}
