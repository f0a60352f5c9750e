enable f16;
//!include common/step.wgsl

// Attention over an f16 KV cache, where the adapter has shader-f16.
alias kv_t = f16;

//!include common/attention_io.wgsl
//!include common/attention.wgsl
//!include common/kv_plain.wgsl
//!include common/attention_dot.wgsl
