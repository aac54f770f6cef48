//! [`DeviceUri`]: the QR-code form of a device, `sightwire:<ID>?fp=<fingerprint>`.

use std::fmt;
use std::str::FromStr;

use crate::normalize;
use crate::{DeviceId, FingerprintError, KeyFingerprint, ParseError};

/// The URI scheme, without the colon. Matched case-insensitively.
pub const URI_SCHEME: &str = "sightwire";

/// Longest URI, in bytes, that [`DeviceUri::from_str`] looks at. Room for the ID, the
/// fingerprint and a few future parameters, and small enough for a QR code a phone reads
/// off a camera label.
pub const MAX_URI_LEN: usize = 512;

/// The parameter carrying the key fingerprint.
const FINGERPRINT_PARAM: &str = "fp";

/// What a camera's label encodes in its QR code: the device ID and the fingerprint of
/// the device's static public key.
///
/// Format (see `spec/id.md`): `sightwire:` then the ID in its checked form without
/// separators (14 hex digits, upper case), then `?fp=` and the fingerprint as 32
/// lower-case hex digits. For example
/// `sightwire:1CC316ABCDEFBC?fp=00112233445566778899aabbccddeeff`.
///
/// Parsing is forward compatible: parameters other than `fp` are ignored, and so is a
/// `#fragment`. Whitespace and invisible characters around the URI (what a paste from a
/// chat app brings along) are ignored; the ID part is read like any typed ID
/// ([`DeviceId`]'s [`FromStr`]). It refuses a wrong scheme, an invalid ID (with or
/// without check characters), a missing, repeated or malformed `fp`, and malformed
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceUri {
    id: DeviceId,
    fingerprint: KeyFingerprint,
}

/// Why a string is not a device URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriError {
    /// The input is longer than [`MAX_URI_LEN`] bytes.
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit, [`MAX_URI_LEN`].
        limit: usize,
    },
    /// The input does not start with `sightwire:`.
    WrongScheme,
    /// The device ID part is invalid.
    InvalidId(ParseError),
    /// There is no `fp` parameter; a device URI must pin the key.
    MissingFingerprint,
    /// A parameter that may appear once appears again.
    DuplicateParameter {
        /// The parameter's name.
        name: &'static str,
    },
    /// A query component is not `name=value` with a non-empty name.
    MalformedParameter {
        /// Which `&`-separated component, counting from 1.
        index: usize,
    },
    /// The `fp` value is not a fingerprint.
    InvalidFingerprint(FingerprintError),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len, limit } => {
                write!(f, "URI is {len} bytes long; the limit is {limit}")
            }
            Self::WrongScheme => write!(f, "not a {URI_SCHEME}: URI"),
            Self::InvalidId(e) => write!(f, "device ID in the URI: {e}"),
            Self::MissingFingerprint => f.write_str("the URI has no key fingerprint (fp=)"),
            Self::DuplicateParameter { name } => write!(f, "parameter {name} appears twice"),
            Self::MalformedParameter { index } => {
                write!(f, "query parameter {index} is not name=value")
            }
            Self::InvalidFingerprint(e) => write!(f, "key fingerprint in the URI: {e}"),
        }
    }
}

impl std::error::Error for UriError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidId(e) => Some(e),
            Self::InvalidFingerprint(e) => Some(e),
            _ => None,
        }
    }
}

impl DeviceUri {
    /// Whether `input` is meant as a device URI: after any leading whitespace and
    /// invisible characters it starts with `sightwire:` (any case). A viewer uses this to
    /// decide between parsing a scanned label and a typed ID. Skips at most
    /// [`MAX_URI_LEN`] bytes of leading blanks, so its work is bounded on any input.
    pub fn has_scheme(input: &str) -> bool {
        let start = input
            .char_indices()
            .take_while(|&(index, ch)| index < MAX_URI_LEN && normalize::is_removed(ch))
            .last()
            .map_or(0, |(index, ch)| index + ch.len_utf8());
        input
            .get(start..)
            .and_then(|rest| rest.get(..=URI_SCHEME.len()))
            .is_some_and(|prefix| strip_scheme(prefix) == Some(""))
    }

    /// The URI for a device and the fingerprint of its static key.
    pub const fn new(id: DeviceId, fingerprint: KeyFingerprint) -> Self {
        Self { id, fingerprint }
    }

    /// The device ID.
    pub const fn id(&self) -> DeviceId {
        self.id
    }

    /// The pinned key fingerprint.
    pub const fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    /// The URI rendered as a QR code with Unicode half blocks, for a terminal.
    #[cfg(feature = "qr")]
    pub fn to_qr_terminal(&self) -> Result<String, qrcode::types::QrError> {
        use qrcode::render::unicode::Dense1x2;
        let code = qrcode::QrCode::with_error_correction_level(
            self.to_string().as_bytes(),
            qrcode::EcLevel::M,
        )?;
        Ok(code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build())
    }
}

impl FromStr for DeviceUri {
    type Err = UriError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_URI_LEN {
            return Err(UriError::TooLong {
                len: input.len(),
                limit: MAX_URI_LEN,
            });
        }
        let input = input.trim_matches(normalize::is_removed);
        let rest = strip_scheme(input).ok_or(UriError::WrongScheme)?;
        // A fragment carries nothing for us.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (id_part, query) = rest.split_once('?').unwrap_or((rest, ""));
        let id = id_part.parse::<DeviceId>().map_err(UriError::InvalidId)?;

        let mut fingerprint = None;
        if !query.is_empty() {
            for (i, component) in query.split('&').enumerate() {
                let (name, value) = component
                    .split_once('=')
                    .filter(|(name, _)| !name.is_empty())
                    .ok_or(UriError::MalformedParameter { index: i + 1 })?;
                if name.eq_ignore_ascii_case(FINGERPRINT_PARAM) {
                    if fingerprint.is_some() {
                        return Err(UriError::DuplicateParameter {
                            name: FINGERPRINT_PARAM,
                        });
                    }
                    fingerprint = Some(value.parse().map_err(UriError::InvalidFingerprint)?);
                }
            }
        }
        let fingerprint = fingerprint.ok_or(UriError::MissingFingerprint)?;
        Ok(Self { id, fingerprint })
    }
}

fn strip_scheme(input: &str) -> Option<&str> {
    let (scheme, rest) = input.split_once(':')?;
    scheme.eq_ignore_ascii_case(URI_SCHEME).then_some(rest)
}

impl fmt::Display for DeviceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked: String = self
            .id
            .to_checked_string()
            .chars()
            .filter(|c| *c != '-')
            .collect();
        write!(
            f,
            "{URI_SCHEME}:{checked}?{FINGERPRINT_PARAM}={}",
            self.fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> DeviceUri {
        DeviceUri::new(
            "1C:C3:16:AB:CD:EF".parse().unwrap(),
            KeyFingerprint::from_bytes([0xAB; 16]),
        )
    }

    #[test]
    fn round_trip_and_forward_compatibility() {
        let uri = example();
        let text = uri.to_string();
        assert!(text.starts_with("sightwire:1CC316ABCDEF"));
        assert_eq!(text.parse::<DeviceUri>(), Ok(uri));
        let extended = format!("{text}&v=2&future=x%20y#label");
        assert_eq!(extended.parse::<DeviceUri>(), Ok(uri));
        let reordered = format!("SIGHTWIRE:1c:c3:16:ab:cd:ef?x=1&FP={}", uri.fingerprint());
        assert_eq!(reordered.parse::<DeviceUri>(), Ok(uri));
    }

    #[test]
    fn pasted_uris_keep_their_meaning() {
        let uri = example();
        let pasted = format!("\u{FEFF}\u{200E} {uri}\u{200B}\u{3000}\n");
        assert!(DeviceUri::has_scheme(&pasted));
        assert_eq!(pasted.parse::<DeviceUri>(), Ok(uri));
        // The ID part is read like a typed ID.
        let typed = format!(
            "sightwire:１ＣＣ３－１６ＡＢ－ＣＤＥＦ?fp={}",
            uri.fingerprint()
        );
        assert_eq!(typed.parse::<DeviceUri>(), Ok(uri));
        // Invisible characters inside the fingerprint are not removed: it comes from a QR
        // code, never from a keyboard.
        let broken = text_with_fp(&format!("\u{200B}{}", uri.fingerprint()));
        assert!(matches!(
            broken.parse::<DeviceUri>(),
            Err(UriError::InvalidFingerprint(_))
        ));
        assert!(!DeviceUri::has_scheme("1C:C3:16:AB:CD:EF"));
        assert!(!DeviceUri::has_scheme("\u{200B}sightwire"));
        assert!(!DeviceUri::has_scheme("sightwir"));
        assert!(DeviceUri::has_scheme("SightWire:"));
        // Leading blanks are looked at only up to the URI limit.
        let far = format!("{}sightwire:", " ".repeat(MAX_URI_LEN + 1));
        assert!(!DeviceUri::has_scheme(&far));
        let near = format!("{}sightwire:", " ".repeat(MAX_URI_LEN));
        assert!(DeviceUri::has_scheme(&near));
    }

    fn text_with_fp(fp: &str) -> String {
        format!("sightwire:1CC316ABCDEFBC?fp={fp}")
    }

    #[test]
    fn malformed_uris_are_refused() {
        let fp = example().fingerprint().to_string();
        let cases = [
            (format!("http:1CC316ABCDEF?fp={fp}"), UriError::WrongScheme),
            ("1CC316ABCDEF".to_string(), UriError::WrongScheme),
            (
                "sightwire:1CC316ABCDEF".to_string(),
                UriError::MissingFingerprint,
            ),
            (
                format!("sightwire:1CC316ABCDEF?fp={fp}&fp={fp}"),
                UriError::DuplicateParameter { name: "fp" },
            ),
            (
                format!("sightwire:1CC316ABCDEF?fp={fp}&&"),
                UriError::MalformedParameter { index: 2 },
            ),
            (
                format!("sightwire:1CC316ABCDEF?=x&fp={fp}"),
                UriError::MalformedParameter { index: 1 },
            ),
            (
                "sightwire:1CC316ABCDEF?fp=00".to_string(),
                UriError::InvalidFingerprint(FingerprintError::WrongLength { len: 2 }),
            ),
            (
                format!("sightwire:0000.0000.0000?fp={fp}"),
                UriError::InvalidId(ParseError::AllZeros),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<DeviceUri>(), Err(expected), "{input}");
        }
    }

    #[test]
    fn length_limit() {
        let base = example().to_string();
        let pad = MAX_URI_LEN - base.len() - 3;
        let at_limit = format!("{base}&x={}", "a".repeat(pad));
        assert_eq!(at_limit.len(), MAX_URI_LEN);
        assert_eq!(at_limit.parse::<DeviceUri>(), Ok(example()));
        let over = format!("{at_limit}a");
        assert_eq!(
            over.parse::<DeviceUri>(),
            Err(UriError::TooLong {
                len: MAX_URI_LEN + 1,
                limit: MAX_URI_LEN
            })
        );
    }

    #[cfg(feature = "qr")]
    #[test]
    fn qr_renders_in_a_terminal() {
        let art = example().to_qr_terminal().unwrap();
        assert!(art.lines().count() > 10);
    }
}
