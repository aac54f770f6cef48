//! Where a server is, as an operator or an application writes it: an IP socket address
//! (`198.51.100.1:3478`, `[2001:db8::1]:3478`) or a host name and port
//! (`rendezvous.example.com:3478`, `kamera.bücher.example:3478`).
//!
//! Parsing does no I/O: a name is checked and converted to its ASCII (IDNA/UTS 46,
//! punycode) form here; resolving it is the driver's job. The rules are in
//! `spec/endpoint.md` §"Server addresses".
//!
//! A name is no weaker than an address: the server is authenticated by the static key the
//! client pins, not by where it was found, so a look-alike or spoofed name cannot
//! impersonate it.
//!
//! ```
//! use sightwire_signal::server_addr::{ServerAddr, ServerAddrError};
//!
//! let name: ServerAddr = "Rendezvous.Example.com:3478".parse()?;
//! assert_eq!(name.to_string(), "rendezvous.example.com:3478");
//! let ip: ServerAddr = "[2001:db8::1]:3478".parse()?;
//! assert!(ip.socket_addr().is_some());
//! assert_eq!("2001:db8::1:3478".parse::<ServerAddr>(), Err(ServerAddrError::UnbracketedIpv6));
//! # Ok::<(), ServerAddrError>(())
//! ```

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Longest input accepted, in bytes (before anything else is looked at): a DNS name is at
/// most 253 characters, but a Unicode name may take several bytes per character.
pub const MAX_SERVER_ADDR_INPUT: usize = 1024;
/// Longest host name, in ASCII characters without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A server's address: a socket address, or a host name to resolve and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "an IP address or a host name: the two forms a server address has"
)]
pub enum ServerAddr {
    /// An IP address and port: used as is.
    Ip(SocketAddr),
    /// A host name and port: resolved by the driver.
    Name(HostPort),
}

/// A checked host name (ASCII, lower case, punycode for international names) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Box<str>,
    port: u16,
}

impl HostPort {
    /// The host name in its ASCII form (what is looked up).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl ServerAddr {
    /// The socket address, if this is one (no resolution needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ServerAddr::Ip(address) => Some(*address),
            ServerAddr::Name(_) => None,
        }
    }

    /// The host name and port, if this is a name.
    pub fn name(&self) -> Option<&HostPort> {
        match self {
            ServerAddr::Ip(_) => None,
            ServerAddr::Name(name) => Some(name),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Ip(address) => address.port(),
            ServerAddr::Name(name) => name.port,
        }
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(address: SocketAddr) -> Self {
        ServerAddr::Ip(address)
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(address) => address.fmt(f),
            ServerAddr::Name(name) => name.fmt(f),
        }
    }
}

/// Why a server address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerAddrError {
    /// Nothing was given.
    #[error("empty server address")]
    Empty,
    /// The input is longer than [`MAX_SERVER_ADDR_INPUT`] bytes.
    #[error("server address too long ({len} bytes, at most {limit})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// No `:port` after the host.
    #[error("no port (write host:port, or [IPv6]:port)")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("the port is not a number from 1 to 65535")]
    InvalidPort,
    /// No host before `:port`.
    #[error("no host before the port")]
    MissingHost,
    /// An IPv6 address without brackets: the port cannot be told apart.
    #[error("IPv6 addresses take brackets: [2001:db8::1]:3478")]
    UnbracketedIpv6,
    /// Inside `[...]` is not an IPv6 address (or the `]` is missing).
    #[error("not an IPv6 address inside [...]")]
    InvalidIpv6,
    /// Numeric like an IPv4 address but not a valid one (`10.0.0.256`, `10.1`, `010.0.0.1`):
    /// refused rather than handed to a resolver that might read it in octal.
    #[error("not a valid IPv4 address")]
    InvalidIpv4,
    /// A character no host name may contain.
    #[error("{ch:?} (character {position}) cannot appear in a host name")]
    InvalidCharacter {
        /// The character.
        ch: char,
        /// Its position in the host, counted in characters from 0.
        position: usize,
    },
    /// An international name that IDNA (UTS 46) refuses: disallowed characters, bad
    /// punycode in an `xn--` label, mixed directions...
    #[error("not a valid international domain name")]
    InvalidIdn,
    /// Two dots in a row, or a leading dot.
    #[error("empty label in the host name")]
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`] (after conversion to ASCII).
    #[error("a host name label is {len} characters long (at most {limit})")]
    LabelTooLong {
        /// The label's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label starts or ends with a hyphen.
    #[error("a host name label starts or ends with '-'")]
    HyphenAtLabelEdge,
    /// The name is longer than [`MAX_HOST_LEN`] (after conversion to ASCII).
    #[error("the host name is {len} characters long (at most {limit})")]
    HostTooLong {
        /// The name's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl FromStr for ServerAddr {
    type Err = ServerAddrError;

    /// `a.b.c.d:port`, `[v6]:port` or `host:port`; surrounding whitespace is ignored.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Bound the work before looking at anything.
        if input.len() > MAX_SERVER_ADDR_INPUT {
            return Err(ServerAddrError::TooLong {
                len: input.len(),
                limit: MAX_SERVER_ADDR_INPUT,
            });
        }
        let input = input.trim();
        if input.is_empty() {
            return Err(ServerAddrError::Empty);
        }
        if let Ok(address) = input.parse::<SocketAddr>() {
            if address.port() == 0 {
                return Err(ServerAddrError::InvalidPort);
            }
            return Ok(ServerAddr::Ip(address));
        }
        if let Some(rest) = input.strip_prefix('[') {
            // Valid `[v6]:port` parsed above (unless the port or the address is bad).
            let (inside, after) = rest.split_once(']').ok_or(ServerAddrError::InvalidIpv6)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| ServerAddrError::InvalidIpv6)?;
            let port = after
                .strip_prefix(':')
                .ok_or(ServerAddrError::MissingPort)?;
            return Ok(ServerAddr::Ip(SocketAddr::from((ip, parse_port(port)?))));
        }
        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(ServerAddrError::MissingPort);
        };
        // `2001:db8::1:3478`: say what was meant (a URL falls through to `InvalidCharacter`).
        if host.contains(':')
            && host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(ServerAddrError::UnbracketedIpv6);
        }
        let port = parse_port(port)?;
        let host = parse_host(host)?;
        Ok(ServerAddr::Name(HostPort { host, port }))
    }
}

impl TryFrom<&str> for ServerAddr {
    type Error = ServerAddrError;

    fn try_from(input: &str) -> Result<Self, Self::Error> {
        input.parse()
    }
}

fn parse_port(text: &str) -> Result<u16, ServerAddrError> {
    // Digits only: `u16::from_str` would also take a `+`.
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ServerAddrError::InvalidPort);
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ServerAddrError::InvalidPort),
    }
}

fn parse_host(host: &str) -> Result<Box<str>, ServerAddrError> {
    if host.is_empty() {
        return Err(ServerAddrError::MissingHost);
    }
    // ASCII that no name may hold is named precisely; the rest is IDNA's to judge.
    for (position, ch) in host.chars().enumerate() {
        if ch.is_ascii() && !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '.') {
            return Err(ServerAddrError::InvalidCharacter { ch, position });
        }
    }
    // UTS 46 maps (case, full-width forms, ideographic dots), checks and punycodes.
    let ascii = idna::domain_to_ascii_cow(host.as_bytes(), idna::AsciiDenyList::STD3)
        .map_err(|_| ServerAddrError::InvalidIdn)?;
    // A trailing dot (a fully qualified name) is kept for the resolver, not counted.
    let bare = ascii.strip_suffix('.').unwrap_or(&ascii);
    if bare.is_empty() {
        return Err(ServerAddrError::EmptyLabel);
    }
    let mut last = "";
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(ServerAddrError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(ServerAddrError::LabelTooLong {
                len: label.len(),
                limit: MAX_LABEL_LEN,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(ServerAddrError::HyphenAtLabelEdge);
        }
        last = label;
    }
    if bare.len() > MAX_HOST_LEN {
        return Err(ServerAddrError::HostTooLong {
            len: bare.len(),
            limit: MAX_HOST_LEN,
        });
    }
    // A numeric last label makes it an IPv4 attempt (as URLs read it), and a valid one
    // parsed as a socket address already.
    if last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ServerAddrError::InvalidIpv4);
    }
    Ok(ascii.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(host: &str, port: u16) -> ServerAddr {
        ServerAddr::Name(HostPort {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn valid_forms() {
        let ok = |text: &str| text.parse::<ServerAddr>().unwrap();
        assert_eq!(
            ok("198.51.100.1:3478"),
            ServerAddr::Ip("198.51.100.1:3478".parse().unwrap())
        );
        assert_eq!(
            ok(" [2001:db8::1]:443 "),
            ServerAddr::Ip("[2001:db8::1]:443".parse().unwrap())
        );
        assert_eq!(ok("localhost:1"), name("localhost", 1));
        assert_eq!(
            ok("Rendezvous.EXAMPLE.com:65535"),
            name("rendezvous.example.com", 65535)
        );
        // Fully qualified: the dot stays for the resolver.
        assert_eq!(ok("example.com.:80"), name("example.com.", 80));
        assert_eq!(ok("a-b.c9:80"), name("a-b.c9", 80));
        // International names become punycode; full-width forms and ideographic dots
        // (what a phone keyboard produces) are mapped.
        assert_eq!(ok("bücher.example:80"), name("xn--bcher-kva.example", 80));
        assert_eq!(ok("ｅｘａｍｐｌｅ。com:80"), name("example.com", 80));
        assert_eq!(
            ok("xn--bcher-kva.example:80"),
            name("xn--bcher-kva.example", 80)
        );
        // Longest label and longest name.
        let label = "a".repeat(MAX_LABEL_LEN);
        assert!(ok(&format!("{label}.com:1")).name().is_some());
        let long = format!("{0}.{0}.{0}.{1}", label, "b".repeat(61));
        assert_eq!(long.len(), MAX_HOST_LEN);
        assert!(ok(&format!("{long}:1")).name().is_some());
        assert!(ok(&format!("{long}.:1")).name().is_some());
    }

    #[test]
    fn invalid_forms_say_what_is_wrong() {
        use ServerAddrError::*;
        let err = |text: &str| text.parse::<ServerAddr>().unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err("  "), Empty);
        assert_eq!(err("example.com"), MissingPort);
        assert_eq!(err("198.51.100.1"), MissingPort);
        assert_eq!(err("[2001:db8::1]"), MissingPort);
        assert_eq!(err("example.com:"), InvalidPort);
        assert_eq!(err("example.com:0"), InvalidPort);
        assert_eq!(err("198.51.100.1:0"), InvalidPort);
        assert_eq!(err("example.com:65536"), InvalidPort);
        assert_eq!(err("example.com:+80"), InvalidPort);
        assert_eq!(err("example.com:http"), InvalidPort);
        assert_eq!(err(":80"), MissingHost);
        assert_eq!(err("2001:db8::1:3478"), UnbracketedIpv6);
        assert_eq!(err("[2001:db8::1:3478"), InvalidIpv6);
        assert_eq!(err("[example.com]:80"), InvalidIpv6);
        assert_eq!(err("10.0.0.256:80"), InvalidIpv4);
        assert_eq!(err("10.1:80"), InvalidIpv4);
        assert_eq!(err("010.0.0.1:80"), InvalidIpv4);
        assert_eq!(err("host.0x7f:80"), InvalidIpv4);
        assert_eq!(
            err("exa_mple.com:80"),
            InvalidCharacter {
                ch: '_',
                position: 3
            }
        );
        assert_eq!(
            err("user@example.com:80"),
            InvalidCharacter {
                ch: '@',
                position: 4
            }
        );
        assert_eq!(
            err("http://example.com:80"),
            InvalidCharacter {
                ch: ':',
                position: 4
            }
        );
        assert_eq!(
            err("exa mple.com:80"),
            InvalidCharacter {
                ch: ' ',
                position: 3
            }
        );
        assert_eq!(err("a..b:80"), EmptyLabel);
        assert_eq!(err(".a:80"), EmptyLabel);
        assert_eq!(err(".:80"), EmptyLabel);
        assert_eq!(err("-a.com:80"), HyphenAtLabelEdge);
        assert_eq!(err("a-.com:80"), HyphenAtLabelEdge);
        // Bad punycode, and a character UTS 46 disallows.
        assert_eq!(err("xn--a-ecp.example:80"), InvalidIdn);
        assert_eq!(err("a\u{2488}b.com:80"), InvalidIdn);
        let label = "a".repeat(MAX_LABEL_LEN + 1);
        assert_eq!(
            err(&format!("{label}.com:1")),
            LabelTooLong { len: 64, limit: 63 }
        );
        let long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
        assert_eq!(
            err(&format!("{long}:1")),
            HostTooLong {
                len: 254,
                limit: 253
            }
        );
        // Limits apply to the ASCII form: 30 characters of Unicode can exceed a label.
        assert!(matches!(
            err(&format!("{}.example:80", "ü".repeat(60))),
            LabelTooLong { limit: 63, .. }
        ));
        // Within the byte limit, over the name limit once converted.
        let labels = vec!["ü".repeat(20); 12].join(".");
        assert!(labels.len() <= MAX_SERVER_ADDR_INPUT);
        assert!(matches!(
            err(&format!("{labels}:80")),
            HostTooLong { limit: 253, .. }
        ));
        let huge = "a".repeat(MAX_SERVER_ADDR_INPUT + 1);
        assert_eq!(
            err(&huge),
            TooLong {
                len: MAX_SERVER_ADDR_INPUT + 1,
                limit: MAX_SERVER_ADDR_INPUT
            }
        );
    }

    proptest! {
        // Hostile input: never a panic, and anything accepted is bounded and reads back
        // as itself.
        #[test]
        fn any_input_is_refused_or_round_trips(input in "\\PC{0,300}") {
            if let Ok(address) = input.parse::<ServerAddr>() {
                let text = address.to_string();
                prop_assert_eq!(text.parse::<ServerAddr>(), Ok(address.clone()));
                if let ServerAddr::Name(name) = &address {
                    prop_assert!(name.host().len() <= MAX_HOST_LEN + 1);
                    prop_assert!(name.host().is_ascii());
                }
            }
        }

        // Close to valid (letters, Unicode, dots of every width, hyphens): the same, with
        // more of the accepting paths reached.
        #[test]
        fn near_names_are_refused_or_round_trip(input in "[a-zA-Z0-9üß日本ＡＢ.。．\\-_]{1,300}:[0-9]{1,6}") {
            if let Ok(address) = input.parse::<ServerAddr>() {
                prop_assert_eq!(address.to_string().parse::<ServerAddr>(), Ok(address.clone()));
                // (`1.2.3.4:80` is an address, not a name.)
                if let Some(name) = address.name() {
                    prop_assert!(name.host().is_ascii() && name.host().len() <= MAX_HOST_LEN + 1);
                }
            }
        }

        #[test]
        fn socket_addresses_parse_as_themselves(address in any::<SocketAddr>()) {
            prop_assume!(address.port() != 0);
            // Scope ids and flow info do not survive text; compare what does.
            let parsed = address.to_string().parse::<ServerAddr>().unwrap();
            let parsed = parsed.socket_addr().unwrap();
            prop_assert_eq!(parsed.ip(), address.ip());
            prop_assert_eq!(parsed.port(), address.port());
        }

        #[test]
        fn ldh_names_parse(labels in prop::collection::vec("[a-z][a-z0-9-]{0,20}[a-z]", 1..5), port in 1u16..) {
            prop_assume!(!labels.iter().any(|l| l.starts_with("xn--")));
            let host = labels.join(".");
            let parsed = format!("{host}:{port}").parse::<ServerAddr>().unwrap();
            prop_assert_eq!(parsed, name(&host, port));
        }
    }
}
