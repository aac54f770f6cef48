//! What the kernel says about our sockets: per-socket receive drops (`/proc/net/udp`,
//! last column) and the socket buffer sysctls. Linux only; elsewhere every figure is
//! `None` and the tables say "n/a".

use std::net::SocketAddr;
use std::time::Duration;

/// Datagrams the kernel dropped on the UDP socket bound to `addr` because its receive
/// buffer was full (or its memory accounting refused them), since the socket was opened.
pub fn socket_drops(addr: SocketAddr) -> Option<u64> {
    let file = if addr.is_ipv4() {
        "/proc/net/udp"
    } else {
        "/proc/net/udp6"
    };
    let table = std::fs::read_to_string(file).ok()?;
    drops_in_table(&table, addr.port())
}

/// The drop counter of the socket bound to local `port` in a `/proc/net/udp` listing.
fn drops_in_table(table: &str, port: u16) -> Option<u64> {
    let wanted = format!("{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let (_, local_port) = local.rsplit_once(':')?;
        if local_port != wanted {
            return None;
        }
        line.split_whitespace().last()?.parse().ok()
    })
}

/// A `net.core` sysctl (for example `rmem_max`), if readable.
pub fn net_core(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU time a process used, in user space (framing, crypto, the runtime) and in the
/// kernel (system calls: sending and receiving datagrams).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// What was used since `before`.
    pub fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }
}

/// CPU time this process has used so far (Linux reports it in `USER_HZ` = 100 ticks per
/// second in `/proc`).
pub fn process_cpu() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_in_stat(&stat)
}

/// CPU time process `pid` (a child still running) has used so far.
pub fn process_cpu_of(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_in_stat(&stat)
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    cpu_in_stat(&stat)
}

/// User and system time from a `/proc/<pid>/stat` line.
fn cpu_in_stat(stat: &str) -> Option<CpuTimes> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(CpuTimes {
        user: Duration::from_millis(utime * 10),
        system: Duration::from_millis(stime * 10),
    })
}

/// The one-minute load average (other work on the machine shows here).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `Some(n)` as `n`, `None` as `n/a`.
pub fn or_na(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  105: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 91 2 0000000000000000 0
  230: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 92 2 0000000000000000 1234
";

    #[test]
    fn finds_the_socket_by_port() {
        assert_eq!(drops_in_table(TABLE, 0x1F90), Some(1234));
        assert_eq!(drops_in_table(TABLE, 0xA1B2), Some(0));
        assert_eq!(drops_in_table(TABLE, 80), None);
    }

    #[test]
    fn cpu_time_comes_after_the_command_name() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0 100";
        let cpu = cpu_in_stat(stat).expect("parses");
        assert_eq!(cpu.user, Duration::from_millis(2_500));
        assert_eq!(cpu.system, Duration::from_millis(300));
        assert_eq!(cpu.total(), Duration::from_millis(2_800));
        assert_eq!(cpu_in_stat("garbage"), None);
    }

    #[test]
    fn our_own_socket_is_listed_with_no_drops() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        if std::path::Path::new("/proc/net/udp").exists() {
            assert_eq!(socket_drops(addr), Some(0));
        }
    }
}
