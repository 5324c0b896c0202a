//! Shipping functions: how a closure written in the master runs in the slave.
//!
//! Both processes run the same build of the same program (the handshake
//! compares [fingerprints](crate::fingerprint)), so every function exists in
//! both at the same offset from any fixed point of the executable. A task is a
//! closure that captures nothing (a zero-sized type) or a fn item; for each
//! task type the compiler instantiates an *entry point* (decode the arguments,
//! run the task, encode the value) and a [`Descriptor`] in read-only data that
//! points to it. The master sends the descriptor's offset from [`ANCHOR`] and a
//! digest of the entry's type.
//!
//! The slave never jumps to an address a peer chose: it accepts a reference
//! only if the offset lands, aligned, inside memory of its own executable that
//! is read-only once loaded (a read-only load segment, or the RELRO range
//! where the compiler's descriptors live after relocation), the words there
//! carry the descriptor magic, and both function words point into an
//! executable segment of its own image. Nothing a peer can write (the stack,
//! the heap, a `static` with interior mutability in `.data` / `.bss`, a shared
//! segment) passes the first check, so the words that pass are a descriptor
//! the compiler built; only then does the slave call its signature function
//! and compare the digest, and only if that matches does it run the entry.
//! Peers reach this code only after the authenticated handshake with a
//! matching build fingerprint.
//!
//! The task type itself travels as nothing: the slave makes its value from
//! nothing ([`conjure`]). That is sound because tasks arrive as a
//! [`Func`](crate::Func), whose closure was made in a `const` context and so
//! captures nothing.

use std::any::type_name;
use std::cell::RefCell;
use std::sync::OnceLock;

use processional_proto::{FunctionRef, RemoteError, RemoteErrorKind};

use crate::context::CallContext;
use crate::payload::{Encoded, Incoming};
use crate::sys::{self, ExecutableImage};

/// The fixed point offsets are measured from.
static ANCHOR: u8 = 0;

/// Tells a descriptor from any other bytes of the executable.
const MAGIC: [u64; 2] = [0x7072_6f63_6573_7369, 0x6f6e_616c_2d66_6e31];

/// The signature of every entry point: arguments in, the answer out.
pub(crate) type Entry = fn(&CallContext<'_>, &Incoming) -> Result<Answer, RemoteError>;

/// What an entry point answers.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The encoded value: the executor replies with it now.
    Now(Encoded),
    /// Someone else answers the call later (a deferred reply, the end of a
    /// stream): the executor sends nothing and moves on.
    Later,
}

/// What a function reference points to. `repr(C)`, so the slave can check
/// the words before it trusts them as function pointers.
#[repr(C)]
pub(crate) struct Descriptor {
    magic: [u64; 2],
    entry: Entry,
    signature: fn() -> u64,
}

/// Types that have a descriptor: one per entry point instantiation.
pub(crate) trait Described {
    /// The entry point.
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError>;

    /// The descriptor, promoted to a `'static` in read-only data.
    const DESCRIPTOR: &'static Descriptor = &Descriptor {
        magic: MAGIC,
        entry: Self::run,
        signature: signature::<Self>,
    };

    /// The reference a master sends for this entry point (the digest is
    /// computed once per entry point and thread, then cached).
    fn function_ref() -> FunctionRef {
        let descriptor = Self::DESCRIPTOR as *const Descriptor as usize;
        let signature = SIGNATURES.with(|cache| {
            *cache
                .borrow_mut()
                .entry(descriptor)
                .or_insert_with(signature::<Self>)
        });
        FunctionRef {
            offset: descriptor.wrapping_sub(&ANCHOR as *const u8 as usize) as i64,
            signature,
        }
    }
}

/// A `HashMap` hasher for keys that are already well spread (addresses,
/// offsets, sequential ids): one multiplication instead of SipHash.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

/// A `HashMap` keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

thread_local! {
    /// Descriptor address → digest, on the calling side.
    static SIGNATURES: RefCell<IdMap<usize, u64>> = RefCell::new(IdMap::default());
    /// References already validated, on the serving side.
    static RESOLVED: RefCell<IdMap<(i64, u64), Entry>> = RefCell::new(IdMap::default());
}

/// A digest of a type's name (64 bits, 8 bytes at a time).
fn signature<T: ?Sized>() -> u64 {
    let name = type_name::<T>().as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ name.len() as u64;
    for chunk in name.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    hash
}

fn invalid(detail: String) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::InvalidFunction,
        message: detail,
        location: None,
        backtrace: None,
    }
}

fn image() -> &'static ExecutableImage {
    static IMAGE: OnceLock<ExecutableImage> = OnceLock::new();
    IMAGE.get_or_init(|| sys::executable_image(&ANCHOR as *const u8 as usize))
}

/// Whether `len` bytes at `start` lie in memory the build fixed and nothing in
/// this process can write: a read-only load segment or a RELRO range.
fn in_read_only(image: &ExecutableImage, start: usize, len: usize) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    image
        .read_only
        .iter()
        .any(|range| range.start <= start && end <= range.end)
}

fn in_segment(image: &ExecutableImage, start: usize, len: usize, executable: bool) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    image
        .segments
        .iter()
        .any(|s| s.start <= start && end <= s.end && (!executable || s.executable))
}

/// Validates a function reference received from a peer and returns its
/// entry (validated references are cached per thread).
pub(crate) fn resolve(function: FunctionRef) -> Result<Entry, RemoteError> {
    let key = (function.offset, function.signature);
    if let Some(entry) = RESOLVED.with(|cache| cache.borrow().get(&key).copied()) {
        return Ok(entry);
    }
    let entry = validate(function)?;
    RESOLVED.with(|cache| cache.borrow_mut().insert(key, entry));
    Ok(entry)
}

fn validate(function: FunctionRef) -> Result<Entry, RemoteError> {
    let image = image();
    let address = (&ANCHOR as *const u8 as usize).wrapping_add(function.offset as usize);
    if !address.is_multiple_of(std::mem::align_of::<Descriptor>())
        || !in_read_only(image, address, std::mem::size_of::<Descriptor>())
    {
        return Err(invalid(format!(
            "function reference {:#x} does not point into this program's read-only data",
            function.offset
        )));
    }
    // SAFETY: `address` is aligned for `Descriptor` (so for u64 and usize)
    // and the whole descriptor's bytes lie inside a read-only range of our
    // executable, which stays mapped and readable for the life of the process.
    // Reading them as plain integers makes no claim about their meaning yet.
    let (magic, [entry_word, signature_word]) = unsafe {
        (
            std::ptr::read(address as *const [u64; 2]),
            std::ptr::read((address + std::mem::size_of::<[u64; 2]>()) as *const [usize; 2]),
        )
    };
    let magic_ok = magic == MAGIC;
    if !magic_ok
        || !in_segment(image, entry_word, 1, true)
        || !in_segment(image, signature_word, 1, true)
    {
        return Err(invalid(format!(
            "function reference {:#x} is not an entry point of this program",
            function.offset
        )));
    }
    // SAFETY: the words lie in memory whose content the build fixed and that
    // no code of this process (and no peer) can write, they carry the magic
    // only compiler-built descriptors have, and both point into executable
    // code of our own image: this is one of the `Descriptor`s promoted by
    // `Described::DESCRIPTOR`, and reading it as one reads the value the
    // compiler wrote there. Its `signature` is thus compiler-emitted code.
    let descriptor = unsafe { &*(address as *const Descriptor) };
    let actual = (descriptor.signature)();
    if actual != function.signature {
        return Err(invalid(format!(
            "function reference {:#x} has signature {:#x}, the caller expected {:#x}",
            function.offset, actual, function.signature
        )));
    }
    Ok(descriptor.entry)
}

/// Produces the value of a task type that a [`Func`](crate::Func) vouched
/// for.
///
/// A task shipped to another process captures nothing: its type then has
/// exactly one value, which the receiving process recreates here. Entry
/// points are only instantiated from `Func<F>` (or closures that capture only
/// such an `F`), whose constructor requires exactly that.
pub(crate) fn conjure<F: 'static>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0 && !std::mem::needs_drop::<F>(),
            "processional: a task sent to another process must not capture anything; \
             pass the data it needs as arguments (invoke_with, schedule_with, …)"
        )
    };
    // SAFETY: `F` is zero-sized (checked at compile time above), so it has no
    // bytes to initialize; the sender held a `Func<F>`, so the type is
    // inhabited and, by `Func::new_unchecked`'s contract, a fn item or a
    // closure without captures (or one capturing only such values), whose
    // value carries no state a process could lack. It has no drop glue
    // (checked too), so making one more value of it runs no user code.
    unsafe { std::mem::zeroed::<F>() }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    struct Probe;
    impl Described for Probe {
        fn run(_: &CallContext<'_>, _: &Incoming) -> Result<Answer, RemoteError> {
            Ok(Answer::Now(Encoded::Inline(Vec::new())))
        }
    }

    #[test]
    fn a_real_descriptor_resolves() {
        let function = Probe::function_ref();
        let entry = resolve(function).expect("valid");
        assert_eq!(entry as usize, Probe::run as Entry as usize);
    }

    #[test]
    fn forged_references_are_refused() {
        let good = Probe::function_ref();
        for offset in [
            0i64,
            1,
            -8,
            8,
            i64::MAX,
            i64::MIN,
            good.offset + 8,
            good.offset + 1,
        ] {
            let error = resolve(FunctionRef {
                offset,
                signature: good.signature,
            })
            .expect_err("forged");
            assert_eq!(error.kind, RemoteErrorKind::InvalidFunction);
        }
        let error = resolve(FunctionRef {
            offset: good.offset,
            signature: good.signature ^ 1,
        })
        .expect_err("wrong signature");
        assert!(error.message.contains("signature"));
    }

    /// Set by the forged descriptor's functions, if anything calls them.
    static FORGED_CODE_RAN: AtomicBool = AtomicBool::new(false);

    fn forged_signature() -> u64 {
        FORGED_CODE_RAN.store(true, Ordering::SeqCst);
        0x5eed
    }

    fn forged_entry(_: &CallContext<'_>, _: &Incoming) -> Result<Answer, RemoteError> {
        FORGED_CODE_RAN.store(true, Ordering::SeqCst);
        Ok(Answer::Later)
    }

    /// A writable static, in `.data` / `.bss`: what a peer that gets 32
    /// aligned bytes into any static of the program could fill.
    #[repr(C, align(8))]
    struct Writable([AtomicUsize; 4]);
    static WRITABLE: Writable = Writable([const { AtomicUsize::new(0) }; 4]);

    #[test]
    fn a_forged_descriptor_in_writable_memory_is_refused_and_nothing_runs() {
        let words = [
            MAGIC[0] as usize,
            MAGIC[1] as usize,
            forged_entry as Entry as usize,
            forged_signature as fn() -> u64 as usize,
        ];
        for (slot, word) in WRITABLE.0.iter().zip(words) {
            slot.store(word, Ordering::SeqCst);
        }
        let address = &WRITABLE as *const Writable as usize;
        let function = FunctionRef {
            offset: address.wrapping_sub(&ANCHOR as *const u8 as usize) as i64,
            signature: 0x5eed,
        };
        let error = resolve(function).expect_err("a descriptor in writable memory");
        assert_eq!(error.kind, RemoteErrorKind::InvalidFunction);
        assert!(error.message.contains("read-only"), "{}", error.message);
        assert!(!FORGED_CODE_RAN.load(Ordering::SeqCst), "forged code ran");
    }

    #[test]
    fn conjured_closure_runs() {
        let f = || 41 + 1;
        fn run<F: Fn() -> i32 + 'static>(_: F) -> i32 {
            conjure::<F>()()
        }
        assert_eq!(run(f), 42);
    }
}
