// Transformer decoder kernels (Llama family). Activations are f32; weights stay in their GGUF
// encoding (f32, f16, bf16, q8_0, q4_K, q6_K blocks, byte for byte as in the file) and are
// dequantised in registers; the KV cache is f16 in fixed-size blocks (paged).
//
// Entry points:
//   embed_<w>            rows of a weight matrix (token ids) -> f32
//   gemv_<w>_n<NT>       y[t][r] = sum_c W[r][c] * x[t][c] for NT <= 8 tokens at once
//   gemv_<w>_r<R>        the same for one token, R rows per warp (decode)
//   gemv_<w>_k<R>        one token, R rows per 4-warp block, columns split across the warps
//   gemv_<w>_c<R>        one token, R rows per warp, coalesced 16-byte segments (decode default)
//   gemv_glu_<w>         one token: silu(gate x) * (up x), both matrices in one pass
//   gemv_multi_<w>       one token: three projections of the same x (q, k, v) in one pass
//   quantize_q8_1        f32 activations -> int8 blocks of 32 with scale and sum (q8_1)
//   gemv{,_glu,_multi}_<w>_q8  the three one-token kernels over int8 activations (dp4a), for
//                        the quantised formats q8_0, q4_K, q6_K
//   rope_f32             rotary embedding in place on q and k (normal or NeoX pairs, optional
//                        per-frequency factors = Llama 3 scaling from `rope_freqs.weight`)
//   swiglu_f32           out = silu(gate) * up (swiglu_inplace_f32: into gate)
//   kv_write_f16         k, v rows -> their slots in the paged cache
//   paged_attention_d<D> split-KV attention of each query over its sequence's cache blocks
//   attention_reduce_d<D> combines the splits
//   argmax_f32           index of the largest value of each row
//
// Weight chunks: every format is read in chunks of 32 consecutive values of one row (a q8_0
// block, one q4_K/q6_K sub-block, 32 floats), dequantised by `Chunk<W>::load`.
#include "hl_common.cuh"

typedef unsigned char u8;
typedef signed char i8;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float f16f(unsigned short h) { return ElemF16::to_f32(h); }
__device__ __forceinline__ unsigned short ld16(const u8* p) {
    return *reinterpret_cast<const unsigned short*>(p);
}

// Exact small-integer to float without the quarter-rate I2F: OR the integer into the
// mantissa of 2^23 and subtract 2^23 (+ the format's offset) with one full-rate FADD.
#define MAGIC_F(u) __int_as_float(0x4B000000u | (unsigned int)(u))

// ---- weight formats --------------------------------------------------------------------

struct WF32 {
    static constexpr int BLOCK = 32;   // values per "block" used for row size
    static constexpr int BYTES = 128;  // bytes per block
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const float4* p = reinterpret_cast<const float4*>(row + (size_t)c * 128);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float4 f = p[i];
            v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float) {
        float v[32];
        load(row, c, v);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; ++k) s = fmaf(v[k], xv[k], s);
        return s;
    }
};

struct WF16 {
    static constexpr int BLOCK = 32;
    static constexpr int BYTES = 64;
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const uint4* p = reinterpret_cast<const uint4*>(row + (size_t)c * 64);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint4 u = p[i];
            unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[8 * i + 2 * j] = f16f((unsigned short)(w[j] & 0xffffu));
                v[8 * i + 2 * j + 1] = f16f((unsigned short)(w[j] >> 16));
            }
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float) {
        float v[32];
        load(row, c, v);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; ++k) s = fmaf(v[k], xv[k], s);
        return s;
    }
};

struct WBF16 {
    static constexpr int BLOCK = 32;
    static constexpr int BYTES = 64;
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const uint4* p = reinterpret_cast<const uint4*>(row + (size_t)c * 64);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint4 u = p[i];
            unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
                v[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
            }
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float) {
        float v[32];
        load(row, c, v);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; ++k) s = fmaf(v[k], xv[k], s);
        return s;
    }
};

// q8_0: 34-byte blocks {f16 d; i8 qs[32]}, value = d * q. Blocks are only 2-byte aligned.
struct WQ8_0 {
    static constexpr int BLOCK = 32;
    static constexpr int BYTES = 34;
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const u8* b = row + (size_t)c * 34;
        const float d = f16f(ld16(b));
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const unsigned short q = ld16(b + 2 + 2 * i);
            v[2 * i] = d * (float)(i8)(q & 0xff);
            v[2 * i + 1] = d * (float)(i8)(q >> 8);
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float) {
        const u8* b = row + (size_t)c * 34;
        const float d = f16f(ld16(b));
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const unsigned int q = ld16(b + 2 + 2 * i) ^ 0x8080u;  // int8 + 128, per byte
            s = fmaf(MAGIC_F(q & 0xffu) - 8388736.0f, xv[2 * i], s);
            s = fmaf(MAGIC_F(q >> 8) - 8388736.0f, xv[2 * i + 1], s);
        }
        return d * s;
    }
};

// q4_K: 144-byte super-blocks of 256 {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}; eight
// sub-blocks of 32 with 6-bit scale and min; value = d*sc*q - dmin*m.
__device__ __forceinline__ void q4k_scale_min(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

struct WQ4_K {
    static constexpr int BLOCK = 256;
    static constexpr int BYTES = 144;
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const u8* b = row + (size_t)(c >> 3) * 144;
        const int s = c & 7;
        const unsigned int dd = *reinterpret_cast<const unsigned int*>(b);
        const float d = f16f((unsigned short)(dd & 0xffffu));
        const float dmin = f16f((unsigned short)(dd >> 16));
        int sc, m;
        q4k_scale_min(s, b + 4, &sc, &m);
        const float d1 = d * (float)sc;
        const float m1 = dmin * (float)m;
        const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 32 * (s >> 1));
        const int shift = (s & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            uint4 u = qs[h];
            unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int q = (w[j] >> (8 * k + shift)) & 0xF;
                    v[16 * h + 4 * j + k] = d1 * (float)q - m1;
                }
            }
        }
    }
    // d1 * sum(q x) - m1 * sum(x): the min term needs the chunk's x sum only.
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float xs) {
        const u8* b = row + (size_t)(c >> 3) * 144;
        const int s = c & 7;
        const unsigned int dd = *reinterpret_cast<const unsigned int*>(b);
        int sc, m;
        q4k_scale_min(s, b + 4, &sc, &m);
        const uint4* qs = reinterpret_cast<const uint4*>(b + 16 + 32 * (s >> 1));
        const int shift = (s & 1) * 4;
        float acc = 0.0f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint4 u = qs[h];
            const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const unsigned int n = (w[j] >> shift) & 0x0F0F0F0Fu;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    acc = fmaf(MAGIC_F((n >> (8 * k)) & 0xFu) - 8388608.0f, xv[16 * h + 4 * j + k], acc);
                }
            }
        }
        const float d = f16f((unsigned short)(dd & 0xffffu));
        const float dmin = f16f((unsigned short)(dd >> 16));
        return d * (float)sc * acc - dmin * (float)m * xs;
    }
};

// q6_K: 210-byte super-blocks of 256 {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d};
// value = d * scales[is] * (q6 - 32). Only 2-byte aligned.
struct WQ6_K {
    static constexpr int BLOCK = 256;
    static constexpr int BYTES = 210;
    static __device__ __forceinline__ void load(const u8* row, int c, float* v) {
        const u8* b = row + (size_t)(c >> 3) * 210;
        const int s = c & 7;
        const int n = s >> 2;  // which 128-value half
        const int k = s & 3;   // which of the four 32-value groups of the half
        const u8* ql = b + 64 * n + ((k & 1) ? 32 : 0);
        const u8* qh = b + 128 + 32 * n;
        const i8* scales = reinterpret_cast<const i8*>(b + 192) + 8 * n + 2 * k;
        const float d = f16f(ld16(b + 208));
        const float d0 = d * (float)scales[0];
        const float d1 = d * (float)scales[1];
        const int lshift = (k >> 1) * 4;
        const int hshift = 2 * k;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const unsigned short l2 = ld16(ql + 2 * i);
            const unsigned short h2 = ld16(qh + 2 * i);
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int l = 2 * i + e;
                const int lo = ((e ? (l2 >> 8) : (l2 & 0xff)) >> lshift) & 0xF;
                const int hi = ((e ? (h2 >> 8) : (h2 & 0xff)) >> hshift) & 3;
                const int q = (lo | (hi << 4)) - 32;
                v[l] = (l < 16 ? d0 : d1) * (float)q;
            }
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int c, const float* xv, float) {
        const u8* b = row + (size_t)(c >> 3) * 210;
        const int s = c & 7;
        const int n = s >> 2;
        const int k = s & 3;
        const u8* ql = b + 64 * n + ((k & 1) ? 32 : 0);
        const u8* qh = b + 128 + 32 * n;
        const i8* scales = reinterpret_cast<const i8*>(b + 192) + 8 * n + 2 * k;
        const int lshift = (k >> 1) * 4;
        const int hshift = 2 * k;
        float part[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const unsigned int l2 = ld16(ql + 2 * i);
            const unsigned int h2 = ld16(qh + 2 * i);
            const unsigned int lo = (l2 >> lshift) & 0x0F0Fu;
            const unsigned int hi = ((h2 >> hshift) & 0x0303u) << 4;
            const unsigned int q = lo | hi;
            part[i >> 3] = fmaf(MAGIC_F(q & 0xffu) - 8388640.0f, xv[2 * i], part[i >> 3]);
            part[i >> 3] = fmaf(MAGIC_F(q >> 8) - 8388640.0f, xv[2 * i + 1], part[i >> 3]);
        }
        const float d = f16f(ld16(b + 208));
        return d * ((float)scales[0] * part[0] + (float)scales[1] * part[1]);
    }
};

// ---- embedding ---------------------------------------------------------------------------

// One thread per 32-value chunk: out[t][c*32 .. c*32+32] = dequant(W[ids[t]]).
template <typename W>
__device__ void embed(float* __restrict__ out, const u8* __restrict__ w, const int* __restrict__ ids,
                      int n, int cols, long long row_bytes) {
    const int chunks = cols / 32;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * chunks) return;
    const int t = (int)(i / chunks);
    const int c = (int)(i % chunks);
    float v[32];
    W::load(w + (long long)ids[t] * row_bytes, c, v);
    float4* o = reinterpret_cast<float4*>(out + (long long)t * cols + 32 * c);
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

// ---- GEMV --------------------------------------------------------------------------------

// One warp per output row, 4 rows per 128-thread block; each lane takes every 32nd chunk of
// the row, dequantises it once and dots it with NT token vectors (x rows of `cols` floats).
template <typename W, int NT>
__device__ void gemv(float* __restrict__ y, const u8* __restrict__ w, const float* __restrict__ x,
                     int rows, int cols, int n, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * 4 + warp;
    if (r >= rows) return;
    const u8* row = w + (long long)r * row_bytes;
    const int chunks = cols / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int c = lane; c < chunks; c += 32) {
        float v[32];
        W::load(row, c, v);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < n) {
                const float4* xp = reinterpret_cast<const float4*>(x + (long long)t * cols + 32 * c);
                float s = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const float4 xv = __ldg(xp + k);
                    s = fmaf(v[4 * k], xv.x, s);
                    s = fmaf(v[4 * k + 1], xv.y, s);
                    s = fmaf(v[4 * k + 2], xv.z, s);
                    s = fmaf(v[4 * k + 3], xv.w, s);
                }
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float s = warp_sum(acc[t]);
        if (lane == 0 && t < n) y[(long long)t * rows + r] = s;
    }
}

// Batch-1 GEMV: one warp per R consecutive rows. Each lane loads its x chunk once into
// registers and reuses it for the R rows (the first version re-read x from L1 for every row:
// x traffic was 2-7x the weight bytes and every format ran at the same ~75 us per 14336x4096
// matrix). Rows past the end are clamped for the loads (always valid memory) and not written.
template <typename W, int R>
__device__ void gemv_rows(float* __restrict__ y, const u8* __restrict__ w, const float* __restrict__ x,
                          int rows, int cols, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * 4 + warp) * R;
    if (r0 >= rows) return;
    const int chunks = cols / 32;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; ++i) acc[i] = 0.0f;
    for (int c = lane; c < chunks; c += 32) {
        float xv[32];
        const float4* xp = reinterpret_cast<const float4*>(x + 32 * c);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float4 t = __ldg(xp + k);
            xv[4 * k] = t.x; xv[4 * k + 1] = t.y; xv[4 * k + 2] = t.z; xv[4 * k + 3] = t.w;
        }
        float xs = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; ++k) xs += xv[k];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = min(r0 + i, rows - 1);
            acc[i] += W::dot(w + (long long)r * row_bytes, c, xv, xs);
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const float s = warp_sum(acc[i]);
        if (lane == 0 && r0 + i < rows) y[r0 + i] = s;
    }
}

// Batch-1 GEMV, K split inside the block: the 4 warps of a block share R rows and take
// interleaved 32-chunk stripes of the columns, then reduce through shared memory. With one
// warp per row group (gemv_rows) a 4096-row matrix gave only ~8 warps per SM, each walking
// its row serially: too few loads in flight to cover DRAM latency.
template <typename W, int R>
__device__ void gemv_ksplit(float* __restrict__ y, const u8* __restrict__ w, const float* __restrict__ x,
                            int rows, int cols, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r0 = blockIdx.x * R;
    const int chunks = cols / 32;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; ++i) acc[i] = 0.0f;
    for (int c = warp * 32 + lane; c < chunks; c += 128) {
        float xv[32];
        const float4* xp = reinterpret_cast<const float4*>(x + 32 * c);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float4 t = __ldg(xp + k);
            xv[4 * k] = t.x; xv[4 * k + 1] = t.y; xv[4 * k + 2] = t.z; xv[4 * k + 3] = t.w;
        }
        float xs = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; ++k) xs += xv[k];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = min(r0 + i, rows - 1);
            acc[i] += W::dot(w + (long long)r * row_bytes, c, xv, xs);
        }
    }
    __shared__ float part[4][R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const float s = warp_sum(acc[i]);
        if (lane == 0) part[warp][i] = s;
    }
    __syncthreads();
    const int t = threadIdx.x;
    if (t < R && r0 + t < rows) y[r0 + t] = part[0][t] + part[1][t] + part[2][t] + part[3][t];
}

#define WEIGHT_ENTRIES(SUF, W)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) embed_##SUF(                                 \
        float* out, const u8* w, const int* ids, int n, int cols, long long row_bytes) {           \
        embed<W>(out, w, ids, n, cols, row_bytes);                                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_n1(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv<W, 1>(y, w, x, rows, cols, n, rb);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_r2(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_rows<W, 2>(y, w, x, rows, cols, rb);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_r4(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_rows<W, 4>(y, w, x, rows, cols, rb);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_k1(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_ksplit<W, 1>(y, w, x, rows, cols, rb);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_k2(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_ksplit<W, 2>(y, w, x, rows, cols, rb);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_k4(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_ksplit<W, 4>(y, w, x, rows, cols, rb);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_n2(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv<W, 2>(y, w, x, rows, cols, n, rb);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_n4(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv<W, 4>(y, w, x, rows, cols, n, rb);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_n8(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv<W, 8>(y, w, x, rows, cols, n, rb);                                                    \
    }

WEIGHT_ENTRIES(f32, WF32)
WEIGHT_ENTRIES(f16, WF16)
WEIGHT_ENTRIES(bf16, WBF16)
WEIGHT_ENTRIES(q8_0, WQ8_0)
WEIGHT_ENTRIES(q4_k, WQ4_K)
WEIGHT_ENTRIES(q6_k, WQ6_K)

// ---- coalesced batch-1 GEMV ---------------------------------------------------------------
//
// The chunk kernels above give each lane 32 consecutive values: a warp's 16-byte load then
// spans 32 lanes x 64-128 bytes of stride, so every load instruction touches 16-32 cache lines
// (x's float4 loads likewise): L1 wavefronts, not DRAM, bound them (measured: the same ~35 us
// for a 14336x4096 matrix in every format, rows per warp helping only through x reuse).
// Here a lane's "segment" is what one 16-byte weight load holds, and consecutive lanes take
// consecutive segments, so each warp-wide load covers one contiguous span.
//   SEGV: values per segment; load_x: the segment's x values; xsums: per-format sums of x
//   (q4_K's min term); dot: the segment's dot product.

struct SF32 {
    static constexpr int SEGV = 4;
    static __device__ __forceinline__ void load_x(const float* x, int s, float* xv) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(x) + s);
        xv[0] = t.x; xv[1] = t.y; xv[2] = t.z; xv[3] = t.w;
    }
    static __device__ __forceinline__ void xsums(const float*, float*) {}
    static __device__ __forceinline__ float dot(const u8* row, int s, const float* xv, const float*) {
        const float4 w = reinterpret_cast<const float4*>(row)[s];
        return w.x * xv[0] + w.y * xv[1] + w.z * xv[2] + w.w * xv[3];
    }
};

template <bool BF>
struct S16 {
    static constexpr int SEGV = 8;
    static __device__ __forceinline__ void load_x(const float* x, int s, float* xv) {
        const float4* p = reinterpret_cast<const float4*>(x) + 2 * s;
        const float4 a = __ldg(p), b = __ldg(p + 1);
        xv[0] = a.x; xv[1] = a.y; xv[2] = a.z; xv[3] = a.w;
        xv[4] = b.x; xv[5] = b.y; xv[6] = b.z; xv[7] = b.w;
    }
    static __device__ __forceinline__ void xsums(const float*, float*) {}
    static __device__ __forceinline__ float dot(const u8* row, int s, const float* xv, const float*) {
        const uint4 u = reinterpret_cast<const uint4*>(row)[s];
        const unsigned int w[4] = {u.x, u.y, u.z, u.w};
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float lo = BF ? __uint_as_float(w[j] << 16) : f16f((unsigned short)(w[j] & 0xffffu));
            const float hi = BF ? __uint_as_float(w[j] & 0xffff0000u) : f16f((unsigned short)(w[j] >> 16));
            acc = fmaf(lo, xv[2 * j], acc);
            acc = fmaf(hi, xv[2 * j + 1], acc);
        }
        return acc;
    }
};

// q8_0: four lanes per 34-byte block, 8 quants each.
struct SQ8_0 {
    static constexpr int SEGV = 8;
    static __device__ __forceinline__ void load_x(const float* x, int s, float* xv) {
        S16<false>::load_x(x, s, xv);
    }
    static __device__ __forceinline__ void xsums(const float*, float*) {}
    static __device__ __forceinline__ float dot(const u8* row, int s, const float* xv, const float*) {
        const u8* b = row + (size_t)(s >> 2) * 34;
        const u8* q = b + 2 + 8 * (s & 3);
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned int v = ld16(q + 2 * i) ^ 0x8080u;
            acc = fmaf(MAGIC_F(v & 0xffu) - 8388736.0f, xv[2 * i], acc);
            acc = fmaf(MAGIC_F(v >> 8) - 8388736.0f, xv[2 * i + 1], acc);
        }
        return f16f(ld16(b)) * acc;
    }
};

// q4_K: eight lanes per 144-byte super-block, each one 16-byte piece of qs: 16 low nibbles
// (sub-block 2j) and 16 high nibbles (sub-block 2j+1), j = piece / 2.
struct SQ4_K {
    static constexpr int SEGV = 32;
    static __device__ __forceinline__ int base(int s) {
        const int p = s & 7;
        return (s >> 3) * 256 + 64 * (p >> 1) + 16 * (p & 1);
    }
    static __device__ __forceinline__ void load_x(const float* x, int s, float* xv) {
        const float4* p = reinterpret_cast<const float4*>(x + base(s));
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float4 a = __ldg(p + k), b = __ldg(p + 8 + k);
            xv[4 * k] = a.x; xv[4 * k + 1] = a.y; xv[4 * k + 2] = a.z; xv[4 * k + 3] = a.w;
            xv[16 + 4 * k] = b.x; xv[16 + 4 * k + 1] = b.y; xv[16 + 4 * k + 2] = b.z; xv[16 + 4 * k + 3] = b.w;
        }
    }
    static __device__ __forceinline__ void xsums(const float* xv, float* xs) {
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) { a += xv[k]; b += xv[16 + k]; }
        xs[0] = a; xs[1] = b;
    }
    static __device__ __forceinline__ float dot(const u8* row, int s, const float* xv, const float* xs) {
        const u8* b = row + (size_t)(s >> 3) * 144;
        const int p = s & 7;
        const uint4 u = reinterpret_cast<const uint4*>(b + 16)[p];
        const unsigned int w[4] = {u.x, u.y, u.z, u.w};
        float lo = 0.0f, hi = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned int l = w[j] & 0x0F0F0F0Fu;
            const unsigned int h = (w[j] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                lo = fmaf(MAGIC_F((l >> (8 * k)) & 0xFu) - 8388608.0f, xv[4 * j + k], lo);
                hi = fmaf(MAGIC_F((h >> (8 * k)) & 0xFu) - 8388608.0f, xv[16 + 4 * j + k], hi);
            }
        }
        const unsigned int dd = *reinterpret_cast<const unsigned int*>(b);
        const float d = f16f((unsigned short)(dd & 0xffffu));
        const float dmin = f16f((unsigned short)(dd >> 16));
        int sc0, m0, sc1, m1;
        q4k_scale_min(2 * (p >> 1), b + 4, &sc0, &m0);
        q4k_scale_min(2 * (p >> 1) + 1, b + 4, &sc1, &m1);
        return d * ((float)sc0 * lo + (float)sc1 * hi) - dmin * ((float)m0 * xs[0] + (float)m1 * xs[1]);
    }
};

// q6_K: eight lanes per 210-byte super-block; lane t takes l in [8(t%4), 8(t%4)+8) of half
// n = t/4: 8 bytes of ql at l and at l+32, 8 bytes of qh, giving 4 runs of 8 values.
struct SQ6_K {
    static constexpr int SEGV = 32;
    static __device__ __forceinline__ void load_x(const float* x, int s, float* xv) {
        const int t = s & 7;
        const float* b = x + (s >> 3) * 256 + 128 * (t >> 2) + 8 * (t & 3);
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const float4* p = reinterpret_cast<const float4*>(b + 32 * g);
            const float4 a = __ldg(p), c = __ldg(p + 1);
            xv[8 * g] = a.x; xv[8 * g + 1] = a.y; xv[8 * g + 2] = a.z; xv[8 * g + 3] = a.w;
            xv[8 * g + 4] = c.x; xv[8 * g + 5] = c.y; xv[8 * g + 6] = c.z; xv[8 * g + 7] = c.w;
        }
    }
    static __device__ __forceinline__ void xsums(const float*, float*) {}
    static __device__ __forceinline__ float dot(const u8* row, int s, const float* xv, const float*) {
        const u8* b = row + (size_t)(s >> 3) * 210;
        const int t = s & 7;
        const int n = t >> 2;
        const int l0 = 8 * (t & 3);
        const u8* ql = b + 64 * n + l0;
        const u8* qh = b + 128 + 32 * n + l0;
        const i8* sc = reinterpret_cast<const i8*>(b + 192) + 8 * n + (l0 >> 4);
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned int a = ld16(ql + 2 * i);       // values l, l+1 of groups 0 and 2
            const unsigned int c = ld16(ql + 32 + 2 * i);  // groups 1 and 3
            const unsigned int h = ld16(qh + 2 * i);
            const unsigned int q0 = (a & 0x0F0Fu) | ((h & 0x0303u) << 4);
            const unsigned int q1 = (c & 0x0F0Fu) | ((h & 0x0C0Cu) << 2);
            const unsigned int q2 = ((a >> 4) & 0x0F0Fu) | (h & 0x3030u);
            const unsigned int q3 = ((c >> 4) & 0x0F0Fu) | ((h >> 2) & 0x3030u);
            const unsigned int q[4] = {q0, q1, q2, q3};
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                part[g] = fmaf(MAGIC_F(q[g] & 0xffu) - 8388640.0f, xv[8 * g + 2 * i], part[g]);
                part[g] = fmaf(MAGIC_F(q[g] >> 8) - 8388640.0f, xv[8 * g + 2 * i + 1], part[g]);
            }
        }
        const float d = f16f(ld16(b + 208));
        return d * ((float)sc[0] * part[0] + (float)sc[2] * part[1] + (float)sc[4] * part[2] + (float)sc[6] * part[3]);
    }
};

// Float activations: x is read as f32 from global memory (through L1) per segment.
template <typename B>
struct FloatX {
    typedef const float* X;
    static constexpr int SEGV = B::SEGV;
    struct XV {
        float v[B::SEGV];
        float s[2];
    };
    static __device__ __forceinline__ void load_x(X x, int s, XV& r) {
        B::load_x(x, s, r.v);
        B::xsums(r.v, r.s);
    }
    static __device__ __forceinline__ float dot(const u8* row, int s, const XV& r) {
        return B::dot(row, s, r.v, r.s);
    }
};

// ---- int8 activations --------------------------------------------------------------------
//
// The quantised GEMVs above are bound by the f32 x loads (a q4_K byte needs 8 bytes of x
// through L1), not by the weight bytes. Quantising x once per GEMV input to int8 blocks of 32
// (q8_1, as llama.cpp's CUDA backend does: d = max|x| / 127, q = round(x / d), and d * sum(q)
// for q4_K's min term) cuts x traffic 4x and lets `dp4a` do four multiply-adds per
// instruction. xq: [n][cols] int8; xds: [n][cols / 32] (d, d * sum q).
struct XQ8 {
    const i8* q;
    const float2* ds;
};

// One warp per block of 32 values; grid covers n * cols / 32 warps.
extern "C" __global__ void __launch_bounds__(256) quantize_q8_1(i8* __restrict__ q, float2* __restrict__ ds,
                                                             const float* __restrict__ x, long long blocks) {
    const long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (b >= blocks) return;
    const float v = x[b * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f;
    const int qi = amax == 0.0f ? 0 : (int)rintf(v / d);
    q[b * 32 + lane] = (i8)qi;
    int sum = qi;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) ds[b] = make_float2(d, d * (float)sum);
}

__device__ __forceinline__ unsigned int ld32_2(const u8* p) {  // 4 bytes at a 2-byte boundary
    return (unsigned int)ld16(p) | ((unsigned int)ld16(p + 2) << 16);
}

// q8_0 x int8: four lanes per 34-byte block, 8 quants each.
struct DQ8_0 {
    typedef XQ8 X;
    static constexpr int SEGV = 8;
    struct XV {
        int q[2];
        float d;
    };
    static __device__ __forceinline__ void load_x(X x, int s, XV& r) {
        const int2 t = __ldg(reinterpret_cast<const int2*>(x.q) + s);
        r.q[0] = t.x; r.q[1] = t.y;
        r.d = __ldg(&x.ds[s >> 2].x);
    }
    static __device__ __forceinline__ float dot(const u8* row, int s, const XV& r) {
        const u8* b = row + (size_t)(s >> 2) * 34;
        const u8* q = b + 2 + 8 * (s & 3);
        const int sum = __dp4a((int)ld32_2(q + 4), r.q[1], __dp4a((int)ld32_2(q), r.q[0], 0));
        return f16f(ld16(b)) * r.d * (float)sum;
    }
};

// q4_K x int8: eight lanes per 144-byte super-block, each one 16-byte piece of qs (as SQ4_K):
// 16 low nibbles of sub-block 2j and 16 high nibbles of sub-block 2j+1, j = piece / 2. The
// min term -dmin * m * sum(x) of a sub-block is added once, by the lane holding its first half.
struct DQ4_K {
    typedef XQ8 X;
    static constexpr int SEGV = 32;
    struct XV {
        int lo[4], hi[4];
        float d[2], s[2];
    };
    static __device__ __forceinline__ void load_x(X x, int s, XV& r) {
        const int p = s & 7;
        const int base = (s >> 3) * 256 + 64 * (p >> 1) + 16 * (p & 1);
        const int4 a = __ldg(reinterpret_cast<const int4*>(x.q + base));
        const int4 b = __ldg(reinterpret_cast<const int4*>(x.q + base + 32));
        r.lo[0] = a.x; r.lo[1] = a.y; r.lo[2] = a.z; r.lo[3] = a.w;
        r.hi[0] = b.x; r.hi[1] = b.y; r.hi[2] = b.z; r.hi[3] = b.w;
        const float2 d0 = __ldg(&x.ds[base >> 5]);
        const float2 d1 = __ldg(&x.ds[(base >> 5) + 1]);
        r.d[0] = d0.x; r.d[1] = d1.x;
        r.s[0] = (p & 1) ? 0.0f : d0.y;
        r.s[1] = (p & 1) ? 0.0f : d1.y;
    }
    static __device__ __forceinline__ float dot(const u8* row, int s, const XV& r) {
        const u8* b = row + (size_t)(s >> 3) * 144;
        const int p = s & 7;
        const uint4 u = reinterpret_cast<const uint4*>(b + 16)[p];
        const unsigned int w[4] = {u.x, u.y, u.z, u.w};
        int lo = 0, hi = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            lo = __dp4a((int)(w[j] & 0x0F0F0F0Fu), r.lo[j], lo);
            hi = __dp4a((int)((w[j] >> 4) & 0x0F0F0F0Fu), r.hi[j], hi);
        }
        const unsigned int dd = *reinterpret_cast<const unsigned int*>(b);
        const float d = f16f((unsigned short)(dd & 0xffffu));
        const float dmin = f16f((unsigned short)(dd >> 16));
        int sc0, m0, sc1, m1;
        q4k_scale_min(2 * (p >> 1), b + 4, &sc0, &m0);
        q4k_scale_min(2 * (p >> 1) + 1, b + 4, &sc1, &m1);
        return d * ((float)(sc0 * lo) * r.d[0] + (float)(sc1 * hi) * r.d[1]) -
               dmin * ((float)m0 * r.s[0] + (float)m1 * r.s[1]);
    }
};

// q6_K x int8: eight lanes per 210-byte super-block (as SQ6_K): lane t takes l in [8(t%4),
// 8(t%4)+8) of half n = t/4, i.e. 8 values of each of the half's four 32-value groups.
// q6 - 32 is computed as dp4a(q6, x) - 32 * dp4a(1, x).
struct DQ6_K {
    typedef XQ8 X;
    static constexpr int SEGV = 32;
    struct XV {
        int q[4][2];
        float d[4];
    };
    static __device__ __forceinline__ void load_x(X x, int s, XV& r) {
        const int t = s & 7;
        const int base = (s >> 3) * 256 + 128 * (t >> 2) + 8 * (t & 3);
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int2 v = __ldg(reinterpret_cast<const int2*>(x.q + base + 32 * g));
            r.q[g][0] = v.x; r.q[g][1] = v.y;
            r.d[g] = __ldg(&x.ds[(base >> 5) + g].x);
        }
    }
    static __device__ __forceinline__ float dot(const u8* row, int s, const XV& r) {
        const u8* b = row + (size_t)(s >> 3) * 210;
        const int t = s & 7;
        const int n = t >> 2;
        const int l0 = 8 * (t & 3);
        const u8* ql = b + 64 * n + l0;
        const u8* qh = b + 128 + 32 * n + l0;
        const i8* sc = reinterpret_cast<const i8*>(b + 192) + 8 * n + (l0 >> 4);
        float acc = 0.0f;
        int part[4] = {0, 0, 0, 0};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const unsigned int a = ld32_2(ql + 4 * i);       // groups 0 (low) and 2 (high nibbles)
            const unsigned int c = ld32_2(ql + 32 + 4 * i);  // groups 1 and 3
            const unsigned int h = ld32_2(qh + 4 * i);
            const unsigned int q0 = (a & 0x0F0F0F0Fu) | ((h & 0x03030303u) << 4);
            const unsigned int q1 = (c & 0x0F0F0F0Fu) | ((h & 0x0C0C0C0Cu) << 2);
            const unsigned int q2 = ((a >> 4) & 0x0F0F0F0Fu) | (h & 0x30303030u);
            const unsigned int q3 = ((c >> 4) & 0x0F0F0F0Fu) | ((h >> 2) & 0x30303030u);
            part[0] = __dp4a((int)q0, r.q[0][i], part[0]);
            part[1] = __dp4a((int)q1, r.q[1][i], part[1]);
            part[2] = __dp4a((int)q2, r.q[2][i], part[2]);
            part[3] = __dp4a((int)q3, r.q[3][i], part[3]);
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int xsum = __dp4a(0x01010101, r.q[g][1], __dp4a(0x01010101, r.q[g][0], 0));
            acc += (float)((int)sc[2 * g] * (part[g] - 32 * xsum)) * r.d[g];
        }
        return f16f(ld16(b + 208)) * acc;
    }
};

template <typename S, int R>
__device__ void gemv_coalesced(float* __restrict__ y, const u8* __restrict__ w, typename S::X x,
                               int rows, int cols, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * 4 + warp) * R;
    if (r0 >= rows) return;
    const int segs = cols / S::SEGV;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; ++i) acc[i] = 0.0f;
#pragma unroll 2
    for (int s = lane; s < segs; s += 32) {
        typename S::XV xv;
        S::load_x(x, s, xv);
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = min(r0 + i, rows - 1);
            acc[i] += S::dot(w + (long long)r * row_bytes, s, xv);
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const float v = warp_sum(acc[i]);
        if (lane == 0 && r0 + i < rows) y[r0 + i] = v;
    }
}

// Gate and up projections of one token in one pass, SwiGLU fused: y[r] = silu(g.x) * (u.x).
// Both matrices share each x segment load (x traffic, not weight traffic, bounds the q4_K
// segments) and the separate SwiGLU launch disappears.
template <typename S, int R>
__device__ void gemv_glu(float* __restrict__ y, const u8* __restrict__ wg, const u8* __restrict__ wu,
                         typename S::X x, int rows, int cols, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * 4 + warp) * R;
    if (r0 >= rows) return;
    const int segs = cols / S::SEGV;
    float ag[R], au[R];
#pragma unroll
    for (int i = 0; i < R; ++i) { ag[i] = 0.0f; au[i] = 0.0f; }
#pragma unroll 2
    for (int s = lane; s < segs; s += 32) {
        typename S::XV xv;
        S::load_x(x, s, xv);
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const long long off = (long long)min(r0 + i, rows - 1) * row_bytes;
            ag[i] += S::dot(wg + off, s, xv);
            au[i] += S::dot(wu + off, s, xv);
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const float g = warp_sum(ag[i]);
        const float u = warp_sum(au[i]);
        if (lane == 0 && r0 + i < rows) y[r0 + i] = g / (1.0f + expf(-g)) * u;
    }
}

// Up to three projections of the same x in one pass (q, k, v of one token; same type and
// width, any row counts): warp w takes rows [R w, R w + R) of every matrix that has them, so
// those rows share each x segment load.
template <typename S, int R>
__device__ void gemv_multi(float* __restrict__ y0, const u8* __restrict__ w0, int rows0,
                           float* __restrict__ y1, const u8* __restrict__ w1, int rows1,
                           float* __restrict__ y2, const u8* __restrict__ w2, int rows2,
                           typename S::X x, int cols, long long row_bytes) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * 4 + warp) * R;
    float* ys[3] = {y0, y1, y2};
    const u8* ws[3] = {w0, w1, w2};
    const int rs[3] = {rows0, rows1, rows2};
    if (r0 >= rows0 && r0 >= rows1 && r0 >= rows2) return;
    const int segs = cols / S::SEGV;
    float acc[3][R];
#pragma unroll
    for (int m = 0; m < 3; ++m)
#pragma unroll
        for (int i = 0; i < R; ++i) acc[m][i] = 0.0f;
#pragma unroll 2
    for (int s = lane; s < segs; s += 32) {
        typename S::XV xv;
        S::load_x(x, s, xv);
#pragma unroll
        for (int m = 0; m < 3; ++m) {
            if (r0 < rs[m]) {
#pragma unroll
                for (int i = 0; i < R; ++i) {
                    const long long off = (long long)min(r0 + i, rs[m] - 1) * row_bytes;
                    acc[m][i] += S::dot(ws[m] + off, s, xv);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < 3; ++m) {
        if (r0 < rs[m]) {
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const float v = warp_sum(acc[m][i]);
                if (lane == 0 && r0 + i < rs[m]) ys[m][r0 + i] = v;
            }
        }
    }
}

#define COALESCED_ENTRIES(SUF, S)                                                                  \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_c2(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_coalesced<S, 2>(y, w, x, rows, cols, rb);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_c4(                             \
        float* y, const u8* w, const float* x, int rows, int cols, int n, long long rb) {           \
        gemv_coalesced<S, 4>(y, w, x, rows, cols, rb);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_glu_##SUF(                              \
        float* y, const u8* wg, const u8* wu, const float* x, int rows, int cols, long long rb) {   \
        gemv_glu<S, 2>(y, wg, wu, x, rows, cols, rb);                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_multi_##SUF(                            \
        float* y0, const u8* w0, int rows0, float* y1, const u8* w1, int rows1, float* y2,          \
        const u8* w2, int rows2, const float* x, int cols, long long rb) {                          \
        gemv_multi<S, 2>(y0, w0, rows0, y1, w1, rows1, y2, w2, rows2, x, cols, rb);                \
    }

COALESCED_ENTRIES(f32, FloatX<SF32>)
COALESCED_ENTRIES(f16, FloatX<S16<false> >)
COALESCED_ENTRIES(bf16, FloatX<S16<true> >)
COALESCED_ENTRIES(q8_0, FloatX<SQ8_0>)
COALESCED_ENTRIES(q4_k, FloatX<SQ4_K>)
COALESCED_ENTRIES(q6_k, FloatX<SQ6_K>)

// The same three kernels over int8 activations (`quantize_q8_1`): suffix `_q8`, R rows per warp.
#define INT8_ENTRIES(SUF, S, R)                                                                    \
    extern "C" __global__ void __launch_bounds__(128) gemv_##SUF##_q8(                             \
        float* y, const u8* w, const i8* xq, const float2* xds, int rows, int cols, long long rb) { \
        gemv_coalesced<S, R>(y, w, XQ8{xq, xds}, rows, cols, rb);                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_glu_##SUF##_q8(                         \
        float* y, const u8* wg, const u8* wu, const i8* xq, const float2* xds, int rows, int cols, \
        long long rb) {                                                                            \
        gemv_glu<S, R>(y, wg, wu, XQ8{xq, xds}, rows, cols, rb);                                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_multi_##SUF##_q8(                       \
        float* y0, const u8* w0, int rows0, float* y1, const u8* w1, int rows1, float* y2,          \
        const u8* w2, int rows2, const i8* xq, const float2* xds, int cols, long long rb) {         \
        gemv_multi<S, R>(y0, w0, rows0, y1, w1, rows1, y2, w2, rows2, XQ8{xq, xds}, cols, rb);     \
    }

INT8_ENTRIES(q8_0, DQ8_0, 2)
INT8_ENTRIES(q4_k, DQ4_K, 2)
INT8_ENTRIES(q6_k, DQ6_K, 2)

// ---- RoPE --------------------------------------------------------------------------------

// q: [n][n_head][head_dim], k: [n][n_kv][head_dim], rotated in place over the first n_rot
// dims. neox = 0: pairs (2i, 2i+1) (llama.cpp LLAMA_ROPE_TYPE_NORM, Llama); neox = 1: pairs
// (i, i + n_rot/2) (Qwen2/3). theta_i = pos * base^(-2i/n_rot) / factors[i] (factors may be
// null: Llama 3 scaling ships them as `rope_freqs.weight`). One thread per pair.
extern "C" __global__ void __launch_bounds__(256) rope_f32(float* q, float* k, const int* pos, int n,
                                                          int n_head, int n_kv, int head_dim, int n_rot,
                                                          float base, const float* factors, int neox) {
    const int half = n_rot / 2;
    const int heads = n_head + n_kv;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * heads * half) return;
    const int p = (int)(i % half);
    const int h = (int)((i / half) % heads);
    const int t = (int)(i / ((long long)half * heads));
    float* v = h < n_head ? q + ((long long)t * n_head + h) * head_dim
                          : k + ((long long)t * n_kv + (h - n_head)) * head_dim;
    float theta = (float)pos[t] * powf(base, -2.0f * (float)p / (float)n_rot);
    if (factors) theta /= factors[p];
    float s, c;
    sincosf(theta, &s, &c);
    const int a = neox ? p : 2 * p;
    const int b = neox ? p + half : 2 * p + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
}

// ---- SwiGLU ------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(256) swiglu_f32(float* out, const float* gate, const float* up,
                                                            long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

// gate = silu(gate) * up, in place.
extern "C" __global__ void __launch_bounds__(256) swiglu_inplace_f32(float* gate, const float* up, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

// ---- paged KV cache ----------------------------------------------------------------------

// Cache layout: [slot][n_kv][head_dim] f16, slot = block * block_size + offset. k, v: [n][n_kv *
// head_dim] f32; slots[t] < 0 skips the token (padding).
extern "C" __global__ void __launch_bounds__(256) kv_write_f16(hl_f16* kc, hl_f16* vc, const float* k,
                                                              const float* v, const int* slots, int n,
                                                              int width) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * width) return;
    const int t = (int)(i / width);
    const int e = (int)(i % width);
    const int slot = slots[t];
    if (slot < 0) return;
    kc[(long long)slot * width + e] = ElemF16::from_f32(k[i]);
    vc[(long long)slot * width + e] = ElemF16::from_f32(v[i]);
}

// ---- attention over the paged cache ------------------------------------------------------

// Grid (n_head, n_query, n_split), 128 threads (4 warps). Query t of sequence seq[t] sees the
// first ctx[t] tokens of that sequence (causal prefill: ctx = position + 1). Split s covers
// tokens [s*split_len, (s+1)*split_len); each warp takes every 4th token, keeps an online
// softmax (max, sum, D/32 output dims per lane), and the 4 warps merge in shared memory into
// part_ml[(t*n_head+h)*n_split+s] = (max, sum) and part_o[...][D] (unnormalised).
template <int D>
__device__ void paged_attention(float* __restrict__ part_o, float2* __restrict__ part_ml,
                                const float* __restrict__ q, const hl_f16* __restrict__ kc,
                                const hl_f16* __restrict__ vc, const int* __restrict__ block_tables,
                                const int* __restrict__ seq, const int* __restrict__ ctx, int n_head,
                                int n_kv, int block_size, int max_blocks, int split_len, float scale) {
    constexpr int DPL = D / 32;
    const int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
    const int n_split = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_head / n_kv);
    const int len = ctx[t];
    const int* table = block_tables + (long long)seq[t] * max_blocks;
    const int start = s * split_len;
    const int end = min(len, start + split_len);

    float qv[DPL];
    const float* qp = q + ((long long)t * n_head + h) * D + lane * DPL;
#pragma unroll
    for (int i = 0; i < DPL; ++i) qv[i] = qp[i] * scale;

    float m = NEG_INF, l = 0.0f, o[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    const long long width = (long long)n_kv * D;
    for (int j = start + warp; j < end; j += 4) {
        const long long slot = (long long)table[j / block_size] * block_size + j % block_size;
        const hl_f16* kp = kc + slot * width + (long long)kvh * D + lane * DPL;
        const hl_f16* vp = vc + slot * width + (long long)kvh * D + lane * DPL;
        float sc = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) sc = fmaf(qv[i], f16f(kp[i]), sc);
        sc = warp_sum(sc);
        const float m_new = fmaxf(m, sc);
        const float corr = __expf(m - m_new);
        const float p = __expf(sc - m_new);
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < DPL; ++i) o[i] = o[i] * corr + p * f16f(vp[i]);
        m = m_new;
    }

    __shared__ float sm_m[4], sm_l[4];
    __shared__ float sm_o[4][D];
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
    for (int i = 0; i < DPL; ++i) sm_o[warp][lane * DPL + i] = o[i];
    __syncthreads();
    if (warp == 0) {
        float mm = NEG_INF;
#pragma unroll
        for (int w = 0; w < 4; ++w) mm = fmaxf(mm, sm_m[w]);
        float ll = 0.0f, oo[DPL];
#pragma unroll
        for (int i = 0; i < DPL; ++i) oo[i] = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const float f = sm_m[w] == NEG_INF ? 0.0f : __expf(sm_m[w] - mm);
            ll += sm_l[w] * f;
#pragma unroll
            for (int i = 0; i < DPL; ++i) oo[i] += sm_o[w][lane * DPL + i] * f;
        }
        const long long idx = ((long long)t * n_head + h) * n_split + s;
        if (lane == 0) part_ml[idx] = make_float2(mm, ll);
#pragma unroll
        for (int i = 0; i < DPL; ++i) part_o[idx * D + lane * DPL + i] = oo[i];
    }
}

// Grid (n_head, n_query), D threads: out[t][h][d] = sum_s o_s * e^(m_s - M) / sum_s l_s e^(m_s - M).
template <int D>
__device__ void attention_reduce(float* __restrict__ out, const float* __restrict__ part_o,
                                 const float2* __restrict__ part_ml, int n_head, int n_split) {
    const int h = blockIdx.x, t = blockIdx.y, d = threadIdx.x;
    const long long base = ((long long)t * n_head + h) * n_split;
    float mm = NEG_INF;
    for (int s = 0; s < n_split; ++s) mm = fmaxf(mm, part_ml[base + s].x);
    float ll = 0.0f, acc = 0.0f;
    for (int s = 0; s < n_split; ++s) {
        const float2 ml = part_ml[base + s];
        const float f = ml.x == NEG_INF ? 0.0f : __expf(ml.x - mm);
        ll += ml.y * f;
        acc += part_o[(base + s) * D + d] * f;
    }
    out[((long long)t * n_head + h) * D + d] = ll > 0.0f ? acc / ll : 0.0f;
}

#define ATTENTION_ENTRIES(D)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_d##D(                           \
        float* part_o, float2* part_ml, const float* q, const hl_f16* kc, const hl_f16* vc,           \
        const int* block_tables, const int* seq, const int* ctx, int n_head, int n_kv, int block_size, \
        int max_blocks, int split_len, float scale) {                                                 \
        paged_attention<D>(part_o, part_ml, q, kc, vc, block_tables, seq, ctx, n_head, n_kv,          \
                           block_size, max_blocks, split_len, scale);                                 \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(D) attention_reduce_d##D(                            \
        float* out, const float* part_o, const float2* part_ml, int n_head, int n_split) {            \
        attention_reduce<D>(out, part_o, part_ml, n_head, n_split);                                   \
    }

ATTENTION_ENTRIES(64)
ATTENTION_ENTRIES(128)
ATTENTION_ENTRIES(256)

// ---- argmax ------------------------------------------------------------------------------

// One 1024-thread block per row: out[r] = smallest index of the row's maximum.
extern "C" __global__ void __launch_bounds__(1024) argmax_f32(int* out, const float* x, int cols) {
    const float* row = x + (long long)blockIdx.x * cols;
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = row[i];
        if (v > best) { best = v; idx = i; }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, off);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
        if (ob > best || (ob == best && oi < idx)) { best = ob; idx = oi; }
    }
    __shared__ float sb[32];
    __shared__ int si[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sb[warp] = best; si[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        best = lane < nw ? sb[lane] : NEG_INF;
        idx = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, off);
            const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
            if (ob > best || (ob == best && oi < idx)) { best = ob; idx = oi; }
        }
        if (lane == 0) out[blockIdx.x] = idx;
    }
}
