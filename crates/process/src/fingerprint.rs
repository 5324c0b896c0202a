//! The build fingerprint: which program, which build.
//!
//! Two processes may run functions for each other only if they run the same
//! build of the same program, since function references are offsets inside
//! the executable. The fingerprint is computed once per process from the
//! executable image already mapped in memory, never by reading the file:
//! the GNU build id when the linker wrote one, otherwise the layout of the
//! load segments and the first 64 KiB of each executable segment.

use std::sync::OnceLock;

use processional_proto::Fingerprint;
use sha2::{Digest, Sha256};

use crate::sys;

/// A static of ours: its address tells which loaded object is the executable.
static IMAGE_PROBE: u8 = 0;

/// How many bytes of each executable segment the fallback fingerprint hashes.
const SAMPLE_LEN: usize = 64 * 1024;

/// This program's build fingerprint (computed on first use, then cached).
///
/// Two processes talk only if their fingerprints are equal: a slave always
/// matches its master; a server and its clients must be the same build.
///
/// ```
/// use processional_process::{fingerprint, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// assert_eq!(process.invoke(func!(fingerprint))?, fingerprint());
/// # Ok(())
/// # }
/// ```
pub fn fingerprint() -> Fingerprint {
    static FINGERPRINT: OnceLock<Fingerprint> = OnceLock::new();
    *FINGERPRINT.get_or_init(compute)
}

/// A short name of this program for messages: the executable's file name.
///
/// ```
/// let name = processional_process::program_name();
/// assert!(!name.is_empty() && !name.contains('/'));
/// ```
pub fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn compute() -> Fingerprint {
    let image = sys::executable_image(&IMAGE_PROBE as *const u8 as usize);
    let mut hasher = Sha256::new();
    hasher.update(b"processional-fingerprint-v1\0");
    hasher.update(processional_proto::PROTOCOL_VERSION.to_le_bytes());
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    match &image.build_id {
        Some(build_id) => {
            hasher.update(b"build-id\0");
            hasher.update(build_id);
        }
        None => {
            hasher.update(b"layout\0");
            let base = image.segments.first().map_or(0, |s| s.start);
            for segment in &image.segments {
                hasher.update(((segment.start - base) as u64).to_le_bytes());
                hasher.update(((segment.end - segment.start) as u64).to_le_bytes());
                if segment.executable {
                    let len = (segment.end - segment.start).min(SAMPLE_LEN);
                    // SAFETY: the segment is a PT_LOAD segment of our own
                    // executable, mapped readable for the life of the process,
                    // and `len` does not exceed its size.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(segment.start as *const u8, len) };
                    hasher.update(bytes);
                }
            }
        }
    }
    Fingerprint(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_within_a_process() {
        assert_eq!(fingerprint(), compute());
        assert_ne!(fingerprint(), Fingerprint::default());
    }
}
