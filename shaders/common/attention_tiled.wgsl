// Causal attention for prefill, FlashAttention-style: one workgroup per (K/V head, block of
// consecutive tokens), one invocation per (token, query head of the group). The workgroup loads
// a tile of keys and values of its sequence into workgroup memory once and every query of the
// group and of the block reads it there, so a K/V row is read from the cache once per block
// rather than once per query; each invocation keeps its own running maximum, sum and output row
// (online softmax), so no score matrix is stored and no reduction crosses invocations. A block
// whose tokens belong to several sequences (a batched step) is processed sequence by sequence.
// Loops over head_dim are unrolled by 32: lavapipe (Mesa's llvmpipe) ends an invocation's loops
// after 65535 iterations in all, which the host keeps this kernel under
// (`Attention::tiled_runs`). Needs common/attention_io.wgsl; the including shader
// reads the cache through `k_at(row, col)` and `v_at(row, col)`.

// K and V tile capacity in values each: 12 KiB of workgroup memory for both, under WebGPU's
// 16 KiB floor; keys per tile = TILE_VALUES / head_dim, at most MAX_TILE_KEYS.
const TILE_VALUES: u32 = 1536u;
const MAX_TILE_KEYS: u32 = 32u;

// Keys (values) of the tile, head_dim / 4 vec4s each.
var<workgroup> k_tile: array<vec4<f32>, TILE_VALUES / 4u>;
var<workgroup> v_tile: array<vec4<f32>, TILE_VALUES / 4u>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let kv_head = wid.x;
    let hd = params.head_dim;
    let group = params.n_head / params.n_head_kv;
    let block_tokens = WG_SIZE / group;
    let t0 = wid.y * block_tokens;
    let t_end = min(t0 + block_tokens, step.n_tokens);
    let tile_keys = min(TILE_VALUES / hd, MAX_TILE_KEYS);
    let kv_off = kv_head * hd;

    // This invocation's query: token t, head `head`.
    let t = t0 + lid / group;
    let head = kv_head * group + lid % group;
    let mine = lid < block_tokens * group && t < t_end;
    var my_pos = 0u;
    // head_dim is a multiple of 32 (checked on the host): the loops over it go 8 vec4s at a time.
    let hd4 = hd / 4u;
    var q_row: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
    var acc: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
    var running_max = NEG_BIG;
    var running_sum = 0.0;
    if (mine) {
        my_pos = step_pos(t);
        let q_at = t * params.q_stride + head * hd;
        for (var d = 0u; d < hd4; d++) {
            let at = q_at + 4u * d;
            q_row[d] = vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]) * params.scale;
            acc[d] = vec4<f32>(0.0);
        }
    }

    // Runs of consecutive tokens of one sequence; every invocation walks them alike.
    var seg = t0;
    loop {
        if (seg >= t_end) {
            break;
        }
        let slot = step_slot(seg);
        var seg_end = seg + 1u;
        var last_key = step_pos(seg);
        loop {
            if (seg_end >= t_end || step_slot(seg_end) != slot) {
                break;
            }
            last_key = max(last_key, step_pos(seg_end));
            seg_end++;
        }
        let in_run = mine && t >= seg && t < seg_end;

        for (var j0 = 0u; j0 <= last_key; j0 += tile_keys) {
            let n_keys = min(tile_keys, last_key + 1u - j0);
            for (var i = lid; i < n_keys * hd4; i += WG_SIZE) {
                let row = kv_row(slot, j0 + i / hd4);
                let col = kv_off + 4u * (i % hd4);
                k_tile[i] = vec4<f32>(
                    k_at(row, col),
                    k_at(row, col + 1u),
                    k_at(row, col + 2u),
                    k_at(row, col + 3u),
                );
                v_tile[i] = vec4<f32>(
                    v_at(row, col),
                    v_at(row, col + 1u),
                    v_at(row, col + 2u),
                    v_at(row, col + 3u),
                );
            }
            workgroupBarrier();
            if (in_run && j0 <= my_pos) {
                let visible = min(n_keys, my_pos + 1u - j0);
                var scores: array<f32, MAX_TILE_KEYS>;
                var tile_max = NEG_BIG;
                for (var jj = 0u; jj < visible; jj++) {
                    var s = 0.0;
                    let k_at_tile = jj * hd4;
                    for (var d = 0u; d < hd4; d += 8u) {
                        let k = k_at_tile + d;
                        s += dot(q_row[d], k_tile[k]) + dot(q_row[d + 1u], k_tile[k + 1u])
                            + dot(q_row[d + 2u], k_tile[k + 2u]) + dot(q_row[d + 3u], k_tile[k + 3u])
                            + dot(q_row[d + 4u], k_tile[k + 4u]) + dot(q_row[d + 5u], k_tile[k + 5u])
                            + dot(q_row[d + 6u], k_tile[k + 6u]) + dot(q_row[d + 7u], k_tile[k + 7u]);
                    }
                    scores[jj] = s;
                    tile_max = max(tile_max, s);
                }
                let new_max = max(running_max, tile_max);
                let correction = exp(running_max - new_max);
                running_sum *= correction;
                for (var d = 0u; d < hd4; d += 8u) {
                    for (var u = 0u; u < 8u; u++) {
                        acc[d + u] *= correction;
                    }
                }
                for (var jj = 0u; jj < visible; jj++) {
                    let p = exp(scores[jj] - new_max);
                    running_sum += p;
                    let v_at_tile = jj * hd4;
                    for (var d = 0u; d < hd4; d += 8u) {
                        let v = v_at_tile + d;
                        acc[d] += p * v_tile[v];
                        acc[d + 1u] += p * v_tile[v + 1u];
                        acc[d + 2u] += p * v_tile[v + 2u];
                        acc[d + 3u] += p * v_tile[v + 3u];
                        acc[d + 4u] += p * v_tile[v + 4u];
                        acc[d + 5u] += p * v_tile[v + 5u];
                        acc[d + 6u] += p * v_tile[v + 6u];
                        acc[d + 7u] += p * v_tile[v + 7u];
                    }
                }
                running_max = new_max;
            }
            workgroupBarrier();
        }
        seg = seg_end;
    }

    if (mine) {
        let out_at = t * params.out_stride + head * hd;
        for (var d = 0u; d < hd4; d++) {
            let o = acc[d] / running_sum;
            out[out_at + 4u * d] = o.x;
            out[out_at + 4u * d + 1u] = o.y;
            out[out_at + 4u * d + 2u] = o.z;
            out[out_at + 4u * d + 3u] = o.w;
        }
    }
}
