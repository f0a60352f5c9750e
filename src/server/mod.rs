//! `sovereign serve`: an OpenAI-compatible HTTP server (axum + tokio) over the engine service.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both streaming as
//! server-sent events or not), `GET /v1/models`, `GET /v1/models/{id}`, llama.cpp's
//! `POST /tokenize`, `/detokenize` and `/apply-template`, Ollama's `/api/chat`,
//! `/api/generate`, `/api/tags`, `/api/show`, `/api/ps` and `/api/version`, `GET /health`,
//! `GET /metrics` (Prometheus text).
//!
//! Safe by default: it listens on 127.0.0.1; with an API key every endpoint but `/health`
//! needs `Authorization: Bearer KEY`; requests naming a host other than the loopback names (or
//! those allowed) are refused, so a web page cannot reach it through DNS rebinding; CORS is off
//! unless origins are given; bodies are JSON only and bounded; a full queue answers 429.
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` (Ollama's
//! endpoints: `{"error": "..."}`).

mod error;
mod guard;
mod handlers;
mod llama_cpp;
mod metrics;
mod ollama;
pub mod web;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorType, ServerError};
pub use guard::AllowedHosts;

use crate::engine::service::EngineHandle;
use metrics::HttpCounters;

/// Default request body limit: far more than a full context of text.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How the server listens and whom it answers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address or name to listen on.
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// The name clients use in `model`; requests naming another get 404.
    pub model_id: String,
    pub api_key: Option<String>,
    /// Origins browsers may call from (`*`: any); none turns CORS off.
    pub cors_origins: Vec<String>,
    /// Hosts allowed in the `Host` header besides the loopback names (`*`: any).
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            model_id: "default".into(),
            api_key: None,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What the handlers read on every request.
#[derive(Debug)]
struct Settings {
    model_id: String,
    api_key: Option<String>,
    allowed_hosts: AllowedHosts,
    max_body_bytes: usize,
}

#[derive(Clone)]
struct AppState {
    engine: EngineHandle,
    config: Arc<Settings>,
    http: Arc<HttpCounters>,
    /// Unix time the server started (the model's `created`).
    started: u64,
}

/// A bound, configured server, not yet serving: binding comes first so a busy port fails
/// before a model spends time loading.
pub struct Server {
    listener: TcpListener,
    settings: Settings,
    cors: Option<CorsLayer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Server {
    /// Checks the configuration and binds its address.
    pub fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        if config
            .api_key
            .as_deref()
            .is_some_and(|k| k.trim().is_empty())
        {
            return Err(ServerError::Config {
                name: "--api-key",
                message: "the key is empty".into(),
            });
        }
        if config.max_body_bytes == 0 {
            return Err(ServerError::Config {
                name: "--max-body-bytes",
                message: "must be at least 1".into(),
            });
        }
        let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
            .to_socket_addrs()
            .map_err(|source| ServerError::Resolve {
                host: config.host.clone(),
                source,
            })?
            .collect();
        let addr = addrs.first().copied().ok_or_else(|| ServerError::Resolve {
            host: config.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
        let loopback = addrs.iter().all(|a| a.ip().is_loopback());
        let allowed_hosts = AllowedHosts::new(loopback, &config.allowed_hosts)?;
        if allowed_hosts.is_open() {
            tracing::warn!(
                "no Host allow-list: any host name is answered (use --allowed-host to restrict it)"
            );
        }
        let cors = guard::cors(&config.cors_origins)?;
        let listener = TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(ServerError::Io)?;
        Ok(Server {
            listener,
            settings: Settings {
                model_id: config.model_id,
                api_key: config.api_key,
                allowed_hosts,
                max_body_bytes: config.max_body_bytes,
            },
            cors,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::Io)
    }

    /// The routes and their guards.
    fn router(settings: Settings, cors: Option<CorsLayer>, engine: EngineHandle) -> Router {
        let state = AppState {
            engine,
            config: Arc::new(settings),
            http: Arc::new(HttpCounters::default()),
            started: handlers::unix_now(),
        };
        let routes = Router::new()
            .route("/v1/chat/completions", post(handlers::chat_completions))
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/models", get(handlers::list_models))
            .route("/v1/models/{*id}", get(handlers::get_model))
            .route("/v1/embeddings", post(handlers::embeddings))
            .route("/embedding", post(handlers::llama_embedding))
            .route("/embeddings", post(handlers::llama_embedding))
            .route("/completion", post(llama_cpp::completion))
            .route("/completions", post(llama_cpp::completion))
            .route("/props", get(llama_cpp::props))
            .route("/tokenize", post(handlers::tokenize))
            .route("/detokenize", post(handlers::detokenize))
            .route("/apply-template", post(handlers::apply_template))
            .route("/api/chat", post(ollama::chat))
            .route("/api/generate", post(ollama::generate))
            .route("/api/tags", get(ollama::tags))
            .route("/api/ps", get(ollama::ps))
            .route("/api/show", post(ollama::show))
            .route("/api/version", get(ollama::version))
            .route("/api/embed", post(ollama::embed))
            .route("/api/embeddings", post(ollama::embeddings))
            .route("/api/{*rest}", axum::routing::any(ollama::not_found))
            .route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(from_fn_with_state(state.clone(), guard::check_api_key));
        // Outside the key check, so browsers' preflight requests (which carry no key) pass.
        let routes = match cors {
            Some(cors) => routes.layer(cors),
            None => routes,
        };
        routes
            .layer(from_fn_with_state(state.clone(), guard::check_host))
            .layer(from_fn_with_state(state.clone(), metrics::count_responses))
            .layer(TraceLayer::new_for_http())
            .with_state(state)
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    pub async fn serve(
        self,
        engine: EngineHandle,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(ServerError::Io)?;
        let app = Self::router(self.settings, self.cors, engine);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServerError::Io)
    }

    /// Serves on a runtime of its own until Ctrl-C or SIGTERM. The first signal stops
    /// accepting connections and lets running requests finish; a second one stops at once
    /// (dropping the streams, which cancels their requests).
    pub fn run(self, engine: EngineHandle) -> Result<(), ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("sovereign-http")
            .build()
            .map_err(ServerError::Runtime)?;
        let result = runtime.block_on(async move {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serve = self.serve(engine, async move {
                let _ = stopped.await;
            });
            tokio::pin!(serve);
            tokio::select! {
                result = &mut serve => return result,
                () = shutdown_signal() => {}
            }
            tracing::warn!("shutting down: finishing running requests (again to stop now)");
            let _ = stop.send(());
            tokio::select! {
                result = &mut serve => result,
                () = shutdown_signal() => {
                    tracing::warn!("stopping now");
                    Ok(())
                }
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        result
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
