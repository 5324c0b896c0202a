//! Placeholder: being written.
mod error;
pub use error::*;
