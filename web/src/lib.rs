//! Sovereign in the browser. The JS API and the demo page come with the web build's own work;
//! today this crate proves that the engine library compiles for `wasm32-unknown-unknown`.

pub use sovereign;

/// The engine version this build carries.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
