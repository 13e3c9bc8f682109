//! Facts about the node a process runs on, and what it does with them:
//! network interfaces, node-local scratch directories, and core binding.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

// ---- network interfaces ----------------------------------------------------------

/// Every (interface name, address) pair of this host, IPv4 and IPv6.
pub fn interfaces() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a valid node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
            // SAFETY: sa_family tells which sockaddr type ifa_addr points to.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push((name, IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push((name, IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The address of interface `name` (its first IPv4 address, else its first
/// IPv6 one). An unknown name, or one without an address, is an error that
/// lists the interfaces that do exist.
pub fn interface_address(name: &str) -> Result<IpAddr, String> {
    let all = interfaces().map_err(|e| format!("cannot list network interfaces: {e}"))?;
    let mine: Vec<IpAddr> = all.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect();
    if let Some(a) = mine.iter().find(|a| a.is_ipv4()).or(mine.first()) {
        return Ok(*a);
    }
    let mut listing: Vec<String> = Vec::new();
    for (n, a) in &all {
        match listing.iter_mut().find(|l| l.starts_with(&format!("{n} "))) {
            Some(l) => l.push_str(&format!(", {a}")),
            None => listing.push(format!("{n} ({a}")),
        }
    }
    let listing: Vec<String> = listing.into_iter().map(|l| l + ")").collect();
    let known = !all.is_empty() && std::fs::metadata(format!("/sys/class/net/{name}")).is_ok();
    Err(format!(
        "{} '{name}'; interfaces with addresses on this host: {} (names often differ between login and compute nodes: check `ip addr` on a compute node)",
        if known { "no address on interface" } else { "no network interface named" },
        if listing.is_empty() { "none".to_string() } else { listing.join(", ") }
    ))
}

// ---- local scratch ---------------------------------------------------------------

/// Where worker scratch directories go: the flag, else `$TMPDIR`, else the
/// batch system's job scratch, else `/tmp`.
pub fn choose_local_directory(flag: Option<&Path>) -> PathBuf {
    // An empty flag (e.g. a job script's "$TMPDIR" where it is unset) means the default.
    if let Some(p) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return p.to_path_buf();
    }
    for var in ["TMPDIR", "SLURM_TMPDIR", "LSF_TMPDIR", "PBS_TMPDIR"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            if Path::new(&v).is_dir() {
                return PathBuf::from(v);
            }
        }
    }
    PathBuf::from("/tmp")
}

/// The name of the network file system `path` is on, if it is on one.
pub fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into a zeroed struct of the right type; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    filesystem_name(st.f_type as i64)
}

/// Network and parallel file systems by their statfs magic numbers.
pub fn filesystem_name(magic: i64) -> Option<&'static str> {
    match magic as u32 {
        0x6969 => Some("NFS"),
        0x0BD0_0BD0 => Some("Lustre"),
        0x4750_4653 => Some("GPFS"),
        0x1983_0326 => Some("BeeGFS"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x00C3_6400 => Some("CephFS"),
        0x6B41_4653 => Some("AFS"),
        0x5346_414F => Some("OpenAFS"),
        _ => None,
    }
}

/// A worker's own scratch directory, locked while it lives and removed
/// when dropped.
pub struct ScratchDir {
    path: PathBuf,
    _lock: File,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const SCRATCH_PREFIX: &str = "taskfarm-worker-";
const LOCK_NAME: &str = ".lock";

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a valid, open file descriptor.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Remove scratch directories left by workers that were killed: a live
/// worker holds the lock on its directory's lock file. Returns what was removed.
pub fn clean_stale_scratch(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let Ok(lock) = File::open(dir.join(LOCK_NAME)) else { continue };
        if try_lock(&lock) && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Create this worker's scratch directory under `parent` (after cleaning
/// stale ones), warning loudly when `parent` is on a network file system.
pub fn create_scratch(parent: &Path, name: &str) -> io::Result<ScratchDir> {
    std::fs::create_dir_all(parent).map_err(|e| io::Error::new(e.kind(), format!("cannot create local directory {}: {e}", parent.display())))?;
    if let Some(fs) = network_filesystem(parent) {
        crate::log_at!(
            1,
            "worker",
            "local directory {} is on {fs}, a network file system: scratch and spill files from many workers there slow the \
             file system down for every user of the machine and are slow for you. Use node-local disk: --local-directory \
             $TMPDIR (or your site's local scratch, e.g. /tmp or /local)",
            parent.display()
        );
    }
    for old in clean_stale_scratch(parent) {
        crate::log_at!(2, "worker", "removed stale scratch directory {} left by a worker that was killed", old.display());
    }
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect();
    let unique = format!("{safe}-{}-{}", std::process::id(), crate::util::hex(&crate::util::random_bytes(3)));
    let path = parent.join(format!("{SCRATCH_PREFIX}{unique}"));
    // Built under a name the stale-directory cleaning of other workers
    // starting at the same time ignores, locked, and only then renamed:
    // a directory with the prefix is always either locked or stale.
    let building = parent.join(format!(".{SCRATCH_PREFIX}new-{unique}"));
    std::fs::create_dir(&building).map_err(|e| io::Error::new(e.kind(), format!("cannot create worker directory {}: {e}", building.display())))?;
    let lock = File::create(building.join(LOCK_NAME))?;
    if !try_lock(&lock) {
        let _ = std::fs::remove_dir_all(&building);
        return Err(io::Error::other(format!("cannot lock {}", building.join(LOCK_NAME).display())));
    }
    if let Err(e) = std::fs::rename(&building, &path) {
        let _ = std::fs::remove_dir_all(&building);
        return Err(io::Error::new(e.kind(), format!("cannot create worker directory {}: {e}", path.display())));
    }
    Ok(ScratchDir { path, _lock: lock })
}

// ---- topology and binding ----------------------------------------------------

/// How worker threads are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindPolicy {
    /// A disjoint share of the cores for each process on the node.
    Cores,
    /// A share of the NUMA nodes for each process on the node.
    Numa,
    /// Leave the binding as the launcher gave it.
    None,
}

impl std::fmt::Display for BindPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindPolicy::Cores => "cores",
            BindPolicy::Numa => "numa",
            BindPolicy::None => "none",
        })
    }
}

impl std::str::FromStr for BindPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cores" | "core" => Ok(BindPolicy::Cores),
            "numa" => Ok(BindPolicy::Numa),
            "none" => Ok(BindPolicy::None),
            _ => Err(format!("'{s}' is not a binding policy: use cores, numa or none")),
        }
    }
}

/// The machine as far as binding is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Processing units (OS indexes) of each core.
    pub cores: Vec<Vec<u32>>,
    /// Processing units of each NUMA node.
    pub numa: Vec<Vec<u32>>,
    /// PUs this job may use (the batch system's cpuset).
    pub allowed: Vec<u32>,
    /// Where the facts came from.
    pub source: &'static str,
}

impl Topology {
    /// Read the topology: with hwloc when built with the `hwloc` feature,
    /// else from Linux sysfs.
    pub fn detect() -> Result<Topology, String> {
        #[cfg(feature = "hwloc")]
        {
            hwloc_topology()
        }
        #[cfg(not(feature = "hwloc"))]
        {
            sysfs_topology()
        }
    }

    /// Cores with at least one allowed PU, restricted to the allowed PUs.
    fn usable_cores(&self) -> Vec<Vec<u32>> {
        self.cores.iter().map(|c| c.iter().copied().filter(|p| self.allowed.contains(p)).collect::<Vec<_>>()).filter(|c| !c.is_empty()).collect()
    }

    fn usable_numa(&self) -> Vec<Vec<u32>> {
        self.numa.iter().map(|n| n.iter().copied().filter(|p| self.allowed.contains(p)).collect::<Vec<_>>()).filter(|n| !n.is_empty()).collect()
    }

    /// The PUs for process `local_rank` of `local_size` on this node under
    /// `policy` (`None` for `BindPolicy::None`). Cores (or NUMA nodes) are
    /// split into contiguous, disjoint shares; with more processes than
    /// cores, processes share cores round-robin.
    pub fn plan(&self, policy: BindPolicy, local_rank: u32, local_size: u32) -> Option<Vec<u32>> {
        let units = match policy {
            BindPolicy::None => return None,
            BindPolicy::Cores => self.usable_cores(),
            BindPolicy::Numa => self.usable_numa(),
        };
        if units.is_empty() || local_size == 0 {
            return None;
        }
        let (n, k, r) = (units.len(), local_size as usize, (local_rank % local_size) as usize);
        let share: Vec<&Vec<u32>> = if k <= n { units[r * n / k..(r + 1) * n / k].iter().collect() } else { vec![&units[r % n]] };
        let mut pus: Vec<u32> = share.into_iter().flatten().copied().collect();
        pus.sort_unstable();
        Some(pus)
    }
}

#[cfg(feature = "hwloc")]
fn hwloc_topology() -> Result<Topology, String> {
    use hwlocality::object::types::ObjectType;
    let topo = hwlocality::Topology::new().map_err(|e| format!("hwloc could not read the topology: {e}"))?;
    let sets = |ty: ObjectType| -> Vec<Vec<u32>> {
        topo.objects_with_type(ty).filter_map(|o| o.cpuset().map(|s| s.iter_set().map(|i| usize::from(i) as u32).collect())).collect()
    };
    let cores = sets(ObjectType::Core);
    let numa = sets(ObjectType::NUMANode);
    let hw_allowed: Vec<u32> = topo.allowed_cpuset().iter_set().map(|i| usize::from(i) as u32).collect();
    Ok(Topology { cores, numa, allowed: within_affinity(hw_allowed), source: "hwloc" })
}

/// PU list syntax of sysfs and cgroups: `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 20 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

pub fn format_cpu_list(pus: &[u32]) -> String {
    let mut v = pus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// Keep only the CPUs this process may run on now: an inherited affinity mask
/// (`taskset -c 1 mpirun ...`, a launcher's binding) and a cgroup-v1 cpuset
/// (which the kernel applies to the mask) narrow what the cgroup files or
/// hwloc report. Never empty: if nothing is left, the mask wins.
fn within_affinity(allowed: Vec<u32>) -> Vec<u32> {
    match current_affinity() {
        Ok(mask) if !mask.is_empty() => {
            let both: Vec<u32> = allowed.iter().copied().filter(|p| mask.contains(p)).collect();
            if both.is_empty() {
                mask
            } else {
                both
            }
        }
        _ => allowed,
    }
}

/// The cpuset the batch system gives this job: the cgroup's effective
/// cpuset, else the online CPUs.
fn allowed_by_batch_system() -> Vec<u32> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
    let candidates = [cgroup.map(|c| format!("/sys/fs/cgroup{}/cpuset.cpus.effective", c.trim_end_matches('/'))), Some("/sys/devices/system/cpu/online".to_string())];
    for path in candidates.into_iter().flatten() {
        if let Some(list) = std::fs::read_to_string(&path).ok().and_then(|s| parse_cpu_list(&s)).filter(|l| !l.is_empty()) {
            return list;
        }
    }
    (0..std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)).collect()
}

#[cfg_attr(feature = "hwloc", allow(dead_code))]
fn sysfs_topology() -> Result<Topology, String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .ok_or("cannot read /sys/devices/system/cpu/online")?;
    let mut cores: std::collections::BTreeMap<(u32, u32), Vec<u32>> = Default::default();
    for pu in &online {
        let read = |f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{pu}/topology/{f}")).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let key = (read("physical_package_id").unwrap_or(0), read("core_id").unwrap_or(*pu));
        cores.entry(key).or_default().push(*pu);
    }
    let mut numa = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/devices/system/node") {
        let mut nodes: Vec<(u32, Vec<u32>)> = entries
            .flatten()
            .filter_map(|e| {
                let n: u32 = e.file_name().to_string_lossy().strip_prefix("node")?.parse().ok()?;
                Some((n, parse_cpu_list(&std::fs::read_to_string(e.path().join("cpulist")).ok()?)?))
            })
            .collect();
        nodes.sort();
        numa = nodes.into_iter().map(|(_, l)| l).filter(|l| !l.is_empty()).collect();
    }
    if numa.is_empty() {
        numa = vec![online.clone()];
    }
    Ok(Topology { cores: cores.into_values().collect(), numa, allowed: within_affinity(allowed_by_batch_system()), source: "Linux sysfs" })
}

/// The PUs the calling thread may run on.
pub fn current_affinity() -> io::Result<Vec<u32>> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as u32).filter(|&i| unsafe { libc::CPU_ISSET(i as usize, &set) }).collect())
}

fn cpu_set(pus: &[u32]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &p in pus {
        if (p as usize) < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(p as usize, &mut set) };
        }
    }
    set
}

/// Pin the calling thread (and the threads it starts afterwards) to `pus`.
pub fn bind_current_thread(pus: &[u32]) -> io::Result<()> {
    let set = cpu_set(pus);
    // SAFETY: valid set and size; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pin every thread of this process, including threads a library (such as
/// MPI) already started, and those started later, to `pus`.
pub fn bind_process(pus: &[u32]) -> io::Result<()> {
    bind_current_thread(pus)?;
    let set = cpu_set(pus);
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Ok(tid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() {
            // SAFETY: valid set and size; a thread that exited meanwhile just fails.
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(ncores: u32, smt: u32, numa: u32) -> Topology {
        let cores: Vec<Vec<u32>> = (0..ncores).map(|c| (0..smt).map(|t| c + t * ncores).collect()).collect();
        let per = ncores / numa;
        let numa = (0..numa).map(|n| cores[(n * per) as usize..((n + 1) * per) as usize].iter().flatten().copied().collect()).collect();
        Topology { cores, numa, allowed: (0..ncores * smt).collect(), source: "test" }
    }

    #[test]
    fn core_shares_are_disjoint_and_cover_the_node() {
        let t = topo(8, 2, 2);
        for k in 1..=8 {
            let shares: Vec<Vec<u32>> = (0..k).map(|r| t.plan(BindPolicy::Cores, r, k).unwrap()).collect();
            let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            let before = all.len();
            all.dedup();
            assert_eq!(before, all.len(), "k={k}: shares overlap");
            assert_eq!(all, (0..16).collect::<Vec<_>>(), "k={k}: shares cover every PU");
        }
        // hyperthread siblings stay together
        assert_eq!(t.plan(BindPolicy::Cores, 1, 8).unwrap(), vec![1, 9]);
    }

    #[test]
    fn more_processes_than_cores_share_round_robin() {
        let t = topo(2, 1, 1);
        let shares: Vec<Vec<u32>> = (0..3).map(|r| t.plan(BindPolicy::Cores, r, 3).unwrap()).collect();
        assert_eq!(shares, vec![vec![0], vec![1], vec![0]]);
    }

    #[test]
    fn numa_and_none_and_restricted_cpusets() {
        let t = topo(8, 1, 2);
        assert_eq!(t.plan(BindPolicy::Numa, 1, 2).unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(t.plan(BindPolicy::None, 0, 2), None);
        let mut r = t.clone();
        r.allowed = vec![2, 3, 4, 5];
        assert_eq!(r.plan(BindPolicy::Cores, 0, 2).unwrap(), vec![2, 3]);
        assert_eq!(r.plan(BindPolicy::Cores, 1, 2).unwrap(), vec![4, 5]);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert!(parse_cpu_list("3-1").is_none());
        assert!(parse_cpu_list("x").is_none());
    }

    #[test]
    fn detects_this_machine() {
        let t = Topology::detect().unwrap();
        assert!(!t.cores.is_empty() && !t.allowed.is_empty(), "{t:?}");
        let pus: usize = t.cores.iter().map(Vec::len).sum();
        assert!(pus >= t.usable_cores().len());
    }

    #[test]
    fn interfaces_include_loopback_and_unknown_names_list_them() {
        assert_eq!(interface_address("lo").unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let e = interface_address("ib7-does-not-exist").unwrap_err();
        assert!(e.contains("no network interface named 'ib7-does-not-exist'") && e.contains("lo (127.0.0.1"), "{e}");
    }

    #[test]
    fn filesystem_magic_numbers() {
        assert_eq!(filesystem_name(0x6969), Some("NFS"));
        assert_eq!(filesystem_name(0x0BD00BD0), Some("Lustre"));
        assert_eq!(filesystem_name(0xEF53), None); // ext4
        assert_eq!(network_filesystem(Path::new("/tmp")), None);
    }

    #[test]
    fn stale_scratch_is_cleaned_live_is_kept() {
        let parent = std::env::temp_dir().join(format!("tf-scratch-{}", crate::util::hex(&crate::util::random_bytes(4))));
        let live = create_scratch(&parent, "live").unwrap();
        // A directory whose worker died: lock file present, nobody holds it.
        let dead = parent.join(format!("{SCRATCH_PREFIX}dead-1-abc"));
        std::fs::create_dir_all(&dead).unwrap();
        File::create(dead.join(LOCK_NAME)).unwrap();
        let other = parent.join("not-ours");
        std::fs::create_dir_all(&other).unwrap();
        let removed = clean_stale_scratch(&parent);
        assert_eq!(removed, vec![dead.clone()]);
        assert!(live.path().exists() && other.exists() && !dead.exists());
        let p = live.path().to_path_buf();
        drop(live);
        assert!(!p.exists());
        std::fs::remove_dir_all(parent).unwrap();
    }

    #[test]
    fn workers_starting_together_never_remove_each_others_scratch() {
        // Each worker cleans stale directories as it starts; one just being
        // created by another must never look stale (this failed a benchmark
        // starting two workers at once).
        let parent = std::env::temp_dir().join(format!("tf-scratch-{}", crate::util::hex(&crate::util::random_bytes(4))));
        std::fs::create_dir_all(&parent).unwrap();
        for round in 0..200 {
            let made: Vec<ScratchDir> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8).map(|i| {
                    let parent = &parent;
                    s.spawn(move || create_scratch(parent, &format!("w{round}-{i}")))
                }).collect();
                hs.into_iter().map(|h| h.join().unwrap().expect("every worker gets its scratch directory")).collect()
            });
            assert!(made.iter().all(|d| d.path().join(LOCK_NAME).exists()), "round {round}: a live directory was removed");
        }
        std::fs::remove_dir_all(parent).unwrap();
    }
}
