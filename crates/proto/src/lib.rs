//! Placeholder: being written.
pub mod message;
pub use message::*;
/// Set in a frame header when file descriptors travel with the frame.
pub const FLAG_FDS: u16 = 1;
/// The protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
