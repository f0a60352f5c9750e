//! The wasm-bindgen surface the Web Worker drives (`js/worker.js`). Every method returns at once
//! (a value or a promise) so no Rust borrow outlives a call: a `cancel` can arrive while a
//! generation is awaiting the GPU.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Promise, Uint8Array};
use serde_json::{Value, json};
use sovereign::engine::Model;
use sovereign::engine::service::{Canceller, Engine, EngineOptions};
use sovereign::format::GgufFile;
use sovereign::gpu::{GpuContext, GpuOptions};
use sovereign::model::LoadOptions;
use sovereign::openai::ApiError;
use sovereign::openai::{request, response};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::chat::{self, Endpoint};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// An API error as JavaScript receives it: OpenAI's body (`{error: {message, type, param,
/// code}}`) with the HTTP status it would have had.
fn api_error(e: &ApiError) -> JsValue {
    let body = e.body();
    match js_sys::JSON::parse(&body) {
        Ok(v) => {
            let _ = js_sys::Reflect::set(&v, &"status".into(), &JsValue::from(e.status));
            v
        }
        Err(_) => JsValue::from_str(&body),
    }
}

fn to_js(value: &Value) -> JsValue {
    js_sys::JSON::parse(&value.to_string()).unwrap_or(JsValue::NULL)
}

fn error(message: impl std::fmt::Display) -> JsValue {
    api_error(&ApiError::internal(message.to_string()))
}

fn invalid_model(e: impl std::fmt::Display) -> JsValue {
    api_error(
        &ApiError::bad_request(format!("This file cannot be loaded as a model: {e}"))
            .with_param("source")
            .with_code("invalid_model"),
    )
}

struct State {
    ctx: Arc<GpuContext>,
    engine: Option<Engine>,
    running: HashMap<u32, Canceller>,
}

/// One adapter and, once loaded, one model served by the engine's scheduler.
#[wasm_bindgen]
pub struct WebEngine {
    state: Rc<RefCell<State>>,
}

/// Opens the browser's WebGPU adapter. `cpu_adapter`: the page found that the adapter is a
/// software one (SwiftShader), which WebGPU does not say; the kernels then take their CPU shapes.
/// `subgroups`: the page added WebGPU's `subgroups` feature to the device request (wgpu's web
/// backend does not know it), so the subgroup kernels may run.
#[wasm_bindgen(js_name = createEngine)]
pub async fn create_engine(
    cpu_adapter: Option<bool>,
    subgroups: Option<bool>,
) -> Result<WebEngine, JsValue> {
    let options = GpuOptions {
        cpu_adapter,
        page_subgroups: subgroups.unwrap_or(false),
        ..Default::default()
    };
    let ctx = GpuContext::new(&options).await.map_err(error)?;
    Ok(WebEngine {
        state: Rc::new(RefCell::new(State {
            // The library shares the context as an `Arc` on every target; on the web it never
            // leaves this thread.
            #[allow(clippy::arc_with_non_send_sync)]
            ctx: Arc::new(ctx),
            engine: None,
            running: HashMap::new(),
        })),
    })
}

/// The file's bytes in one shared buffer, copied once out of JavaScript's.
fn file_bytes(bytes: &Uint8Array) -> Result<Arc<[u8]>, JsValue> {
    let len = bytes.length() as usize;
    let mut buffer: Arc<[MaybeUninit<u8>]> = Arc::new_zeroed_slice(len);
    let Some(slot) = Arc::get_mut(&mut buffer) else {
        return Err(error("the model buffer is shared"));
    };
    bytes.copy_to_uninit(slot);
    // SAFETY: `new_zeroed_slice` zeroed every byte, and any bit pattern is a valid `u8`.
    Ok(unsafe { buffer.assume_init() })
}

#[wasm_bindgen]
impl WebEngine {
    /// The adapter and its features, as JSON-like object.
    pub fn adapter(&self) -> JsValue {
        let state = self.state.borrow();
        let info = state.ctx.adapter_info();
        let features = state.ctx.features();
        let limits = state.ctx.limits();
        to_js(&json!({
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "driver": info.driver,
            "cpu": features.cpu,
            "shader_f16": features.shader_f16,
            "subgroups": features.subgroups,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_buffer_size": limits.max_buffer_size,
        }))
    }

    /// Loads a GGUF model from its bytes, replacing the model loaded before. `options` may hold
    /// `context_size` (positions per sequence) and `sequences` (requests served at once);
    /// `on_progress(done, total)` follows the upload. Resolves to the model's description.
    pub fn load(&self, bytes: Uint8Array, options: JsValue, on_progress: Function) -> Promise {
        let state = Rc::clone(&self.state);
        future_to_promise(async move {
            let options: Value = if options.is_undefined() || options.is_null() {
                Value::Null
            } else {
                js_sys::JSON::stringify(&options)
                    .ok()
                    .and_then(|s| s.as_string())
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(Value::Null)
            };
            let load = load_options(&options).map_err(|e| api_error(&e))?;
            // A file that is not a runnable model is refused while the loaded one keeps serving.
            let file = GgufFile::from_bytes(file_bytes(&bytes)?).map_err(invalid_model)?;
            drop(bytes);
            Model::check(&file).map_err(invalid_model)?;
            // The old model's memory goes back before the new one is uploaded.
            let ctx = {
                let mut s = state.borrow_mut();
                s.engine = None;
                s.running.clear();
                Arc::clone(&s.ctx)
            };
            let mut report = |p: sovereign::model::llama::LoadProgress| {
                let _ = on_progress.call2(
                    &JsValue::NULL,
                    &JsValue::from(p.done as f64),
                    &JsValue::from(p.total as f64),
                );
            };
            let model = Model::load(Arc::clone(&ctx), &file, &load, &mut report)
                .await
                .map_err(error)?;
            let llama = model.llama();
            let description = json!({
                "name": model.name(),
                "arch": model.config().arch,
                "n_ctx": llama.n_ctx(),
                "n_vocab": model.config().n_vocab,
                "sequences": llama.n_seq(),
                "weight_bytes": llama.weight_bytes(),
                "kv_bytes": llama.kv_bytes(),
                "kv_type": llama.kv_type().name(),
                "adapter": ctx.adapter_info().name,
            });
            let engine = Engine::start(model, EngineOptions::default()).map_err(error)?;
            state.borrow_mut().engine = Some(engine);
            Ok(to_js(&description))
        })
    }

    /// Starts one request (`endpoint` is `chat` or `completions`; `body` is the OpenAI request
    /// as JSON) and calls `on_chunk(chunk)` for every stream chunk. Resolves when the last chunk
    /// went out; rejects with an OpenAI error body.
    pub fn generate(&self, id: u32, endpoint: &str, body: &str, on_chunk: Function) -> Promise {
        let endpoint = match endpoint {
            "chat" => Endpoint::Chat,
            "completions" => Endpoint::Completions,
            other => {
                return Promise::reject(&error(format!("unknown endpoint {other:?}")));
            }
        };
        let submitted = {
            let mut s = self.state.borrow_mut();
            let Some(engine) = &s.engine else {
                return Promise::reject(&api_error(
                    &ApiError::bad_request("No model is loaded.").with_code("model_not_loaded"),
                ));
            };
            let started = chat::submit(&engine.handle(), body, endpoint, format!("web-{id}"));
            if let Ok(g) = &started {
                s.running.insert(id, g.canceller());
            }
            started
        };
        let mut generation = match submitted {
            Ok(g) => g,
            Err(e) => return Promise::reject(&api_error(&e)),
        };
        let state = Rc::clone(&self.state);
        future_to_promise(async move {
            let mut outcome = Ok(JsValue::UNDEFINED);
            while let Some(chunks) = generation.next_chunks().await {
                match chunks {
                    Ok(chunks) => {
                        for c in &chunks {
                            let _ = on_chunk.call1(&JsValue::NULL, &to_js(c));
                        }
                    }
                    Err(e) => {
                        outcome = Err(api_error(&e));
                        break;
                    }
                }
            }
            state.borrow_mut().running.remove(&id);
            outcome
        })
    }

    /// Embeds the inputs of an OpenAI embeddings request (`body` as JSON). Resolves to the
    /// OpenAI response body (vectors as numbers unless `encoding_format` is `base64`); rejects
    /// with an OpenAI error body.
    pub fn embeddings(&self, body: &str) -> Promise {
        let Some(engine) = &self.state.borrow().engine else {
            return Promise::reject(&api_error(
                &ApiError::bad_request("No model is loaded.").with_code("model_not_loaded"),
            ));
        };
        let handle = engine.handle();
        let parsed = serde_json::from_str::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))
            .and_then(|body| request::embeddings(&body, "input"));
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Promise::reject(&api_error(&e)),
        };
        let info = handle.model_info();
        if let Err(e) = parsed.check_dimensions(info.n_embd) {
            return Promise::reject(&api_error(&e));
        }
        let model = info.name.clone();
        let format = parsed.encoding_format;
        let pending = match handle.embed(parsed.request) {
            Ok(p) => p,
            Err(e) => {
                return Promise::reject(&api_error(&ApiError::from_submit(e, "input", "input")));
            }
        };
        future_to_promise(async move {
            let embeddings = pending
                .wait()
                .await
                .map_err(|e| api_error(&ApiError::from_submit(e, "input", "input")))?;
            Ok(to_js(&response::embeddings_body(
                &embeddings,
                format,
                &model,
            )))
        })
    }

    /// Stops request `id`; its stream then ends with its last chunk (`finish_reason` `stop`).
    pub fn cancel(&self, id: u32) -> bool {
        match self.state.borrow().running.get(&id) {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }

    /// The engine's counters and gauges (requests, tokens, KV pages, decode rate).
    pub fn stats(&self) -> JsValue {
        let s = self.state.borrow();
        let Some(engine) = &s.engine else {
            return JsValue::NULL;
        };
        let h = engine.handle();
        let m = h.metrics();
        let info = h.model_info();
        to_js(&json!({
            "model": info.name,
            "adapter": info.adapter,
            "backend": info.backend,
            "n_ctx": info.n_ctx,
            "requests_submitted": m.requests_submitted,
            "requests_finished": m.requests_finished,
            "requests_cancelled": m.requests_cancelled,
            "running_sequences": m.running_sequences,
            "queue_depth": m.queue_depth,
            "prompt_tokens": m.prompt_tokens,
            "cached_prompt_tokens": m.cached_prompt_tokens,
            "generated_tokens": m.generated_tokens,
            "decode_tokens_per_second": m.decode_tokens_per_second,
            "kv_pages_total": m.kv_pages_total,
            "kv_pages_used": m.kv_pages_used,
            "kv_pages_cached": m.kv_pages_cached,
        }))
    }

    /// Aggregate decode rate of `streams` concurrent greedy streams of `n_prompt` random prompt
    /// tokens and `n_gen` generated ones, measured as `sovereign bench --streams` measures it.
    pub fn bench(&self, streams: u32, n_prompt: u32, n_gen: u32) -> Promise {
        let handle = match &self.state.borrow().engine {
            Some(e) => e.handle(),
            None => return Promise::reject(&error("no model is loaded")),
        };
        future_to_promise(async move {
            let r = sovereign::bench::streams(&handle, streams as usize, n_prompt, n_gen, 42)
                .await
                .map_err(error)?;
            Ok(to_js(&json!({
                "streams": r.n_streams,
                "n_prompt": n_prompt,
                "n_gen": n_gen,
                "tokens_per_second": r.tokens_per_second(),
                "window_tokens": r.window_tokens,
                "window_seconds": r.window_seconds,
            })))
        })
    }

    /// Runs every kernel against its CPU reference on random inputs; resolves to one result per
    /// check (`name`, `max_error`, `tolerance`, `passed`).
    #[wasm_bindgen(js_name = kernelChecks)]
    pub fn kernel_checks(&self) -> Promise {
        let ctx = Arc::clone(&self.state.borrow().ctx);
        future_to_promise(async move {
            let checks = sovereign::kernels::selftest::run_all(&ctx)
                .await
                .map_err(error)?;
            Ok(to_js(&serde_json::to_value(&checks).unwrap_or(Value::Null)))
        })
    }
}

fn load_options(options: &Value) -> Result<LoadOptions, ApiError> {
    let mut load = LoadOptions::default();
    let field = |name: &str, min: u64, max: u64| -> Result<Option<u32>, ApiError> {
        match options.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n as u32)),
                _ => Err(ApiError::invalid_value(
                    name,
                    format!("expected an integer from {min} to {max}"),
                )),
            },
        }
    };
    load.n_ctx = field("context_size", 16, 1 << 20)?;
    if let Some(n) = field("sequences", 1, 256)? {
        load.n_seq = n;
    }
    Ok(load)
}
