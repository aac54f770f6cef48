//! `sightwire-id`: what a viewer app does with what a person types or scans.
//!
//! ```text
//! sightwire-id 1c-c3-16-ab-cd-ef              # canonical and checked forms
//! sightwire-id 1c-c3-16-ab-cd-ef --key <hex>  # plus the label's URI and QR code
//! sightwire-id 'sightwire:1CC316ABCDEFBC?fp=…' # read a scanned label
//! sightwire-id '１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ'     # what a phone's CJK keyboard types
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint, ParseError, PublicKey};

/// Parse a camera's device ID (or a scanned label URI) and show its forms.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A device ID as written on a label or typed by a person, or a `sightwire:` URI.
    input: String,
    /// The device's static public key (64 hex digits), to print the label's URI and QR.
    #[arg(long)]
    key: Option<String>,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (id, fingerprint) = if DeviceUri::has_scheme(&args.input) {
        let uri: DeviceUri = args.input.parse().context("reading the label URI")?;
        println!("label URI for device {}", uri.id());
        (uri.id(), Some(uri.fingerprint()))
    } else {
        match args.input.parse::<DeviceId>() {
            Ok(id) => (id, None),
            Err(error) => {
                explain(&args.input, &error);
                bail!("not a device ID: {error}");
            }
        }
    };
    let fingerprint = match (&args.key, fingerprint) {
        (Some(key), _) => {
            let key = PublicKey::from_bytes(hex_key(key)?);
            Some(KeyFingerprint::of_public_key(&key))
        }
        (None, scanned) => scanned,
    };

    println!("device ID      {id}");
    println!(
        "checked form   {}   (print this on the label)",
        id.to_checked_string()
    );
    if let Some(fingerprint) = fingerprint {
        let uri = DeviceUri::new(id, fingerprint);
        println!("key fingerprint {fingerprint}");
        println!("label URI      {uri}");
        if !args.no_qr {
            println!("{}", uri.to_qr_terminal()?);
        }
    }
    Ok(())
}

/// Points at the offending character, the way a viewer app's input field would.
///
/// A terminal gives one column to each printable ASCII character only: after anything
/// else (a full-width form takes two columns, an invisible character none) a caret would
/// be misplaced, so then only the error message, which names the position and the code
/// point, says where.
fn explain(input: &str, error: &ParseError) {
    eprintln!("  {input}");
    let position = match error {
        ParseError::InvalidCharacter { position, .. } | ParseError::LookAlike { position, .. } => {
            *position
        }
        _ => return,
    };
    let before: Vec<char> = input.chars().take(position - 1).collect();
    if before.iter().all(|ch| *ch == ' ' || ch.is_ascii_graphic()) {
        eprintln!("  {}^", " ".repeat(before.len()));
    }
}

fn hex_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        bail!("a static public key is 64 hex digits, got {}", text.len());
    }
    let mut key = [0u8; 32];
    for (i, (byte, pair)) in key.iter_mut().zip(text.as_bytes().chunks(2)).enumerate() {
        *byte = std::str::from_utf8(pair)
            .ok()
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            .with_context(|| format!("key digit pair {} is not hex", i + 1))?;
    }
    Ok(key)
}
