//! The crate's one error type: each layer has its own typed enum, converted into this.

use crate::engine::EngineError;
use crate::format::GgufError;
use crate::gpu::GpuError;
use crate::kernels::KernelError;
use crate::model::ModelError;
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[cfg(feature = "server")]
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[cfg(feature = "native")]
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
