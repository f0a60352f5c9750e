//! Shared test helpers: the test model, the reference data, the GPU.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sovereign::gpu::{GpuContext, GpuOptions};

/// The SmolLM2-135M-Instruct Q4_1 file: `SOVEREIGN_TEST_MODEL`, else the default model cache.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SOVEREIGN_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is not set");
    let path = home.join("sovereign/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "test model missing at {}: run `sovereign run` once or set SOVEREIGN_TEST_MODEL", path.display());
    path
}

/// `tests/reference/<name>`.
pub fn reference_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(name)
}

pub fn greedy_cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(reference_path("smollm2-135m-instruct-q4_1.greedy.json")).unwrap();
    serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap()
}

/// A GPU context; fails the test loudly when there is no adapter.
pub fn gpu(options: GpuOptions) -> Arc<GpuContext> {
    match pollster::block_on(GpuContext::new(&options)) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => panic!("no usable GPU adapter ({e}); GPU tests never skip"),
    }
}
