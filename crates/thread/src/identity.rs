//! Who runs an order: the operating system's thread id and the host name,
//! read from `/proc` (no OS call of ours).

use std::sync::OnceLock;

/// The calling thread's id as the kernel knows it (`gettid`), from the
/// `/proc/thread-self` link (`<pid>/task/<tid>`); 0 where `/proc` is not
/// mounted.
pub(crate) fn current_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// This host's name (`/proc/sys/kernel/hostname`, as `gethostname` gives
/// it), or `"unknown"`; read once.
pub(crate) fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_have_distinct_ids() {
        let here = current_tid();
        let there = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(here, 0);
        assert_ne!(here, there);
        assert!(std::path::Path::new(&format!("/proc/self/task/{here}")).exists());
    }

    #[test]
    fn the_host_has_a_name() {
        assert!(!host().is_empty());
    }
}
