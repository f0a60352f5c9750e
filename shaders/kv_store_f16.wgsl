enable f16;
//!include common/step.wgsl
//!include common/rope.wgsl

// The KV cache in f16, where the adapter has shader-f16: half the memory and half the reads of
// attention.
alias kv_t = f16;

//!include common/kv_store_io.wgsl
//!include common/kv_store.wgsl
