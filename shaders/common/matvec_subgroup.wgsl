// y = x W^T for few tokens (decode), ROWS output rows per workgroup and up to TOKENS tokens per
// workgroup (the including shader's const). The workgroup's invocations stride along the rows'
// chunks (each loads a chunk of x once for all ROWS rows: x is eight times the bytes of a 4-bit
// row), subgroupAdd reduces within each subgroup, and workgroup memory joins the subgroups. A
// row's K is thus spread over the whole workgroup, which keeps many loads in flight even for
// products with few rows. A workgroup's tokens read the same weight chunks one after another, so
// each chunk comes from memory once and from the cache for the other tokens. Needs
// common/step.wgsl, common/matmul.wgsl, common/weights.wgsl, and how x is read: the f32 rows of
// common/matvec_x_f32.wgsl or the 8-bit planes of common/matvec_x_q8.wgsl (x binding, XChunk,
// x_chunk, row_chunk_dot, row_tail_dot, and CHUNK_LANES, x_part, row_part_dot: how many lanes
// share a chunk).

override W_DTYPE: u32 = 0u;
override WG_SIZE: u32 = 128u;
// At least the subgroups of a workgroup: WG_SIZE over the adapter's smallest subgroup size.
override MAX_SUBGROUPS: u32 = 32u;
// Rows per workgroup: the accumulators are one vec4.
const ROWS: u32 = 4u;
// The weight rows are a gate projection's then an up projection's (ffn_gate and ffn_up joined),
// and y gets silu(gate) * up: a workgroup takes two outputs, their gate rows and their up rows.
// That saves the gated product a dispatch and a pass of both halves through memory.
override GLU: bool = false;

// Each subgroup's sums, per token.
var<workgroup> partial: array<vec4<f32>, MAX_SUBGROUPS * TOKENS>;

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(2) var<storage, read> weights: array<u32>;  // (n_out, n_in) in W_DTYPE blocks
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // (n_tokens, y_stride)

// The weight rows of workgroup `group`; the first is the first output it writes.
fn workgroup_rows(group: u32) -> vec4<u32> {
    if (GLU) {
        let o = 2u * group;
        let up0 = params.n_out / 2u;
        return vec4<u32>(o, o + 1u, up0 + o, up0 + o + 1u);
    }
    let r = group * ROWS;
    return vec4<u32>(r, r + 1u, r + 2u, r + 3u);
}

// Outputs this kernel writes: one per row, or one per gate and up pair.
fn n_outputs() -> u32 {
    return select(params.n_out, params.n_out / 2u, GLU);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let t0 = wid.y * TOKENS;
    let n_rows = matmul_rows();
    let rows = workgroup_rows(wid.x + wid.z * nwg.x);
    let in_range = rows.x < n_outputs() && t0 < n_rows;
    var acc: array<vec4<f32>, TOKENS>;
    if (in_range) {
        let n_chunks = params.n_in / 32u;
        // Each lane takes a part of a chunk: a whole one, or a quarter (CHUNK_LANES).
        for (var p = lid; p < n_chunks * CHUNK_LANES; p += WG_SIZE) {
            let b = p / CHUNK_LANES;
            let s = p % CHUNK_LANES;
            for (var tt = 0u; tt < TOKENS; tt++) {
                if (t0 + tt < n_rows) {
                    let xs = x_part(t0 + tt, b, s);
                    acc[tt] += vec4<f32>(row_part_dot(rows.x, b, s, xs),
                        row_part_dot(rows.y, b, s, xs), row_part_dot(rows.z, b, s, xs),
                        row_part_dot(rows.w, b, s, xs));
                }
            }
        }
        for (var k = n_chunks * 32u + lid * 4u; k < params.n_in; k += WG_SIZE * 4u) {
            for (var tt = 0u; tt < TOKENS; tt++) {
                if (t0 + tt < n_rows) {
                    let x_at = (t0 + tt) * params.x_stride;
                    acc[tt] += vec4<f32>(row_tail_dot(rows.x, k, x_at),
                        row_tail_dot(rows.y, k, x_at), row_tail_dot(rows.z, k, x_at),
                        row_tail_dot(rows.w, k, x_at));
                }
            }
        }
    }
    for (var tt = 0u; tt < TOKENS; tt++) {
        let sum = subgroupAdd(acc[tt]);
        if (lane == 0u) {
            partial[sg_id * TOKENS + tt] = sum;
        }
    }
    workgroupBarrier();
    // Invocation tt adds up token tt's subgroup sums.
    if (in_range && lid < TOKENS && t0 + lid < n_rows) {
        var sum = vec4<f32>(0.0);
        for (var g = 0u; g < n_sg; g++) {
            sum += partial[g * TOKENS + lid];
        }
        let y_at = (t0 + lid) * params.y_stride + params.out_col0 + rows.x;
        if (GLU) {
            // The same expression as silu_mul.wgsl.
            for (var r = 0u; r < 2u; r++) {
                if (rows.x + r < n_outputs()) {
                    let g = sum[r];
                    y[y_at + r] = g / (1.0 + exp(-g)) * sum[r + 2u];
                }
            }
        } else {
            for (var r = 0u; r < ROWS; r++) {
                if (rows.x + r < params.n_out) {
                    store_y(y_at + r, sum[r]);
                }
            }
        }
    }
}
