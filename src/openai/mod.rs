//! The OpenAI API's shapes, shared by every surface that speaks it (the HTTP server, the browser
//! engine): request bodies checked field by field into engine requests, response bodies and
//! stream chunks built from engine events, and errors with the status and type clients switch on.

pub mod error;
pub mod request;
pub mod response;
pub mod tools;

pub use error::{ApiError, ErrorType};
