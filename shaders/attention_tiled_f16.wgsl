enable f16;
//!include common/step.wgsl

// Prefill attention over an f16 KV cache, where the adapter has shader-f16.
alias kv_t = f16;

//!include common/attention_io.wgsl
//!include common/attention_tiled.wgsl
//!include common/kv_plain.wgsl
