//! What `ps` and `top` call a slave or a spawned server.
//!
//! A child is re-executed through `/proc/self/exe`, so the kernel would
//! name every one `exe`. Instead its `argv[0]` is a title that says which
//! program it belongs to and what it is (`myapp [slave 2]`,
//! `myapp [server]`, or the builder's name), and the child copies that
//! title into its process name (`/proc/<pid>/comm`, 15 bytes, what `top`
//! and plain `ps` show) before it serves. The rest of its argv is the
//! master's, so that `std::env::args().skip(1)` reads the same in both.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many bytes of a process name the kernel keeps (`TASK_COMM_LEN` less
/// the terminating NUL).
pub(crate) const COMM_LEN: usize = 15;

/// The slaves this process spawned so far, to number the next one.
static SLAVES: AtomicU64 = AtomicU64::new(0);

/// What a child is, for its title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A slave: numbered per master, from 1.
    Slave,
    /// A spawned server.
    Server,
}

/// The title of the next child of `role`: `name` if the builder gave one,
/// else `<program> [slave <n>]` or `<program> [server]`.
pub(crate) fn next(program: &str, role: Role, name: Option<&str>) -> String {
    if let Some(name) = name {
        return name.to_owned();
    }
    match role {
        Role::Slave => {
            let number = SLAVES.fetch_add(1, Ordering::Relaxed) + 1;
            format!("{program} [slave {number}]")
        }
        Role::Server => format!("{program} [server]"),
    }
}

/// The process name for `title`, at most [`COMM_LEN`] bytes: the title
/// itself if it fits, else its program part shortened so that the role in
/// brackets stays whole (`processi [slave 2]` for a long program name), else
/// the title cut at a character boundary.
pub(crate) fn comm(title: &str) -> String {
    if title.len() <= COMM_LEN {
        return title.to_owned();
    }
    if let Some(at) = title.rfind(" [")
        && title.ends_with(']')
    {
        let (program, role) = title.split_at(at);
        if role.len() < COMM_LEN {
            return format!("{}{role}", cut(program, COMM_LEN - role.len()));
        }
    }
    cut(title, COMM_LEN).to_owned()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_name_the_program_and_the_role() {
        let first = next("myapp", Role::Slave, None);
        let second = next("myapp", Role::Slave, None);
        let number = |title: &str| -> u64 {
            title
                .strip_prefix("myapp [slave ")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{title}"))
        };
        assert_eq!(number(&second), number(&first) + 1);
        assert_eq!(next("myapp", Role::Server, None), "myapp [server]");
        assert_eq!(next("myapp", Role::Slave, Some("resizer")), "resizer");
    }

    #[test]
    fn process_names_fit_the_kernel_s_fifteen_bytes() {
        assert_eq!(comm("myapp [slave 2]"), "myapp [slave 2]");
        assert_eq!(comm("processional [slave 2]"), "proce [slave 2]");
        assert_eq!(comm("processional [server]"), "proces [server]");
        assert_eq!(comm("a-very-long-name-of-a-worker"), "a-very-long-nam");
        // Never a cut inside a character.
        assert_eq!(comm("ééééééééé [slave 1]"), "éé [slave 1]");
        assert_eq!(comm("éééééééééééééééé"), "ééééééé");
        for title in ["x [slave 1234567890123456]", "[slave 1]", ""] {
            assert!(comm(title).len() <= COMM_LEN, "{title}");
        }
    }
}
