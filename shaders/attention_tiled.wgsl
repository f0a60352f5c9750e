//!include common/step.wgsl

// Prefill attention over an f32 KV cache.
alias kv_t = f32;

//!include common/attention_io.wgsl
//!include common/attention_tiled.wgsl
//!include common/kv_plain.wgsl
