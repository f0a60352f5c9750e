// What changes from one forward step to the next, written by the host in one queue write. A step
// runs tokens of one or more sequences; each token carries its position and its sequence's slot,
// and K/V live in pages of a shared pool found through each slot's block table.

struct Step {
    // Tokens processed in this step.
    n_tokens: u32,
    // Rows whose logits the step computes (listed in the out-row region).
    n_out: u32,
    // Capacity of each per-token region of `data`.
    max_tokens: u32,
    // Positions per KV page.
    page_size: u32,
    // Block-table entries per slot.
    pages_per_seq: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Token ids (max_tokens), positions (max_tokens), slots (max_tokens), out rows (max_tokens),
    // then the block tables: (slots, pages_per_seq) page numbers.
    data: array<u32>,
}

@group(0) @binding(1) var<storage, read> step: Step;

fn step_token(t: u32) -> u32 {
    return step.data[t];
}

fn step_pos(t: u32) -> u32 {
    return step.data[step.max_tokens + t];
}

fn step_slot(t: u32) -> u32 {
    return step.data[2u * step.max_tokens + t];
}

// The token row whose logits go to output row `i`.
fn step_out_row(i: u32) -> u32 {
    return step.data[3u * step.max_tokens + i];
}

// The KV pool row holding position `pos` of the sequence in `slot`.
fn kv_row(slot: u32, pos: u32) -> u32 {
    let page = step.data[4u * step.max_tokens + slot * step.pages_per_seq + pos / step.page_size];
    return page * step.page_size + pos % step.page_size;
}
