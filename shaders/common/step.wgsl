// What changes from one forward step to the next, written by the host in one queue write.
struct Step {
    // Tokens processed in this step.
    n_tokens: u32,
    // Position of the first of them in the sequence.
    pos0: u32,
    // Positions held in the KV cache once this step is done (pos0 + n_tokens).
    n_kv: u32,
    _pad: u32,
    // (n_tokens) token ids.
    tokens: array<u32>,
}
