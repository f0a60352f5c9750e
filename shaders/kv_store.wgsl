//!include common/step.wgsl
//!include common/rope.wgsl

// The KV cache in f32: the path every adapter has.
alias kv_t = f32;

//!include common/kv_store_io.wgsl
//!include common/kv_store.wgsl
