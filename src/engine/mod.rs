//! Sessions, sampling and generation on top of a loaded model.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
}
