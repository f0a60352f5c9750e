//! Sovereign in the browser: the engine compiled to WebAssembly, its kernels on WebGPU. The
//! wasm-bindgen surface (`bindings`) runs inside a Web Worker that `js/sovereign.js` starts and
//! talks to; `chat` turns OpenAI requests into engine requests and engine events into stream
//! chunks.

pub mod chat;

#[cfg(target_arch = "wasm32")]
mod bindings;

/// The engine version this build carries.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
