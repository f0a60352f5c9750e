//! What stands between the network and the handlers: the Host allow-list (against DNS
//! rebinding), the API key, CORS, and a bounded JSON body reader.

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use super::AppState;
use super::error::{ApiError, ServerError};

/// Hosts a request may name in its `Host` header: a name or address, with an optional port
/// (`None` matches any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    host: String,
    port: Option<u16>,
}

/// The Host allow-list; `None` allows every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Option<Vec<HostRule>>);

/// Splits `name[:port]` or `[v6][:port]` and normalizes the name (lower case, no trailing dot).
fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (host, rest) = if let Some(v6) = value.strip_prefix('[') {
        let end = v6.find(']')?;
        (&value[..end + 2], &v6[end + 1..])
    } else {
        match value.rsplit_once(':') {
            Some((h, _)) => (h, &value[h.len()..]),
            None => (value, ""),
        }
    };
    let port = match rest.strip_prefix(':') {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None if rest.is_empty() => None,
        None => return None,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return None;
    }
    Some((host, port))
}

impl AllowedHosts {
    /// The loopback names (any port) when `loopback`, plus `extra`; `*` in `extra`, or a
    /// server reachable from other machines with no `extra`, allows every host.
    pub fn new(loopback: bool, extra: &[String]) -> Result<Self, ServerError> {
        if extra.iter().any(|h| h == "*") || (!loopback && extra.is_empty()) {
            return Ok(AllowedHosts(None));
        }
        let mut rules: Vec<HostRule> = Vec::new();
        if loopback {
            for host in ["localhost", "127.0.0.1", "[::1]"] {
                rules.push(HostRule {
                    host: host.into(),
                    port: None,
                });
            }
        }
        for h in extra {
            let (host, port) = split_host(h).ok_or_else(|| ServerError::Config {
                name: "--allowed-host",
                message: format!("{h:?} is not a host name, an address, or either with :port"),
            })?;
            rules.push(HostRule { host, port });
        }
        Ok(AllowedHosts(Some(rules)))
    }

    pub fn allows(&self, host: &str) -> bool {
        let Some(rules) = &self.0 else {
            return true;
        };
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        rules
            .iter()
            .any(|r| r.host == name && (r.port.is_none() || r.port == port))
    }

    pub fn is_open(&self) -> bool {
        self.0.is_none()
    }
}

/// Rejects a `Host` the server does not answer to: a page on another site that rebinds its
/// name to 127.0.0.1 still sends its own name here.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.allowed_hosts.is_open() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or(""))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if state.config.allowed_hosts.allows(h) => next.run(request).await,
        Some(h) => {
            tracing::warn!(
                host = h,
                "refused a request for a host not on the allow-list"
            );
            ApiError::forbidden(format!(
                "Host {h:?} is not allowed (start the server with --allowed-host to allow it)."
            ))
            .with_code("host_not_allowed")
            .into_response()
        }
        None => ApiError::bad_request("The request has no Host header.")
            .with_code("missing_host")
            .into_response(),
    }
}

/// Compares without an early exit, so response times do not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Paths anyone may read: load balancers probe health without credentials.
fn is_public(path: &str) -> bool {
    path == "/health"
}

pub async fn check_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(request).await;
    };
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let sent = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("?").trim())
        .filter(|v| !v.is_empty());
    match (sent, sent.and_then(bearer_token)) {
        (_, Some(g)) if constant_time_eq(g.as_bytes(), key.as_bytes()) => next.run(request).await,
        (_, Some(_)) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        (Some(_), None) => ApiError::unauthorized(
            "The Authorization header is not of the Bearer scheme. Send the key as \
             'Authorization: Bearer KEY'.",
        )
        .into_response(),
        (None, None) => ApiError::unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
        )
        .into_response(),
    }
}

/// The credentials of a Bearer `Authorization` value; the scheme's name is case-insensitive
/// (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// CORS for the given origins (`*`: any); `None` when there are none, so browsers on other
/// origins cannot read anything.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/')).map_err(|e| ServerError::Config {
                    name: "--cors-origin",
                    message: format!("{o:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(AllowMethods::list([Method::GET, Method::POST]))
            // Client libraries send their own headers (the OpenAI SDKs' x-stainless-*).
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(3600)),
    ))
}

/// A JSON request body read under the size limit. Only `application/json` is taken: a form or
/// text body from a page on another origin needs no CORS preflight, so accepting it would let
/// any web page spend this server's compute.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        // Counted as it arrives: a chunked body declares no length.
        let mut data = Body::into_data_stream(request.into_body());
        let mut bytes = Vec::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("Could not read the request body: {e}"))
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_request(format!(
                "We could not parse the JSON body of your request ({e})."
            ))
            .with_code("invalid_json")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_allow_list() {
        let hosts =
            AllowedHosts::new(true, &["api.example.com".into(), "10.0.0.5:8080".into()]).unwrap();
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:1",
            "127.0.0.1:9",
            "[::1]:8080",
            "[::1]",
            "api.example.com",
            "api.example.com:443",
            "10.0.0.5:8080",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.2",
            "10.0.0.5:8081",
            "10.0.0.5",
            "",
            "localhost:99999",
            "[::1",
            "user@localhost",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(AllowedHosts::new(false, &[]).unwrap().is_open());
        assert!(AllowedHosts::new(true, &["*".into()]).unwrap().is_open());
        assert!(
            !AllowedHosts::new(false, &["a.b".into()])
                .unwrap()
                .allows("localhost")
        );
        assert!(AllowedHosts::new(true, &["bad host".into()]).is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
