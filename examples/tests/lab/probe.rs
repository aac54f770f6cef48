//! `lab-udp` driven from a test: the instrument of the profile self-tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::Run;
use super::netns::Netns;
use super::process::{Line, Process};

/// How long a datagram that should arrive may take (two 25 ms links and back, plus
/// scheduling slack on a loaded 2-core machine).
pub(crate) const ARRIVAL: Duration = Duration::from_secs(3);

/// How long the self-tests listen before concluding a datagram was not delivered
/// (ten times the lab's round trip).
pub(crate) const SILENCE: Duration = Duration::from_millis(1000);

/// One UDP socket in a namespace.
#[derive(Debug)]
pub(crate) struct Probe {
    process: Process,
    /// The bound address.
    pub(crate) local: SocketAddr,
}

impl Probe {
    /// `lab-udp --bind <bind>` in `netns`.
    pub(crate) fn start(
        run: &Run,
        netns: &Netns,
        label: &str,
        bind: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::spawn(run, netns, label, bind, false)
    }

    /// A reflector: answers every datagram with `seen <source>`.
    pub(crate) fn reflector(
        run: &Run,
        netns: &Netns,
        label: &str,
        bind: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::spawn(run, netns, label, bind, true)
    }

    fn spawn(
        run: &Run,
        netns: &Netns,
        label: &str,
        bind: SocketAddr,
        echo: bool,
    ) -> anyhow::Result<Self> {
        let mut args = vec!["--bind".to_owned(), bind.to_string()];
        if echo {
            args.push("--echo".into());
        }
        let mut process = Process::start(
            run,
            netns,
            label,
            Path::new(env!("CARGO_BIN_EXE_lab-udp")),
            &args,
        )?;
        let bound = process.wait_event("bound", ARRIVAL, |_| true)?;
        let local = bound.str("local").context("bound")?.parse()?;
        Ok(Self { process, local })
    }

    /// Sends `text` to `to`.
    pub(crate) fn send(&mut self, to: SocketAddr, text: &str) -> anyhow::Result<()> {
        self.process.mark()?;
        self.process.send_line(&format!("send {to} {text}"))?;
        self.process
            .wait_event("sent", ARRIVAL, |line| line.str("payload") == Some(text))
            .map(drop)
    }

    /// Sets the IP TTL of later datagrams.
    pub(crate) fn set_ttl(&mut self, ttl: u32) -> anyhow::Result<()> {
        self.process.send_line(&format!("ttl {ttl}"))?;
        self.process.wait_event("ttl", ARRIVAL, |_| true).map(drop)
    }

    /// Sends `count` datagrams `<prefix>-<i>` to `to`.
    pub(crate) fn burst(&mut self, to: SocketAddr, count: u32, prefix: &str) -> anyhow::Result<()> {
        self.process.mark()?;
        let start = self.process.cursor();
        self.process
            .send_line(&format!("burst {to} {count} {prefix}"))?;
        let last = format!("{prefix}-{}", count - 1);
        self.process
            .wait_event("sent", Duration::from_secs(60), |line| {
                line.str("payload") == Some(last.as_str())
            })?;
        // Replies that came while the burst went out are still to be counted.
        self.process.set_cursor(start);
        Ok(())
    }

    /// Forgets every output line so far: later waits and collections look only at what
    /// comes after (see [`Self::blast`]).
    pub(crate) fn mark(&mut self) -> anyhow::Result<()> {
        self.process.mark()
    }

    /// Starts sending `size`-byte datagrams `<prefix>-<i>` to `to` at `rate_bps` bits of
    /// payload per second for `length`, and returns at once (so two probes can blast at
    /// the same time). [`Self::wait_blasted`] waits for the end. Call [`Self::mark`]
    /// first on the receiving probe, so [`Self::blast_arrivals`] sees the whole blast.
    pub(crate) fn blast(
        &mut self,
        to: SocketAddr,
        rate_bps: u64,
        size: usize,
        length: Duration,
        prefix: &str,
    ) -> anyhow::Result<()> {
        self.process.send_line(&format!(
            "blast {to} {rate_bps} {size} {} {prefix}",
            length.as_millis()
        ))
    }

    /// Waits for the end of this probe's blast; `length` is the blast's. Datagrams this
    /// probe received meanwhile stay visible to [`Self::blast_arrivals`].
    pub(crate) fn wait_blasted(&mut self, length: Duration) -> anyhow::Result<Blasted> {
        let start = self.process.cursor();
        let line = self
            .process
            .wait_event("blasted", length + ARRIVAL, |_| true)?;
        self.process.set_cursor(start);
        let field = |name: &str| line.u64(name).with_context(|| format!("blasted {name}"));
        Ok(Blasted {
            count: field("count")?,
            first_ms: field("first_ms")?,
            last_ms: field("last_ms")?,
        })
    }

    /// Listens for `settle`, then returns every datagram received since the last mark
    /// whose payload starts with `prefix`: (ms since the probe started, datagram size).
    pub(crate) fn blast_arrivals(
        &mut self,
        prefix: &str,
        settle: Duration,
    ) -> anyhow::Result<Vec<(u64, u64)>> {
        self.process
            .collect_for(settle, |line| {
                line.event() == Some("recv")
                    && line.str("payload").is_some_and(|p| p.starts_with(prefix))
            })?
            .iter()
            .map(|line| {
                Ok((
                    line.u64("t_ms").context("recv t_ms")?,
                    line.u64("len").context("recv len")?,
                ))
            })
            .collect()
    }

    /// Waits for a datagram with payload `text`; returns its source and when it came.
    pub(crate) fn expect(&mut self, text: &str) -> anyhow::Result<(SocketAddr, u64)> {
        let line = self
            .process
            .wait_event("recv", ARRIVAL, |line| line.str("payload") == Some(text))?;
        Ok((source(&line)?, line.u64("t_ms").unwrap_or(0)))
    }

    /// Waits for a datagram whose payload starts with `prefix`.
    pub(crate) fn expect_prefix(&mut self, prefix: &str) -> anyhow::Result<Line> {
        self.process.wait_event("recv", ARRIVAL, |line| {
            line.str("payload").is_some_and(|p| p.starts_with(prefix))
        })
    }

    /// Listens for [`SILENCE`] and returns the datagrams with payload `text` that came.
    pub(crate) fn arrivals(&mut self, text: &str) -> anyhow::Result<Vec<SocketAddr>> {
        self.process
            .collect_for(SILENCE, |line| {
                line.event() == Some("recv") && line.str("payload") == Some(text)
            })?
            .iter()
            .map(source)
            .collect()
    }

    /// Every received payload starting with `prefix` so far (after the last mark).
    pub(crate) fn count_received(
        &mut self,
        prefix: &str,
        settle: Duration,
    ) -> anyhow::Result<usize> {
        Ok(self
            .process
            .collect_for(settle, |line| {
                line.event() == Some("recv")
                    && line.str("payload").is_some_and(|p| p.starts_with(prefix))
            })?
            .len())
    }

    /// The time (ms since the probe started) of the `sent` event of `text`.
    pub(crate) fn sent_at(&mut self, text: &str) -> anyhow::Result<u64> {
        self.process
            .lines()?
            .iter()
            .rev()
            .find(|line| line.event() == Some("sent") && line.str("payload") == Some(text))
            .and_then(|line| line.u64("t_ms"))
            .context("no such sent datagram")
    }

    /// Asks a reflector what source address this socket's datagrams arrive from.
    pub(crate) fn mapping_via(
        &mut self,
        reflector: SocketAddr,
        tag: &str,
    ) -> anyhow::Result<SocketAddr> {
        self.send(reflector, tag)?;
        let line = self.process.wait_event("recv", ARRIVAL, |line| {
            line.str("from") == Some(reflector.to_string().as_str())
                && line.str("payload").is_some_and(|p| p.starts_with("seen "))
        })?;
        let seen = line
            .str("payload")
            .unwrap_or_default()
            .trim_start_matches("seen ");
        seen.parse()
            .with_context(|| format!("reflector said {seen:?}"))
    }

    /// Pid of the probe process.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// What a blast sent (its `blasted` event).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blasted {
    /// Datagrams sent.
    pub(crate) count: u64,
    /// When the first left (ms since the probe started).
    pub(crate) first_ms: u64,
    /// When the last left.
    pub(crate) last_ms: u64,
}

fn source(line: &Line) -> anyhow::Result<SocketAddr> {
    line.str("from")
        .context("recv without from")?
        .parse()
        .context("from")
}
