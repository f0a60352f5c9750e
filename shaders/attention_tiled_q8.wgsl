//!include common/step.wgsl
//!include common/kv_q8.wgsl

// Prefill attention over a Q8_0 KV cache.
alias kv_t = u32;

//!include common/attention_io.wgsl
//!include common/attention_tiled.wgsl
