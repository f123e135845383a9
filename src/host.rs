//! What this process may use of its machine: its open-file limit and its memory (the cgroup's
//! limit in a container, else the machine's), read from `/proc` and `/sys`. From these come
//! the default cap on users ([`default_max_users`]) and the descriptors kept back for the
//! API ([`user_sockets`]), so that no request can ask for more than the process can hold.

/// Descriptors users may never take: the API's connections (at most
/// [`crate::api::MAX_CONNECTIONS`]), files it reads, the runtime's own.
pub const RESERVED_FDS: u64 = 512;
/// Memory budgeted per user for the default cap: our own state (~5 KB), both ends' kernel
/// socket memory on a loopback target (~8 KB) and socket buffers under load, with room.
pub const MEMORY_PER_USER: u64 = 64 * 1024;

/// The open-file soft limit of this process, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Bytes of memory this process may use: the cgroup v2 limit, else the machine's total.
pub fn memory() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let total = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    cgroup.or_else(total)
}

/// The most users one process here can hold: its file limit less [`RESERVED_FDS`], or its
/// memory at [`MEMORY_PER_USER`], whichever is fewer (at least one; `u64::MAX` when neither is
/// known: the caller caps it); and the reason, for error messages.
pub fn default_max_users(fds: Option<u64>, memory: Option<u64>) -> (u64, String) {
    let by_fds = fds.map(|limit| limit.saturating_sub(RESERVED_FDS));
    let by_memory = memory.map(|bytes| bytes / MEMORY_PER_USER);
    let max = by_fds
        .into_iter()
        .chain(by_memory)
        .min()
        .map_or(u64::MAX, |max| max.max(1));
    let why = format!(
        "by default what this process can hold: its open-file limit ({}) less {RESERVED_FDS} kept for the API, or its memory ({}) at {} KiB per user; set limits.max_users to change it",
        fds.map_or_else(|| "unknown".into(), |f| f.to_string()),
        memory.map_or_else(
            || "unknown".into(),
            |m| format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30))
        ),
        MEMORY_PER_USER / 1024,
    );
    (max, why)
}

/// How many sockets users may hold at once: the file limit less what was open at start and
/// [`RESERVED_FDS`]; unlimited when the limit cannot be read.
pub fn user_sockets(fds_open_now: u64) -> usize {
    fd_limit().map_or(usize::MAX, |limit| {
        usize::try_from(limit.saturating_sub(fds_open_now + RESERVED_FDS)).unwrap_or(usize::MAX)
    })
}

/// This process's resident memory (the kernel's `VmRSS`), or None where `/proc` does not say.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// This machine's name (the kernel's), or `unknown`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_the_scarcer_of_files_and_memory() {
        let (by_fds, why) = default_max_users(Some(20_000), Some(24 << 30));
        assert_eq!(by_fds, 20_000 - 512);
        assert!(why.contains("20000") && why.contains("24.0 GiB"), "{why}");
        let (by_memory, _) = default_max_users(Some(1 << 20), Some(1 << 30));
        assert_eq!(by_memory, (1 << 30) / (64 * 1024));
        assert_eq!(default_max_users(Some(100), None).0, 1, "at least one");
        assert_eq!(
            default_max_users(None, None).0,
            u64::MAX,
            "unknown: the caller caps it"
        );
        assert!(fd_limit().is_some() && memory().is_some(), "linux /proc");
    }
}
