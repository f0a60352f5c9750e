//!include common/step.wgsl

// Attention over an f32 KV cache: the path every adapter has.
alias kv_t = f32;

//!include common/attention_io.wgsl
//!include common/attention.wgsl
//!include common/kv_plain.wgsl
//!include common/attention_dot.wgsl
