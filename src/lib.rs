//! Sovereign: a cross-vendor LLM inference runtime. Every kernel is a WGSL compute shader
//! dispatched through wgpu, so one engine runs on Vulkan, Metal, DX12 and WebGPU.
//!
//! Layers, each importing only those before it: [`format`] (model files), [`model`]
//! (architectures and config), [`gpu`] (device, buffers, pipelines), [`kernels`] (one per WGSL
//! shader), the forward pass in [`model::llama`], and the [`engine`] (sessions, sampling).
//! [`reference`] holds the plain-Rust CPU versions every kernel and the model are tested against.

pub mod bench;
pub mod engine;
pub mod error;
#[cfg(feature = "native")]
pub mod fetch;
pub mod format;
pub mod gpu;
pub mod kernels;
pub mod kv;
pub mod model;
#[cfg(any(feature = "native", target_arch = "wasm32"))]
pub mod openai;
pub mod perplexity;
pub mod reference;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;

pub use error::{Error, Result};
/// The wgpu this crate is built on, for callers that share its device or buffers.
pub use wgpu;
