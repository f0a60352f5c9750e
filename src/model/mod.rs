//! Model architectures: the tensor-name table, the configuration read from metadata, and the
//! GPU forward pass.

pub mod arch;
pub mod config;
pub mod llama;
pub mod synthetic;

pub use config::LlamaConfig;
pub use llama::{LlamaGpu, LoadOptions, Output, StepTimes};

use crate::format::DType;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("architecture {0:?} is not supported (supported: {supported})", supported = arch::LLAMA_LIKE.join(", "))]
    UnsupportedArchitecture(String),
    #[error("the model has no general.architecture key")]
    NoArchitecture,
    #[error("metadata key {0} is missing")]
    MissingKey(String),
    #[error("metadata key {key}: {message}")]
    BadKey { key: String, message: String },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("tensor {name} has type {dtype}, which this build cannot run (supported: {supported})")]
    UnsupportedTensorType {
        name: String,
        dtype: DType,
        supported: String,
    },
    #[error("context of {requested} tokens is too long: {reason}")]
    ContextTooLong { requested: u64, reason: String },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { token: u32, n_vocab: u32 },
    #[error("positions {pos0}..{end} exceed the context of {n_ctx} tokens")]
    ContextFull { pos0: u32, end: u64, n_ctx: u32 },
    #[error("{0}")]
    BadRequest(String),
}
