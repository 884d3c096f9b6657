// Normalisation kernels. Entry points: rmsnorm_residual_{f32,f16,bf16}.
//
// rmsnorm_residual: for each row of width `hidden`,
//     r        = round_T(x + residual)          (sum in f32, stored back into `residual`)
//     inv_rms  = rsqrt(mean(float(r)^2) + eps)  (f32 accumulation)
//     out      = round_T(float(r) * inv_rms * float(weight))
// One block per row; each thread owns a strided set of 16-byte packs, keeps up to
// CACHED_PACKS of them in registers between the two passes (larger rows re-read
// `residual`, which the same thread just wrote), and the block reduces with warp shuffles.
// Rows whose width or pointers do not allow 16-byte packs take the scalar path (N = 1).
#include "hl_common.cuh"

#define CACHED_PACKS 4

template <typename E, int N>
__device__ __forceinline__ void rmsnorm_residual_row(
    typename E::storage* __restrict__ out,
    typename E::storage* __restrict__ residual,
    const typename E::storage* __restrict__ x,
    const typename E::storage* __restrict__ weight,
    int hidden,
    float eps) {
    typedef typename E::storage T;
    typedef Pack<T, N> P;
    const size_t row_offset = (size_t)blockIdx.x * (size_t)hidden;
    const P* x_row = reinterpret_cast<const P*>(x + row_offset);
    P* res_row = reinterpret_cast<P*>(residual + row_offset);
    P* out_row = reinterpret_cast<P*>(out + row_offset);
    const P* w_row = reinterpret_cast<const P*>(weight);
    const int packs = hidden / N;
    const int tid = threadIdx.x;
    const int stride = blockDim.x;

    P cached[CACHED_PACKS];
    float sum_sq = 0.0f;

    // Pass 1: residual += x, accumulate the sum of squares of the rounded sum.
#pragma unroll
    for (int k = 0; k < CACHED_PACKS; ++k) {
        const int i = tid + k * stride;
        if (i < packs) {
            const P a = x_row[i];
            P r = res_row[i];
#pragma unroll
            for (int j = 0; j < N; ++j) {
                r.e[j] = E::from_f32(E::to_f32(a.e[j]) + E::to_f32(r.e[j]));
                const float f = E::to_f32(r.e[j]);
                sum_sq += f * f;
            }
            res_row[i] = r;
            cached[k] = r;
        }
    }
    for (int i = tid + CACHED_PACKS * stride; i < packs; i += stride) {
        const P a = x_row[i];
        P r = res_row[i];
#pragma unroll
        for (int j = 0; j < N; ++j) {
            r.e[j] = E::from_f32(E::to_f32(a.e[j]) + E::to_f32(r.e[j]));
            const float f = E::to_f32(r.e[j]);
            sum_sq += f * f;
        }
        res_row[i] = r;
    }

    const float total = block_sum(sum_sq);
    const float inv_rms = rsqrtf(total / (float)hidden + eps);

    // Pass 2: out = r * inv_rms * weight.
#pragma unroll
    for (int k = 0; k < CACHED_PACKS; ++k) {
        const int i = tid + k * stride;
        if (i < packs) {
            const P w = w_row[i];
            P o;
#pragma unroll
            for (int j = 0; j < N; ++j) {
                o.e[j] = E::from_f32(E::to_f32(cached[k].e[j]) * inv_rms * E::to_f32(w.e[j]));
            }
            out_row[i] = o;
        }
    }
    for (int i = tid + CACHED_PACKS * stride; i < packs; i += stride) {
        const P r = res_row[i];
        const P w = w_row[i];
        P o;
#pragma unroll
        for (int j = 0; j < N; ++j) {
            o.e[j] = E::from_f32(E::to_f32(r.e[j]) * inv_rms * E::to_f32(w.e[j]));
        }
        out_row[i] = o;
    }
}

template <typename E>
__device__ __forceinline__ void rmsnorm_residual_dispatch(
    typename E::storage* __restrict__ out,
    typename E::storage* __restrict__ residual,
    const typename E::storage* __restrict__ x,
    const typename E::storage* __restrict__ weight,
    int hidden,
    float eps) {
    constexpr int VEC = 16 / sizeof(typename E::storage);
    const bool vectorized = (hidden % VEC) == 0 && hl_aligned16(out) && hl_aligned16(residual) &&
                            hl_aligned16(x) && hl_aligned16(weight);
    if (vectorized) {
        rmsnorm_residual_row<E, VEC>(out, residual, x, weight, hidden, eps);
    } else {
        rmsnorm_residual_row<E, 1>(out, residual, x, weight, hidden, eps);
    }
}

#define RMSNORM_RESIDUAL_ENTRY(NAME, ELEM)                                                  \
    extern "C" __global__ void __launch_bounds__(1024)                                    \
        NAME(ELEM::storage* __restrict__ out,                                                \
             ELEM::storage* __restrict__ residual,                                           \
             const ELEM::storage* __restrict__ x,                                            \
             const ELEM::storage* __restrict__ weight, int rows, int hidden, float eps) {    \
        if ((int)blockIdx.x >= rows) {                                                      \
            return;                                                                         \
        }                                                                                   \
        rmsnorm_residual_dispatch<ELEM>(out, residual, x, weight, hidden, eps);             \
    }

RMSNORM_RESIDUAL_ENTRY(rmsnorm_residual_f32, ElemF32)
RMSNORM_RESIDUAL_ENTRY(rmsnorm_residual_f16, ElemF16)
RMSNORM_RESIDUAL_ENTRY(rmsnorm_residual_bf16, ElemBf16)
