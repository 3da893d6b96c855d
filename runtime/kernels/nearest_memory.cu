// Nearest-memory scoring in one pass: for each of N patch embeddings z (D dims), the distance to its
// nearest memory item (K items, D dims) and that item's index, without ever writing an N x K matrix.
//
// Contract (matches lemo_edge.scoring.nearest_memory with k=1; k > 1 is not supported by this kernel):
//   score[n] = sqrt(min_k ||z[n] - memory[k]||^2)    float32
//   index[n] = argmin_k ||z[n] - memory[k]||^2        int64; ties -> the smallest index, like torch.min,
//                                                     whose documentation returns the first minimal index
// Inputs are row-major contiguous; both float32 (nearest_memory_f32) or both float16 (nearest_memory_f16).
// Accumulation is always float32.
//
// Distance: the sum of squared differences (z - m)^2 over D, accumulated in float32 in dimension order.
// Unlike the expanded form |z|^2 - 2 z.m + |m|^2 used by the torch reference, it cannot cancel
// catastrophically or go negative, so no clamping is needed, and two identical memory rows give
// bit-identical distances (exact ties). Scores therefore agree with the reference to float32
// rounding of the reference's expanded form; indices agree wherever the two nearest items are not
// within that rounding of each other.
// NaN: a NaN distance wins over any number (torch.min propagates NaN); among NaNs the first index wins.
//
// Tiling: a block of 16 x 16 threads owns kTileN = 32 patches. It walks the memory in tiles of
// kTileK = 64 items; for each tile it walks D in chunks of kTileD = 16, staging the 32 x 16 patch chunk
// and the 64 x 16 memory chunk in shared memory (transposed, padded against bank conflicts). Each
// thread accumulates a 2 x 4 micro-tile of squared distances (patches ty + 16 i, items tx + 16 j), folds
// it into its running (best, index) per patch, and at the end the 16 threads sharing a patch reduce
// with warp shuffles. Out-of-range patches, items and dimensions are zero-padded / skipped, so any
// N >= 1, K >= 1, D >= 1 works (N, K, D < 2^31). Grid: ceil(N / 32) blocks of (16, 16) threads.
#include <cuda_fp16.h>

namespace {

constexpr int kThreadsX = 16;  // threads across memory items
constexpr int kThreadsY = 16;  // threads across patches
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kPatchesPerThread = 2;
constexpr int kItemsPerThread = 4;
constexpr int kTileN = kThreadsY * kPatchesPerThread;  // 32 patches per block
constexpr int kTileK = kThreadsX * kItemsPerThread;    // 64 memory items per tile
constexpr int kTileD = 16;                             // dimensions staged at a time
constexpr int kNoIndex = 0x7fffffff;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Whether candidate (d, i) replaces (best, best_i): smaller distance, NaN first, ties -> smaller index.
__device__ __forceinline__ bool better(float d, int i, float best, int best_i) {
  const bool d_nan = isnan(d);
  const bool b_nan = isnan(best);
  if (d_nan != b_nan) return d_nan;
  if (d_nan) return i < best_i;
  return d < best || (d == best && i < best_i);
}

template <typename T>
__device__ __forceinline__ void nearest_memory_impl(const T* __restrict__ z, const T* __restrict__ memory,
                                                    float* __restrict__ score, long long* __restrict__ index,
                                                    int n, int k, int d) {
  __shared__ float zs[kTileD][kTileN + 1];
  __shared__ float ms[kTileD][kTileK + 1];

  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int tid = ty * kThreadsX + tx;
  const int n0 = blockIdx.x * kTileN;

  float best[kPatchesPerThread];
  int best_i[kPatchesPerThread];
#pragma unroll
  for (int p = 0; p < kPatchesPerThread; ++p) {
    best[p] = __int_as_float(0x7f800000);  // +inf
    best_i[p] = kNoIndex;
  }

  for (int k0 = 0; k0 < k; k0 += kTileK) {
    float acc[kPatchesPerThread][kItemsPerThread];
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p)
#pragma unroll
      for (int j = 0; j < kItemsPerThread; ++j) acc[p][j] = 0.0f;

    for (int d0 = 0; d0 < d; d0 += kTileD) {
      // Stage the chunks; consecutive threads read consecutive dimensions of a row (coalesced).
      for (int e = tid; e < kTileN * kTileD; e += kThreads) {
        const int row = e / kTileD;
        const int col = e % kTileD;
        const int patch = n0 + row;
        const int dim = d0 + col;
        zs[col][row] = (patch < n && dim < d) ? to_float(z[static_cast<size_t>(patch) * d + dim]) : 0.0f;
      }
      for (int e = tid; e < kTileK * kTileD; e += kThreads) {
        const int row = e / kTileD;
        const int col = e % kTileD;
        const int item = k0 + row;
        const int dim = d0 + col;
        ms[col][row] = (item < k && dim < d) ? to_float(memory[static_cast<size_t>(item) * d + dim]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTileD; ++c) {
        float a[kPatchesPerThread];
        float b[kItemsPerThread];
#pragma unroll
        for (int p = 0; p < kPatchesPerThread; ++p) a[p] = zs[c][ty + p * kThreadsY];
#pragma unroll
        for (int j = 0; j < kItemsPerThread; ++j) b[j] = ms[c][tx + j * kThreadsX];
#pragma unroll
        for (int p = 0; p < kPatchesPerThread; ++p)
#pragma unroll
          for (int j = 0; j < kItemsPerThread; ++j) {
            const float diff = a[p] - b[j];
            acc[p][j] = fmaf(diff, diff, acc[p][j]);
          }
      }
      __syncthreads();
    }

    // Items of this thread ascend with j, so a strict comparison keeps the first of equal distances.
#pragma unroll
    for (int j = 0; j < kItemsPerThread; ++j) {
      const int item = k0 + tx + j * kThreadsX;
      if (item < k) {
#pragma unroll
        for (int p = 0; p < kPatchesPerThread; ++p) {
          if (better(acc[p][j], item, best[p], best_i[p])) {
            best[p] = acc[p][j];
            best_i[p] = item;
          }
        }
      }
    }
  }

  // The 16 threads sharing patches are lanes 0-15 or 16-31 of one warp: reduce with xor shuffles.
#pragma unroll
  for (int offset = kThreadsX / 2; offset > 0; offset >>= 1) {
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p) {
      const float other = __shfl_xor_sync(0xffffffffu, best[p], offset);
      const int other_i = __shfl_xor_sync(0xffffffffu, best_i[p], offset);
      if (better(other, other_i, best[p], best_i[p])) {
        best[p] = other;
        best_i[p] = other_i;
      }
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p) {
      const int patch = n0 + ty + p * kThreadsY;
      if (patch < n) {
        score[patch] = sqrtf(best[p]);
        index[patch] = static_cast<long long>(best_i[p]);
      }
    }
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads)
    nearest_memory_f32(const float* __restrict__ z, const float* __restrict__ memory, float* __restrict__ score,
                       long long* __restrict__ index, int n, int k, int d) {
  nearest_memory_impl<float>(z, memory, score, index, n, k, d);
}

extern "C" __global__ void __launch_bounds__(kThreads)
    nearest_memory_f16(const __half* __restrict__ z, const __half* __restrict__ memory, float* __restrict__ score,
                       long long* __restrict__ index, int n, int k, int d) {
  nearest_memory_impl<__half>(z, memory, score, index, n, k, d);
}
