//! The shared secret both sides of a connection prove they hold.

use std::fmt;

use hmac::{Hmac, Mac};
use processional_proto::Role;
use sha2::Sha256;

use crate::sys;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// The length of a generated key, in bytes.
pub const GENERATED_KEY_LEN: usize = 32;

/// Domain separation: the first bytes of every MAC input.
const AUTH_TAG: &[u8] = b"processional-auth-v1";

type HmacSha256 = Hmac<Sha256>;

/// A shared secret of at least [`MIN_KEY_LEN`] bytes.
///
/// Only the holders of the key can complete a handshake with each other (see
/// the crate docs for what that does and does not protect). `Debug` never
/// shows the bytes, and they are wiped when the key is dropped.
///
/// ```
/// use processional_transport::Key;
///
/// let key = Key::generate();
/// let hex = key.to_hex(); // e.g. for PROCESSIONAL_KEY
/// assert_eq!(Key::from_hex(&hex).unwrap(), key);
/// assert!(!format!("{key:?}").contains(&hex));
/// assert!(Key::from_hex("abc").is_err());
/// ```
#[derive(Clone)]
pub struct Key {
    bytes: Box<[u8]>,
}

/// Why bytes or text are not a [`Key`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error("a key needs at least {min} bytes, got {len}")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Text that is not an even number of hex digits.
    #[error("a key in hex needs an even number of hex digits; {0}")]
    InvalidHex(String),
}

impl Key {
    /// A new key of [`GENERATED_KEY_LEN`] random bytes from the kernel's
    /// CSPRNG.
    ///
    /// # Panics
    ///
    /// If the kernel cannot give random bytes (neither `getrandom` nor
    /// `/dev/urandom` works), which only happens on a broken system.
    pub fn generate() -> Key {
        let mut bytes = vec![0u8; GENERATED_KEY_LEN].into_boxed_slice();
        if let Err(error) = sys::random_bytes(&mut bytes) {
            panic!("the kernel gives no random bytes: {error}");
        }
        Key { bytes }
    }

    /// A key made of `bytes` (at least [`MIN_KEY_LEN`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Key {
            bytes: bytes.into(),
        })
    }

    /// A key from hex text (upper or lower case), as [`Key::to_hex`] writes it.
    pub fn from_hex(text: &str) -> Result<Key, KeyError> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) {
            return Err(KeyError::InvalidHex(format!("got {} digits", text.len())));
        }
        let digit = |byte: u8, at: usize| -> Result<u8, KeyError> {
            match byte {
                b'0'..=b'9' => Ok(byte - b'0'),
                b'a'..=b'f' => Ok(byte - b'a' + 10),
                b'A'..=b'F' => Ok(byte - b'A' + 10),
                _ => Err(KeyError::InvalidHex(format!(
                    "character {at} is not a hex digit"
                ))),
            }
        };
        let mut bytes = Vec::with_capacity(text.len() / 2);
        for (index, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            bytes.push(digit(pair[0], 2 * index)? << 4 | digit(pair[1], 2 * index + 1)?);
        }
        let key = Key::from_bytes(&bytes);
        wipe(&mut bytes);
        key
    }

    /// The key as lower-case hex.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(self.bytes.len() * 2);
        for byte in self.bytes.iter() {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 15)]));
        }
        text
    }

    /// The raw bytes, e.g. to hand the key to a child process.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn mac(&self, prover: Role, verifier_nonce: &[u8; 32], prover_nonce: &[u8; 32]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.bytes).expect("HMAC accepts keys of any length");
        mac.update(AUTH_TAG);
        mac.update(&[role_byte(prover)]);
        mac.update(verifier_nonce);
        mac.update(prover_nonce);
        mac
    }

    /// The proof that the prover, with role `prover`, holds the key:
    /// HMAC-SHA256(key, `"processional-auth-v1"` ‖ role byte ‖ verifier's
    /// nonce ‖ prover's nonce).
    pub(crate) fn prove(
        &self,
        prover: Role,
        verifier_nonce: &[u8; 32],
        prover_nonce: &[u8; 32],
    ) -> [u8; 32] {
        self.mac(prover, verifier_nonce, prover_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a proof in constant time.
    pub(crate) fn verify(
        &self,
        prover: Role,
        verifier_nonce: &[u8; 32],
        prover_nonce: &[u8; 32],
        proof: &[u8; 32],
    ) -> bool {
        self.mac(prover, verifier_nonce, prover_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// The byte that stands for a role in the MAC input.
pub(crate) fn role_byte(role: Role) -> u8 {
    match role {
        Role::Master => 0,
        Role::Slave => 1,
        Role::Client => 2,
        Role::Server => 3,
        Role::DataClient => 4,
    }
}

/// Fills `buf` with random bytes from the kernel's CSPRNG, the source
/// [`Key::generate`] uses: for other unguessable values (nonces, tickets).
///
/// ```
/// let mut ticket = [0u8; 16];
/// processional_transport::random_bytes(&mut ticket).unwrap();
/// assert_ne!(ticket, [0; 16]); // all zeros: one chance in 2^128
/// ```
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    sys::random_bytes(buf)
}

/// Overwrites secret bytes so they do not linger in freed memory.
fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // Volatile so the compiler cannot drop the stores as dead.
        // SAFETY: `byte` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

impl Drop for Key {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

impl PartialEq for Key {
    /// Compares in time that depends only on the lengths.
    fn eq(&self, other: &Key) -> bool {
        self.bytes.len() == other.bytes.len()
            && self
                .bytes
                .iter()
                .zip(other.bytes.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} secret bytes>)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let key = Key::generate();
        assert_eq!(key.as_bytes().len(), GENERATED_KEY_LEN);
        assert_eq!(Key::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(Key::from_hex(&key.to_hex().to_uppercase()).unwrap(), key);
        assert_ne!(Key::generate(), key);
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            Key::from_bytes(&[1; 15]),
            Err(KeyError::TooShort { len: 15, min: 16 })
        );
        assert!(Key::from_bytes(&[1; 16]).is_ok());
        assert!(matches!(Key::from_hex("abc"), Err(KeyError::InvalidHex(_))));
        assert!(matches!(
            Key::from_hex(&"zz".repeat(16)),
            Err(KeyError::InvalidHex(_))
        ));
        assert!(matches!(
            Key::from_hex(&"ab".repeat(15)),
            Err(KeyError::TooShort { len: 15, .. })
        ));
    }

    #[test]
    fn debug_hides_the_bytes() {
        let key = Key::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn proofs_bind_key_role_and_nonces() {
        let key = Key::generate();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let proof = key.prove(Role::Client, &a, &b);
        assert!(key.verify(Role::Client, &a, &b, &proof));
        assert!(!key.verify(Role::Server, &a, &b, &proof));
        assert!(!key.verify(Role::Client, &b, &a, &proof));
        assert!(!Key::generate().verify(Role::Client, &a, &b, &proof));
    }
}
