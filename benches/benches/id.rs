//! Parsing throughput of device IDs and URIs: what a rendezvous pays per lookup request
//! that carries a typed ID, and what a viewer pays per scanned QR code.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sightwire_id::{DeviceId, DeviceUri};

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("id/parse");
    group.throughput(Throughput::Elements(1));
    for input in [
        "1C:C3:16:AB:CD:EF",
        "1cc3.16ab.cdef",
        "  1c c3 16 ab cd ef  ",
        "1CC3-16AB-CDEF-BC",
    ] {
        group.bench_function(input.trim(), |b| {
            b.iter(|| black_box(input).parse::<DeviceId>())
        });
    }
    // What a phone types: full-width forms, a BOM and a zero-width space.
    let phone = "\u{FEFF}１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ\u{200B}";
    group.bench_function("phone full-width", |b| {
        b.iter(|| black_box(phone).parse::<DeviceId>())
    });
    let uri = "sightwire:1CC316ABCDEFBC?fp=c501d437a80d62872a38115e0b1c4c62";
    group.bench_function("uri", |b| b.iter(|| black_box(uri).parse::<DeviceUri>()));
    group.finish();

    let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
    let mut group = c.benchmark_group("id/format");
    group.throughput(Throughput::Elements(1));
    group.bench_function("display", |b| b.iter(|| black_box(id).to_string()));
    group.bench_function("checked", |b| b.iter(|| black_box(id).to_checked_string()));
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
