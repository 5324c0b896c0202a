//! File seals: what a memfd promises about its future.

use std::fmt;
use std::ops::{BitOr, BitOrAssign, Sub};

use crate::sys::seal_bits;

/// A set of file seals (`F_SEAL_*`): restrictions the kernel enforces on a memfd for every
/// holder of it, forever.
///
/// A receiver reads them to know what a sender can still do to a segment it maps: with
/// [`SHRINK`](Seals::SHRINK) nobody can cut the file under a mapping (which would turn reads into
/// `SIGBUS`), with [`WRITE`](Seals::WRITE) nobody can change a byte of it.
///
/// ```
/// use processional_shm::{Seals, Segment};
///
/// # fn main() -> Result<(), processional_shm::ShmError> {
/// let mut segment = Segment::create(4096)?;
/// assert!(!segment.seals()?.is_read_only());
/// segment.seal_read_only()?;
/// let seals = segment.seals()?;
/// assert!(seals.is_read_only() && seals.is_fixed_size());
/// assert!(seals.contains(Seals::WRITE | Seals::SHRINK));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seals(u32);

impl Seals {
    /// No seals.
    pub const NONE: Seals = Seals(0);
    /// No more seals can be added or removed.
    pub const SEAL: Seals = Seals(seal_bits::SEAL);
    /// The file cannot shrink.
    pub const SHRINK: Seals = Seals(seal_bits::SHRINK);
    /// The file cannot grow.
    pub const GROW: Seals = Seals(seal_bits::GROW);
    /// The contents cannot change: no `write`, no writable shared mapping.
    pub const WRITE: Seals = Seals(seal_bits::WRITE);
    /// No new writes (`write` or new writable mappings); mappings that were writable before
    /// stay so.
    pub const FUTURE_WRITE: Seals = Seals(seal_bits::FUTURE_WRITE);
    /// The file can never be made executable (set at creation: `MFD_NOEXEC_SEAL`).
    pub const EXEC: Seals = Seals(seal_bits::EXEC);
    /// The size is fixed: [`SHRINK`](Seals::SHRINK) and [`GROW`](Seals::GROW).
    pub const FIXED_SIZE: Seals = Seals(seal_bits::SHRINK | seal_bits::GROW);
    /// Read-only for good: fixed size, no writes, seals locked.
    pub const READ_ONLY: Seals =
        Seals(seal_bits::SHRINK | seal_bits::GROW | seal_bits::WRITE | seal_bits::SEAL);

    /// The raw `F_SEAL_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Seals from raw `F_SEAL_*` bits (unknown bits are kept).
    pub const fn from_bits(bits: u32) -> Seals {
        Seals(bits)
    }

    /// Whether every seal of `other` is in `self`.
    pub const fn contains(self, other: Seals) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any seal of `other` is in `self`.
    pub const fn intersects(self, other: Seals) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether nobody can write the contents anymore through a new mapping or `write`
    /// ([`WRITE`](Seals::WRITE) or [`FUTURE_WRITE`](Seals::FUTURE_WRITE)).
    pub const fn forbids_new_writes(self) -> bool {
        self.intersects(Seals(seal_bits::WRITE | seal_bits::FUTURE_WRITE))
    }

    /// Whether the contents can never change again, through any mapping: [`WRITE`](Seals::WRITE)
    /// with a fixed size.
    pub const fn is_read_only(self) -> bool {
        self.contains(Seals(
            seal_bits::WRITE | seal_bits::SHRINK | seal_bits::GROW,
        ))
    }

    /// Whether the size can never change again.
    pub const fn is_fixed_size(self) -> bool {
        self.contains(Seals::FIXED_SIZE)
    }
}

impl BitOr for Seals {
    type Output = Seals;
    fn bitor(self, rhs: Seals) -> Seals {
        Seals(self.0 | rhs.0)
    }
}

impl BitOrAssign for Seals {
    fn bitor_assign(&mut self, rhs: Seals) {
        self.0 |= rhs.0;
    }
}

impl Sub for Seals {
    type Output = Seals;
    /// The seals of `self` that are not in `rhs`.
    fn sub(self, rhs: Seals) -> Seals {
        Seals(self.0 & !rhs.0)
    }
}

impl fmt::Display for Seals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Seals, &str); 6] = [
            (Seals::SEAL, "SEAL"),
            (Seals::SHRINK, "SHRINK"),
            (Seals::GROW, "GROW"),
            (Seals::WRITE, "WRITE"),
            (Seals::FUTURE_WRITE, "FUTURE_WRITE"),
            (Seals::EXEC, "EXEC"),
        ];
        let mut rest = *self;
        let mut first = true;
        for (seal, name) in NAMES {
            if self.contains(seal) && seal != Seals::NONE {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                rest = rest - seal;
                first = false;
            }
        }
        if rest != Seals::NONE {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{:#x}", rest.0)?;
            first = false;
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Seals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seals({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_implies_fixed_size_and_no_writes() {
        assert!(Seals::READ_ONLY.is_read_only());
        assert!(Seals::READ_ONLY.is_fixed_size());
        assert!(Seals::READ_ONLY.forbids_new_writes());
        assert!(!Seals::FIXED_SIZE.is_read_only());
        assert!(!(Seals::FIXED_SIZE | Seals::FUTURE_WRITE).is_read_only());
        assert!((Seals::FIXED_SIZE | Seals::FUTURE_WRITE).forbids_new_writes());
    }

    #[test]
    fn display_names_each_seal() {
        assert_eq!(Seals::NONE.to_string(), "NONE");
        assert_eq!(Seals::READ_ONLY.to_string(), "SEAL|SHRINK|GROW|WRITE");
        assert_eq!(
            (Seals::GROW | Seals::from_bits(0x100)).to_string(),
            "GROW|0x100"
        );
        assert_eq!((Seals::SEAL | Seals::EXEC).to_string(), "SEAL|EXEC");
        assert_eq!(
            Seals::READ_ONLY - Seals::SEAL,
            Seals::FIXED_SIZE | Seals::WRITE
        );
    }
}
