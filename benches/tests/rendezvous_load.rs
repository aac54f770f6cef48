//! The load generator on a small scale, so it cannot rot: 200 devices register and keep
//! alive on a real rendezvous process, 20 lookups are answered (`--check` fails the run
//! otherwise). The figures are in `BENCHMARKS.md`; this only checks that it works.

use std::path::Path;
use std::process::Command;

#[test]
fn two_hundred_devices_register_keep_alive_and_are_found() {
    let load = Path::new(env!("CARGO_BIN_EXE_rendezvous-load"));
    // Built by `cargo test --workspace` (the rendezvous crate's own tests need it).
    let server = load.with_file_name("sightwire-rendezvous");
    assert!(
        server.exists(),
        "{} is missing: cargo build -p sightwire-rendezvous --bin sightwire-rendezvous",
        server.display()
    );
    let output = Command::new(load)
        .args([
            "--devices",
            "200",
            "--devices-per-socket",
            "50",
            "--keepalive-ms",
            "1000",
            "--hold-secs",
            "3",
            "--viewers",
            "4",
            "--connects",
            "20",
            "--check",
            "--server-bin",
        ])
        .arg(&server)
        .output()
        .expect("run rendezvous-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rendezvous-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| registered | 200 of 200 "), "{stdout}");
    assert!(
        stdout.contains("| connects | 20 answered, 0 refused, 0 unanswered"),
        "{stdout}"
    );
    assert!(stdout.contains("server memory per device"), "{stdout}");
}
