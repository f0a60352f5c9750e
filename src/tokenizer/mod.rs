//! Tokenizers built from GGUF metadata on the `tokenizers` crate, and chat templates.

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Invalid(String),
}
