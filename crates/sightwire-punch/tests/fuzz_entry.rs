//! Runs the fuzz target's entry points over the committed seed corpus and over random
//! inputs, so `cargo test` exercises what the fuzzer runs.

use proptest::prelude::*;
use sightwire_punch::fuzzing;

#[test]
fn seed_corpus_runs_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-seeds/punch_probe");
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus directory") {
        let path = entry.expect("corpus entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seed-"))
        {
            let data = std::fs::read(&path).expect("seed file");
            fuzzing::probe_decode(&data);
            fuzzing::agent_datagrams(&data);
            seeds += 1;
        }
    }
    assert!(seeds >= 2, "expected committed seeds in {dir}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn arbitrary_inputs_run_clean(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::probe_decode(&data);
        fuzzing::agent_datagrams(&data);
    }
}
