//! The checked-in C header is what cbindgen makes of the crate today: CI checks it
//! without installing the cbindgen binary. `SIGHTWIRE_BLESS=1 cargo test -p
//! sightwire-ffi --test header` rewrites it after an API change.

use std::path::Path;

#[test]
fn checked_in_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = crate_dir.join("include/sightwire.h");
    if std::env::var_os("SIGHTWIRE_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `SIGHTWIRE_BLESS=1 cargo test -p sightwire-ffi --test header` \
         and commit it",
        path.display()
    );
    // The header documents its rules (doc comments flow into it).
    let text = String::from_utf8(generated).expect("UTF-8");
    for needle in [
        "Memory:",
        "Threads:",
        "SIGHTWIRE_RESULT_PANIC",
        "sightwire_camera_start",
        "sightwire_device_poll_transmit",
    ] {
        assert!(text.contains(needle), "the header lacks {needle}");
    }
}
