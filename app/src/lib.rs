//! Sovereign's desktop chat app: an eframe window over the engine's in-process service.
//! The library holds the whole app so that UI tests can drive it without a window.

pub mod app;
pub mod store;
pub mod worker;

pub use app::{AppOptions, ChatApp};
