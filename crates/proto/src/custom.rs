//! The messages of serde implementations that fail, kept across postcard.
//!
//! postcard drops the message of `serde::ser::Error::custom` and
//! `serde::de::Error::custom`: the error it returns only says "Serde
//! Serialization Error". A `Serialize` or `Deserialize` implementation that
//! fails through [`serialize_error`] or [`deserialize_error`] instead also
//! leaves its message in a slot of the current thread, where the codec that
//! called postcard finds it ([`take_message`]) and reports it. The
//! implementations of processional do so; yours can too.
//!
//! ```
//! use processional_proto::custom::{serialize_error, take_message};
//! use serde::{Serialize, Serializer};
//!
//! struct Secret;
//!
//! impl Serialize for Secret {
//!     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
//!         Err(serialize_error("a Secret never leaves its process"))
//!     }
//! }
//!
//! take_message(); // a codec forgets what an earlier failure left
//! assert!(postcard::to_stdvec(&Secret).is_err());
//! assert_eq!(take_message().as_deref(), Some("a Secret never leaves its process"));
//! ```

use std::cell::RefCell;
use std::fmt::Display;

thread_local! {
    /// The message of the last failure reported through this module on this
    /// thread, until a codec takes it.
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn keep(message: impl Display) -> String {
    let message = message.to_string();
    MESSAGE.with(|slot| *slot.borrow_mut() = Some(message.clone()));
    message
}

/// `S::Error::custom(message)` for a `Serialize` implementation, with the
/// message kept for the codec (see the [module docs](self)).
pub fn serialize_error<E: serde::ser::Error>(message: impl Display) -> E {
    E::custom(keep(message))
}

/// `D::Error::custom(message)` for a `Deserialize` implementation, with the
/// message kept for the codec (see the [module docs](self)).
pub fn deserialize_error<E: serde::de::Error>(message: impl Display) -> E {
    E::custom(keep(message))
}

/// Takes the message the last failure on this thread left, if any.
///
/// A codec calls it before encoding or decoding (to forget a stale message)
/// and after a failure whose message the format dropped.
pub fn take_message() -> Option<String> {
    MESSAGE.with(|slot| slot.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuses;

    impl<'de> serde::Deserialize<'de> for Refuses {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let value = u8::deserialize(deserializer)?;
            Err(deserialize_error(format_args!("{value} is refused")))
        }
    }

    #[test]
    fn a_refusal_keeps_its_message_for_the_codec() {
        take_message();
        let error = postcard::from_bytes::<Refuses>(&[13])
            .err()
            .expect("refused");
        assert_eq!(error, postcard::Error::SerdeDeCustom);
        assert_eq!(take_message().as_deref(), Some("13 is refused"));
        assert_eq!(take_message(), None, "a message is taken once");
    }
}
