//! `sovereign web`: serves the built browser demo (`scripts/build-web` writes it to `web/dist`)
//! and one model file, so the page can load the model from the same origin. Static files only:
//! the engine runs in the visitor's browser, not here.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use super::ServerError;

/// What `sovereign web` serves and where.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// The built page: `index.html`, the JS API and `pkg/` with the WebAssembly.
    pub dir: PathBuf,
    /// Served at `/models/FILE_NAME` and named in `/config.json`, which the page loads first.
    pub model: Option<PathBuf>,
}

/// A bound static server, not yet serving.
#[derive(Debug)]
pub struct WebServer {
    listener: TcpListener,
    router: Router,
}

impl WebServer {
    /// Checks that `dir` holds a built page and that the model is a file, then binds.
    pub fn bind(config: WebConfig) -> Result<WebServer, ServerError> {
        let wasm = config.dir.join("pkg").join("sovereign_web_bg.wasm");
        if !config.dir.join("index.html").is_file() || !wasm.is_file() {
            return Err(ServerError::Config {
                name: "--dir",
                message: format!(
                    "{} does not hold a built page (index.html and pkg/sovereign_web_bg.wasm); \
                     build it with scripts/build-web",
                    config.dir.display()
                ),
            });
        }
        let mut model_url = None;
        let mut router = Router::new();
        if let Some(model) = &config.model {
            let name = model
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|_| model.is_file())
                .ok_or_else(|| ServerError::Config {
                    name: "--model",
                    message: format!("{} is not a readable file", model.display()),
                })?;
            // Percent-encoding keeps odd file names valid in the URL.
            let encoded: String = name
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let path = format!("/models/{encoded}");
            router = router.route_service(&path, ServeFile::new(model));
            model_url = Some(format!("models/{encoded}"));
        }
        let config_json = serde_json::json!({ "model_url": model_url }).to_string();
        let router = router
            .route(
                "/config.json",
                get(move || {
                    let body = config_json.clone();
                    async move { ([(header::CONTENT_TYPE, "application/json")], body) }
                }),
            )
            .fallback_service(ServeDir::new(&config.dir))
            // The page and the worker change with each build: browsers must ask again.
            .layer(SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            ));

        let addr: SocketAddr = (config.host.as_str(), config.port)
            .to_socket_addrs()
            .map_err(|source| ServerError::Resolve {
                host: config.host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ServerError::Resolve {
                host: config.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let listener = TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(ServerError::Io)?;
        Ok(WebServer { listener, router })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::Io)
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub fn run(self) -> Result<(), ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("sovereign-web")
            .build()
            .map_err(ServerError::Runtime)?;
        runtime.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(self.listener).map_err(ServerError::Io)?;
            axum::serve(listener, self.router)
                .with_graceful_shutdown(super::shutdown_signal())
                .await
                .map_err(ServerError::Io)
        })
    }
}
