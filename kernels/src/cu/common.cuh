// Shared device helpers for every HyperLlama kernel family: element types and their
// conversions to and from f32, 16-byte packs, and warp/block reductions.
//
// No CUDA headers are included on purpose: NVRTC installs without the toolkit's include
// directory (runtime-only packages) must still compile these sources. f16 and bf16 are
// carried as raw 16-bit storage and converted with PTX `cvt` (f16) or integer round-to-
// nearest-even (`cvt.rn.bf16.f32` from sm_80), matching the host conversions in src/dtype.rs
// bit for bit (NaN payloads aside).
#pragma once

typedef unsigned short hl_f16;   // IEEE 754 binary16 bits
typedef unsigned short hl_bf16;  // bfloat16 bits

struct ElemF32 {
    typedef float storage;
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
};

struct ElemF16 {
    typedef hl_f16 storage;
    static __device__ __forceinline__ float to_f32(hl_f16 h) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ hl_f16 from_f32(float f) {
        hl_f16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
};

struct ElemBf16 {
    typedef hl_bf16 storage;
    static __device__ __forceinline__ float to_f32(hl_bf16 b) {
        return __uint_as_float(((unsigned int)b) << 16);
    }
    static __device__ __forceinline__ hl_bf16 from_f32(float f) {
#if __CUDA_ARCH__ >= 800
        hl_bf16 b;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
        return b;
#else
        unsigned int u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            return (hl_bf16)((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
        }
        u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
        return (hl_bf16)(u >> 16);
#endif
    }
};

// N consecutive elements loaded or stored as one access; with N * sizeof(T) == 16 the
// compiler emits 128-bit loads/stores (LDG.E.128 / STG.E.128).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T e[N];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sum of `v` over the whole block, returned to every thread. blockDim.x must be a
// multiple of 32 (the launch wrappers guarantee it). Contains __syncthreads().
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x >> 5;
        float w = lane < nwarps ? warp_sums[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) {
            total = w;
        }
    }
    __syncthreads();
    return total;
}

__device__ __forceinline__ bool hl_aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
