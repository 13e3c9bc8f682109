//! Small helpers shared by every part: durations, addresses, randomness,
//! host facts and logging.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parse a duration: `90`, `90s`, `1.5m`, `2h`, `500ms`, `1d`. A bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration; use e.g. 30, 30s, 5m, 2h or 500ms"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" | "seconds" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" | "minutes" => 60.0,
        "h" | "hr" | "hours" => 3600.0,
        "d" | "days" => 86400.0,
        other => return Err(format!("'{s}': unknown unit '{other}'; use ms, s, m, h or d")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Replace `path` atomically (a temporary file in the same directory, synced,
/// then renamed) with `bytes`, readable only as `mode` allows whatever the
/// umask: for files holding secrets or naming them.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(Error::new(ErrorKind::NotFound, format!("directory {} does not exist", dir.display())));
    }
    let name = path.file_name().ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    // A fresh, unguessable name created exclusively, never through a link:
    // in a shared directory another user cannot make us write elsewhere.
    let tmp = dir.join(format!(".{}.{}.{}.tmp", name.to_string_lossy(), std::process::id(), hex(&random_bytes(6))));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).mode(mode).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The directory `path` is in, when every user may write to it without the
/// sticky bit (anyone could replace a file there): its mode.
pub fn replaceable_by_anyone(path: &std::path::Path) -> Option<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mode = std::fs::metadata(dir).ok()?.mode();
    (mode & 0o002 != 0 && mode & 0o1000 == 0).then(|| (dir.to_path_buf(), mode & 0o7777))
}

/// Parse resources a worker offers: "GPU=2 MEM=10e9" (or comma-separated).
pub fn parse_resources(s: &str) -> Result<Vec<(String, f64)>, String> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, amount) = p.split_once('=').ok_or_else(|| format!("--resources: '{p}' is not NAME=AMOUNT"))?;
            let x: f64 = amount.parse().map_err(|_| format!("--resources: amount '{amount}' of '{name}' is not a number"))?;
            if !(x >= 0.0 && x.is_finite()) {
                return Err(format!("--resources: amount of '{name}' must be a non-negative number"));
            }
            Ok((name.to_string(), x))
        })
        .collect()
}

/// Parse a memory size: `5GB` (10^9), `5GiB` (2^30), `5000M`, `123456`
/// (bytes), a fraction of `total` (`0.5`), `auto` (`total`), or `0`/`none`
/// for no limit. Returns bytes, `None` for no limit.
pub fn parse_memory(s: &str, total: u64) -> Result<Option<u64>, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower == "0" || lower == "none" {
        return Ok(None);
    }
    if lower == "auto" {
        return Ok(Some(total));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a memory size; use e.g. 5GB, 5GiB, 5000M, 0.5 (of the node) or auto"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" if n > 0.0 && n <= 1.0 && num.contains('.') => return Ok(Some((n * total as f64) as u64)),
        "" if num.contains('.') && !num.contains(['e', 'E']) => {
            return Err(format!("'{s}': a bare number with a point is a fraction of the node's memory and must be at most 1; for a size give a unit, e.g. {s}GB or {s}GiB"))
        }
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => return Err(format!("'{s}': unknown unit '{other}'; use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)")),
    };
    let bytes = n * scale;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(format!("'{s}' is not a valid memory size"));
    }
    Ok(if bytes == 0.0 { None } else { Some(bytes as u64) })
}

/// Memory this process may use on the node: the cgroup's limit if set,
/// else the node's total memory.
pub fn node_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())))
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
    let limit = cgroup
        .and_then(|c| std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", c.trim_end_matches('/'))).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match limit {
        Some(l) if l < total || total == 0 => l,
        _ => total,
    }
}

/// Parse `tcp://host:port`, `host:port` or `[v6]:port` into a socket address.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let bare = s.strip_prefix("tcp://").unwrap_or(s);
    if let Some(rest) = s.split_once("://").filter(|(p, _)| *p != "tcp") {
        return Err(format!("address '{s}': protocol '{}' is not supported (use tcp://HOST:PORT)", rest.0));
    }
    bare.to_socket_addrs()
        .map_err(|e| format!("address '{s}' cannot be resolved ({e}); expected tcp://HOST:PORT"))?
        .next()
        .ok_or_else(|| format!("address '{s}' resolved to nothing"))
}

pub fn format_address(a: &SocketAddr) -> String {
    format!("tcp://{a}")
}

/// `n` random bytes from the kernel (getrandom(2): no file to open, so
/// a process out of descriptors still gets them).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("the kernel's random numbers (getrandom) must be available");
    buf
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The address other hosts most likely reach this one on: the source address
/// of the default route (no packet is sent), else the host name's address,
/// else loopback.
pub fn default_ip() -> IpAddr {
    if let Ok(sock) = UdpSocket::bind("0.0.0.0:0") {
        if sock.connect("192.0.2.1:9").is_ok() {
            if let Ok(a) = sock.local_addr() {
                if !a.ip().is_unspecified() {
                    return a.ip();
                }
            }
        }
    }
    if let Ok(mut addrs) = (hostname().as_str(), 0).to_socket_addrs() {
        if let Some(a) = addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()) {
            return a.ip();
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// "name (uid N)" for a user id, or "uid N" where the name is unknown.
pub fn user_name(uid: u32) -> String {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r writes into `pw` and `buf` only.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr() as *mut libc::c_char, buf.len(), &mut out) };
    if rc == 0 && !out.is_null() {
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned();
        return format!("user {name} (uid {uid})");
    }
    format!("uid {uid}")
}

/// Unix time in microseconds.
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Unix seconds as an RFC 3339 UTC time, e.g. `2026-12-03T15:04:05Z`.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by
    // 400-year eras of 146,097 days counted from 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, as [`rfc3339`].
pub fn rfc3339_now() -> String {
    rfc3339(unix_time() as u64)
}

/// Make glibc give large freed blocks back to the system at once, so that a
/// worker's resident memory follows the values it holds and its memory
/// limit acts on what it really uses. By default glibc raises its mmap
/// threshold each time a large mapped block is freed (up to 32 MiB), after
/// which values of a few MiB come from the heap, and freed ones stay
/// resident, fragmented. A fixed threshold keeps every block of 1 MiB or
/// more in its own mapping, unmapped when freed (and grown in place with
/// `mremap`); message batches of a few hundred KiB stay in the heap, where
/// their memory is reused without new page faults. Dask asks the same of glibc for its workers with
/// `MALLOC_TRIM_THRESHOLD_`. Process-wide; harmless to call twice.
pub fn release_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Resident set size of this process in bytes (0 if unknown).
pub fn rss_bytes() -> u64 {
    statm_rss("/proc/self/statm")
}

/// CPU time (user + system) of this process and its waited-for children, microseconds.
pub fn cpu_micros() -> u64 {
    let usage = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut r) } != 0 {
            return 0;
        }
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(r.ru_utime) + us(r.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN)
}

/// CPU time (user + system) of process `pid` so far, microseconds (0 if gone).
pub fn cpu_micros_of(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // After the command name (in parentheses, which may hold anything):
    // state, ppid, ... utime and stime are the 12th and 13th fields.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000 / hz
}

/// Resident bytes of process `pid` that are its own (anonymous), 0 if
/// unknown or gone: without the pages of files and shared memory it maps,
/// such as the worker's shared values (counted once, by the worker) and
/// libraries.
pub fn private_rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().skip(1).map(|v| v.parse::<u64>().ok());
            Some(f.next()??.saturating_sub(f.next()??) * 4096)
        })
        .unwrap_or(0)
}

fn statm_rss(path: &str) -> u64 {
    let page = 4096u64;
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * page)
        .unwrap_or(0)
}

/// Wait until `fd` is readable (or at its end, or in error), at most
/// `timeout`; false when the time ran out.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return n > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// The name of a signal number (`SIGSEGV`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Human-readable bytes: `1.5 MiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

// ---- logging ---------------------------------------------------------------

/// Log through `tracing`, at level 0 (error), 1 (warn), 2 (info) or 3
/// (debug), with target `taskfarm::COMPONENT`. The library only emits events;
/// whoever embeds it installs a subscriber (the `taskfarm` binary prints
/// them to stderr, filtered by `TASKFARM_LOG`).
#[macro_export]
macro_rules! log_at {
    ($level:expr, $comp:literal, $($arg:tt)*) => {
        match $level {
            0 => $crate::__tracing::error!(target: concat!("taskfarm::", $comp), $($arg)*),
            1 => $crate::__tracing::warn!(target: concat!("taskfarm::", $comp), $($arg)*),
            2 => $crate::__tracing::info!(target: concat!("taskfarm::", $comp), $($arg)*),
            _ => $crate::__tracing::debug!(target: concat!("taskfarm::", $comp), $($arg)*),
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_of_this_process() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(super::cpu_micros() > 0);
        assert!(super::cpu_micros_of(std::process::id()) > 0);
        assert_eq!(super::cpu_micros_of(u32::MAX), 0);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_310_245), "2026-12-03T15:04:05Z");
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5 weeks").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn memory_sizes() {
        let g = 1u64 << 30;
        assert_eq!(parse_memory("5GB", g).unwrap(), Some(5_000_000_000));
        assert_eq!(parse_memory("5GiB", g).unwrap(), Some(5 * g));
        assert_eq!(parse_memory("5000M", g).unwrap(), Some(5_000_000_000));
        assert_eq!(parse_memory("0.5", 8 * g).unwrap(), Some(4 * g));
        assert_eq!(parse_memory("auto", 8 * g).unwrap(), Some(8 * g));
        assert_eq!(parse_memory("0", g).unwrap(), None);
        assert_eq!(parse_memory("123456", g).unwrap(), Some(123456));
        assert!(parse_memory("5 parsecs", g).unwrap_err().contains("unknown unit"));
        assert!(parse_memory("lots", g).is_err());
        assert!(parse_memory("1.5", g).unwrap_err().contains("must be at most 1; for a size give a unit, e.g. 1.5GB"));
        assert_eq!(parse_memory("2e9", g).unwrap(), Some(2_000_000_000), "scientific notation is bytes");
        assert!(node_memory() > 0);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("tcp://127.0.0.1:5").unwrap(), "127.0.0.1:5".parse().unwrap());
        assert_eq!(parse_address("127.0.0.1:5").unwrap(), "127.0.0.1:5".parse().unwrap());
        assert!(parse_address("ucx://1.2.3.4:5").unwrap_err().contains("not supported"));
        assert!(parse_address("nohost").is_err());
    }

    #[test]
    fn hex_roundtrip() {
        let b = random_bytes(16);
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
