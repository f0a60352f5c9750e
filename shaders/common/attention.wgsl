// Causal attention over the paged KV cache with grouped K/V heads, one workgroup per (query head,
// token). Token t attends positions 0..=step_pos(t) of its own sequence (slot step_slot(t)),
// read through the slot's block table. Keys are visited in tiles of WG_SIZE with an online
// softmax (running maximum and sum), so the score row is never stored whole. Query head h reads K/V head h / (n_head / n_head_kv):
// the shared heads are read in place, never copied. Needs common/attention_io.wgsl; the
// including shader reads the cache through `k_dot_q(row, kv_off)`
// (q_head . K[row, kv_off..kv_off + head_dim]) and `v_at(row, col)`.
//
// Flash-decoding: with SPLIT_KEYS > 0 a token's keys are split across workgroups, so that a
// few heads and tokens still fill a GPU at long contexts. Workgroup (head + n_head * split, t)
// covers keys split * SPLIT_KEYS .. + SPLIT_KEYS and writes into `out`, instead of the
// normalized row, its partial: the unnormalized row, then its running max and sum, at
// ((t * n_head + head) * n_splits + split) * (head_dim + 2). attention_merge.wgsl joins them.
override SPLIT_KEYS: u32 = 0u;

var<workgroup> q_head: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG_SIZE>;
var<workgroup> reduce: array<f32, WG_SIZE>;
// Pool rows of the keys in the current tile.
var<workgroup> key_rows: array<u32, WG_SIZE>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = wid.x % params.n_head;
    let split = wid.x / params.n_head;
    let t = wid.y;
    if (t >= step.n_tokens) {
        return;
    }
    let hd = params.head_dim;
    let kv_head = head / (params.n_head / params.n_head_kv);
    let q_at = t * params.q_stride + head * hd;
    for (var d = lid; d < hd; d += WG_SIZE) {
        q_head[d] = q[q_at + d] * params.scale;
    }
    workgroupBarrier();

    // This thread owns output dimensions lid, lid + WG_SIZE, ...
    var acc: array<f32, 4>;
    var running_max = NEG_BIG;
    var running_sum = 0.0;
    // Keys key_begin..=last_key; none where a split starts past the token's position.
    var key_begin = 0u;
    var last_key = step_pos(t);
    if (SPLIT_KEYS > 0u) {
        key_begin = split * SPLIT_KEYS;
        last_key = min(last_key, key_begin + SPLIT_KEYS - 1u);
    }
    let slot = step_slot(t);
    let kv_off = kv_head * hd;

    for (var j0 = key_begin; j0 <= last_key; j0 += WG_SIZE) {
        let j = j0 + lid;
        var score = NEG_BIG;
        if (j <= last_key) {
            let row = kv_row(slot, j);
            key_rows[lid] = row;
            score = k_dot_q(row, kv_off);
        }
        reduce[lid] = score;
        workgroupBarrier();
        for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                reduce[lid] = max(reduce[lid], reduce[lid + s]);
            }
            workgroupBarrier();
        }
        let new_max = max(running_max, reduce[0]);
        workgroupBarrier();
        let p = select(0.0, exp(score - new_max), j <= last_key);
        probs[lid] = p;
        reduce[lid] = p;
        workgroupBarrier();
        for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                reduce[lid] += reduce[lid + s];
            }
            workgroupBarrier();
        }
        let correction = exp(running_max - new_max);
        running_sum = running_sum * correction + reduce[0];
        running_max = new_max;
        let n_keys = min(WG_SIZE, last_key + 1u - j0);
        for (var c = 0u; c < 4u; c++) {
            acc[c] *= correction;
        }
        // Eight keys an iteration for all of this invocation's dimensions at once, so that
        // their loads are in flight together.
        var jj = 0u;
        for (; jj + 8u <= n_keys; jj += 8u) {
            for (var c = 0u; c < 4u; c++) {
                let d = kv_off + lid + c * WG_SIZE;
                if (lid + c * WG_SIZE < hd) {
                    acc[c] += probs[jj] * v_at(key_rows[jj], d)
                        + probs[jj + 1u] * v_at(key_rows[jj + 1u], d)
                        + probs[jj + 2u] * v_at(key_rows[jj + 2u], d)
                        + probs[jj + 3u] * v_at(key_rows[jj + 3u], d)
                        + probs[jj + 4u] * v_at(key_rows[jj + 4u], d)
                        + probs[jj + 5u] * v_at(key_rows[jj + 5u], d)
                        + probs[jj + 6u] * v_at(key_rows[jj + 6u], d)
                        + probs[jj + 7u] * v_at(key_rows[jj + 7u], d);
                }
            }
        }
        for (; jj < n_keys; jj++) {
            for (var c = 0u; c < 4u; c++) {
                if (lid + c * WG_SIZE < hd) {
                    acc[c] += probs[jj] * v_at(key_rows[jj], kv_off + lid + c * WG_SIZE);
                }
            }
        }
        workgroupBarrier();
    }

    if (SPLIT_KEYS > 0u) {
        let part_at = ((t * params.n_head + head) * (nwg.x / params.n_head) + split) * (hd + 2u);
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * WG_SIZE;
            if (d < hd) {
                out[part_at + d] = acc[c];
            }
        }
        if (lid == 0u) {
            out[part_at + hd] = running_max;
            out[part_at + hd + 1u] = running_sum;
        }
        return;
    }
    let out_at = t * params.out_stride + head * hd;
    for (var c = 0u; c < 4u; c++) {
        let d = lid + c * WG_SIZE;
        if (d < hd) {
            out[out_at + d] = acc[c] / running_sum;
        }
    }
}
