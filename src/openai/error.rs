//! Errors as an OpenAI client sees them: `{"error": {"message", "type", "param", "code"}}` with
//! the HTTP status that goes with it. The server answers them over HTTP; the browser engine hands
//! the same bodies to JavaScript.

use serde::Serialize;

use crate::engine::EngineError;
use crate::model::ModelError;
use crate::tokenizer::TokenizerError;

/// OpenAI's error types, which clients switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    NotFoundError,
    RateLimitError,
    ServerError,
}

/// An error answered to the client: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status the answer carries (400, 401, 404, 429...).
    pub status: u16,
    pub message: String,
    pub kind: ErrorType,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: ErrorType,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, ErrorType::InvalidRequestError, message)
    }

    /// A parameter with a value that cannot mean anything.
    pub fn invalid_value(param: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_request(format!("Invalid value for '{param}': {message}"))
            .with_param(param)
            .with_code("invalid_value")
    }

    pub fn invalid_type(param: &str, expected: &str) -> Self {
        Self::bad_request(format!("Invalid type for '{param}': expected {expected}."))
            .with_param(param)
            .with_code("invalid_type")
    }

    pub fn missing(param: &str) -> Self {
        Self::bad_request(format!("Missing required parameter: '{param}'."))
            .with_param(param)
            .with_code("missing_required_parameter")
    }

    pub fn unsupported(param: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_request(format!("Unsupported parameter '{param}': {message}"))
            .with_param(param)
            .with_code("unsupported_parameter")
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, ErrorType::AuthenticationError, message).with_code("invalid_api_key")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, ErrorType::PermissionError, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, ErrorType::NotFoundError, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::not_found(format!(
            "The model '{model}' does not exist or you do not have access to it."
        ))
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            ErrorType::InvalidRequestError,
            "This endpoint does not support this HTTP method.",
        )
        .with_code("method_not_allowed")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            ErrorType::InvalidRequestError,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            415,
            ErrorType::InvalidRequestError,
            "Expected a request body of type application/json.",
        )
        .with_code("unsupported_media_type")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, ErrorType::ServerError, message)
    }

    /// A refused submission, named after the request field at fault: `prompt_param` for the
    /// prompt (`messages` or `prompt`), `constraint_param` for a grammar (`response_format` or
    /// `tools`).
    pub fn from_submit(error: crate::Error, prompt_param: &str, constraint_param: &str) -> Self {
        use crate::Error as E;
        match error {
            E::Engine(EngineError::InvalidParameter { name, message }) => {
                Self::invalid_value(&name, message)
            }
            E::Engine(e @ EngineError::Grammar(_)) => Self::invalid_value(constraint_param, e),
            E::Engine(EngineError::EmptyPrompt) => {
                Self::invalid_value(prompt_param, "the prompt is empty")
            }
            E::Engine(EngineError::PromptTooLong { n_prompt, n_ctx }) => {
                Self::bad_request(format!(
                    "This model's maximum context length is {n_ctx} tokens. However, your \
                     {prompt_param} resulted in {n_prompt} tokens. Please reduce the length \
                     of the {prompt_param}."
                ))
                .with_param(prompt_param)
                .with_code("context_length_exceeded")
            }
            E::Engine(e @ EngineError::QueueFull { .. }) => {
                Self::new(429, ErrorType::RateLimitError, e.to_string())
                    .with_code("rate_limit_exceeded")
            }
            E::Engine(e @ EngineError::Stopped(_)) => {
                Self::new(503, ErrorType::ServerError, e.to_string())
            }
            E::Model(e @ ModelError::TokenOutOfRange { .. }) => {
                Self::invalid_value(prompt_param, e)
            }
            E::Tokenizer(e @ TokenizerError::IdOutOfRange { .. }) => {
                Self::invalid_value(prompt_param, e)
            }
            // The template rejected the conversation (a role it does not know, turns out of
            // order): the request is at fault, not the server.
            E::Tokenizer(e @ TokenizerError::ChatTemplate(_)) => {
                Self::invalid_value(prompt_param, e)
            }
            E::Tokenizer(e @ TokenizerError::Encode(_)) => Self::invalid_value(prompt_param, e),
            other => Self::internal(other.to_string()),
        }
    }

    /// The JSON body, also sent as a server-sent event when a stream fails midway.
    pub fn body(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
