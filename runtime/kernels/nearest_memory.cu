// Nearest-memory scoring: for each of N patch embeddings z (D dims), its KT nearest memory items (K items,
// D dims), never writing an N x K matrix. One source for nvcc and NVRTC: no #include (float16 values are
// read as raw 16-bit words and converted with the PTX `cvt.f32.f16` instruction).
//
// Contract (lemo_edge.scoring.nearest_memory with k = KT, 1 <= KT <= 8, KT <= K):
//   score[n]    = mean over the KT nearest items of sqrt(max(d2, 0))            float32
//   index[n]    = the nearest item                                               int64
//   distance[n] = sqrt(max(d2, 0)) of the nearest item (written when KT > 1)     float32
// with d2 = |m|^2 - 2 z.m + |z|^2, the reference's expanded form, accumulated in float32 (inputs float32, or
// float16 converted to float32 when read). Items are ordered by (d2, index): equal distances go to the smaller
// index. A NaN distance makes the patch's score and distance NaN (torch.min does the same for k = 1); its index
// is then the nearest non-NaN item (0 if none).
//
// Two kernels, launched back to back on the same stream:
// 1. nearest_partial_<dtype>_k<KT>: grid (ceil(N / 64), S). Block (x, s) owns 64 patches and the items
//    [s * per_split, (s + 1) * per_split) of the memory. It walks them in tiles of 64 items; for each tile it
//    walks D in chunks of 16, staging the 64 x 16 patch chunk and the 64 x 16 memory chunk in shared memory
//    (transposed) while the staging threads accumulate each item's |m|^2. Each of the 16 x 16 threads owns a
//    4 x 4 micro-tile (patches 4 ty .. 4 ty + 3, items 4 tx .. 4 tx + 3), read from shared memory as float4,
//    and keeps a sorted top-KT list per patch in registers. At the end the 16 threads sharing patches merge
//    their lists with xor shuffles, and lane tx = 0 writes the block's top-KT (|m|^2 - 2 z.m, index) per patch
//    to part_val / part_idx [N][S][KT].
// 2. nearest_merge_<dtype>_k<KT>: one warp per patch (8 per block of 256): |z|^2 with a coalesced read of the
//    row, the S * KT candidates spread over the lanes, merged with xor shuffles; lane 0 writes the outputs.
// Splitting the memory over S blocks keeps a GPU busy when N is small (one 256x256 frame gives N = 1024,
// 16 patch tiles). Any N >= 1, K >= 1, D >= 1 (N * S * KT and N * D, K * D < 2^63; N, K, D < 2^31).
#define LEMO_FULL_MASK 0xffffffffu

namespace {

constexpr int kThreadsX = 16;  // threads across memory items
constexpr int kThreadsY = 16;  // threads across patches
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kPatchesPerThread = 4;
constexpr int kItemsPerThread = 4;
constexpr int kTileN = kThreadsY * kPatchesPerThread;  // 64 patches per block
constexpr int kTileK = kThreadsX * kItemsPerThread;    // 64 memory items per tile
constexpr int kTileD = 16;                             // dimensions staged at a time
constexpr int kPad = 4;                                // keeps rows 16-byte aligned for float4 reads
constexpr int kMergeThreads = 256;                     // 8 warps, one patch each
constexpr int kNoIndex = 0x7fffffff;

static_assert(kTileN * kTileD == 4 * kThreads, "each thread stages 4 values of the patch chunk");
static_assert(kTileK * kTileD == 4 * kThreads, "each thread stages 4 values of the memory chunk");

__device__ __forceinline__ float load(const float* __restrict__ p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const unsigned short* __restrict__ p, size_t i) {
  const unsigned short bits = p[i];
  float value;
  asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
  return value;
}

// (a, ia) before (b, ib): smaller distance, then smaller index. NaN is never before anything.
__device__ __forceinline__ bool before(float a, int ia, float b, int ib) { return a < b || (a == b && ia < ib); }

// Insert (x, xi) into the sorted list (v, ix) of length KT if it belongs there (registers only: fully unrolled).
template <int KT>
__device__ __forceinline__ void insert(float (&v)[KT], int (&ix)[KT], float x, int xi) {
  if (!before(x, xi, v[KT - 1], ix[KT - 1])) return;
  v[KT - 1] = x;
  ix[KT - 1] = xi;
#pragma unroll
  for (int r = KT - 1; r > 0; --r) {
    if (before(v[r], ix[r], v[r - 1], ix[r - 1])) {
      const float tv = v[r];
      v[r] = v[r - 1];
      v[r - 1] = tv;
      const int ti = ix[r];
      ix[r] = ix[r - 1];
      ix[r - 1] = ti;
    }
  }
}

// Merge the list of the lane `offset` away (xor) into this lane's; both lanes end with the same list.
template <int KT>
__device__ __forceinline__ void merge_lane(float (&v)[KT], int (&ix)[KT], int offset) {
  float ov[KT];
  int oi[KT];
#pragma unroll
  for (int r = 0; r < KT; ++r) {
    ov[r] = __shfl_xor_sync(LEMO_FULL_MASK, v[r], offset);
    oi[r] = __shfl_xor_sync(LEMO_FULL_MASK, ix[r], offset);
  }
#pragma unroll
  for (int r = 0; r < KT; ++r) insert<KT>(v, ix, ov[r], oi[r]);
}

template <typename T, int KT>
__device__ __forceinline__ void partial_impl(const T* __restrict__ z, const T* __restrict__ memory,
                                             float* __restrict__ part_val, int* __restrict__ part_idx, int n, int k,
                                             int d, int per_split) {
  __shared__ __align__(16) float zs[kTileD][kTileN + kPad];
  __shared__ __align__(16) float ms[kTileD][kTileK + kPad];
  __shared__ float msq[kTileK];

  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int tid = ty * kThreadsX + tx;
  const int n0 = blockIdx.x * kTileN;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int k_begin = split * per_split;
  const int k_end = min(k, k_begin + per_split);
  // Staging: thread tid loads dims [4 (tid % 4), +4) of row tid / 4 of both chunks; the 4 threads of a row are
  // consecutive lanes, so their partial |m|^2 reduce with two shuffles.
  const int srow = tid >> 2;
  const int scol = (tid & 3) * 4;

  float best[kPatchesPerThread][KT];
  int best_i[kPatchesPerThread][KT];
  int nan_mask = 0;
#pragma unroll
  for (int p = 0; p < kPatchesPerThread; ++p)
#pragma unroll
    for (int r = 0; r < KT; ++r) {
      best[p][r] = __int_as_float(0x7f800000);  // +inf
      best_i[p][r] = kNoIndex;
    }

  const int patch_row = n0 + srow;
  for (int k0 = k_begin; k0 < k_end; k0 += kTileK) {
    float acc[kPatchesPerThread][kItemsPerThread];
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p)
#pragma unroll
      for (int j = 0; j < kItemsPerThread; ++j) acc[p][j] = 0.0f;
    float sq = 0.0f;
    const int item_row = k0 + srow;

    for (int d0 = 0; d0 < d; d0 += kTileD) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int dim = d0 + scol + q;
        const bool in_d = dim < d;
        zs[scol + q][srow] = (patch_row < n && in_d) ? load(z, static_cast<size_t>(patch_row) * d + dim) : 0.0f;
        const float mv = (item_row < k_end && in_d) ? load(memory, static_cast<size_t>(item_row) * d + dim) : 0.0f;
        ms[scol + q][srow] = mv;
        sq = fmaf(mv, mv, sq);
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTileD; ++c) {
        const float4 a4 = *reinterpret_cast<const float4*>(&zs[c][ty * kPatchesPerThread]);
        const float4 b4 = *reinterpret_cast<const float4*>(&ms[c][tx * kItemsPerThread]);
        const float a[kPatchesPerThread] = {a4.x, a4.y, a4.z, a4.w};
        const float b[kItemsPerThread] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int p = 0; p < kPatchesPerThread; ++p)
#pragma unroll
          for (int j = 0; j < kItemsPerThread; ++j) acc[p][j] = fmaf(a[p], b[j], acc[p][j]);
      }
      __syncthreads();
    }

    sq += __shfl_xor_sync(LEMO_FULL_MASK, sq, 1);
    sq += __shfl_xor_sync(LEMO_FULL_MASK, sq, 2);
    if ((tid & 3) == 0) msq[srow] = sq;
    __syncthreads();
    // This thread's items ascend with j and with k0.
#pragma unroll
    for (int j = 0; j < kItemsPerThread; ++j) {
      const int item = k0 + tx * kItemsPerThread + j;
      if (item < k_end) {
        const float m2 = msq[tx * kItemsPerThread + j];
#pragma unroll
        for (int p = 0; p < kPatchesPerThread; ++p) {
          const float value = fmaf(-2.0f, acc[p][j], m2);
          if (isnan(value)) nan_mask |= 1 << p;
          insert<KT>(best[p], best_i[p], value, item);
        }
      }
    }
    __syncthreads();  // msq is rewritten by the next tile
  }

  // The 16 threads sharing patches are lanes 0-15 or 16-31 of one warp: xor offsets below 16 stay inside.
#pragma unroll
  for (int offset = kThreadsX / 2; offset > 0; offset >>= 1) {
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p) merge_lane<KT>(best[p], best_i[p], offset);
    nan_mask |= __shfl_xor_sync(LEMO_FULL_MASK, nan_mask, offset);
  }
  if (tx == 0) {
#pragma unroll
    for (int p = 0; p < kPatchesPerThread; ++p) {
      const int patch = n0 + ty * kPatchesPerThread + p;
      if (patch < n) {
        const size_t base = (static_cast<size_t>(patch) * splits + split) * KT;
#pragma unroll
        for (int r = 0; r < KT; ++r) {
          part_val[base + r] = best[p][r];
          part_idx[base + r] = best_i[p][r];
        }
        if (nan_mask & (1 << p)) part_val[base + KT - 1] = __int_as_float(0x7fc00000);  // NaN marker
      }
    }
  }
}

template <typename T, int KT>
__device__ __forceinline__ void merge_impl(const T* __restrict__ z, const float* __restrict__ part_val,
                                           const int* __restrict__ part_idx, float* __restrict__ score,
                                           long long* __restrict__ index, float* __restrict__ distance, int n, int d,
                                           int splits) {
  const int lane = threadIdx.x & 31;
  const int patch = blockIdx.x * (kMergeThreads / 32) + (threadIdx.x >> 5);
  if (patch >= n) return;  // uniform per warp

  float zsq = 0.0f;
  for (int dim = lane; dim < d; dim += 32) {
    const float value = load(z, static_cast<size_t>(patch) * d + dim);
    zsq = fmaf(value, value, zsq);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) zsq += __shfl_xor_sync(LEMO_FULL_MASK, zsq, offset);

  float v[KT];
  int ix[KT];
#pragma unroll
  for (int r = 0; r < KT; ++r) {
    v[r] = __int_as_float(0x7f800000);
    ix[r] = kNoIndex;
  }
  bool bad = false;
  const int total = splits * KT;
  const size_t base = static_cast<size_t>(patch) * total;
  for (int c = lane; c < total; c += 32) {
    const float x = part_val[base + c];
    bad |= isnan(x);
    insert<KT>(v, ix, x, part_idx[base + c]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) merge_lane<KT>(v, ix, offset);
  bad = __any_sync(LEMO_FULL_MASK, bad);

  if (lane == 0) {
    float sum = 0.0f;
    float nearest = 0.0f;
#pragma unroll
    for (int r = 0; r < KT; ++r) {
      const float root = sqrtf(fmaxf(v[r] + zsq, 0.0f));
      if (r == 0) nearest = root;
      sum += root;
    }
    const float nan = __int_as_float(0x7fc00000);
    score[patch] = bad ? nan : sum / static_cast<float>(KT);
    index[patch] = static_cast<long long>(ix[0] == kNoIndex ? 0 : ix[0]);
    if (distance != nullptr) distance[patch] = bad ? nan : nearest;
  }
}

}  // namespace

#define LEMO_NEAREST_KERNELS(KT)                                                                                     \
  extern "C" __global__ void __launch_bounds__(kThreads)                                                             \
      nearest_partial_f32_k##KT(const float* __restrict__ z, const float* __restrict__ memory,                        \
                                float* __restrict__ part_val, int* __restrict__ part_idx, int n, int k, int d,        \
                                int per_split) {                                                                     \
    partial_impl<float, KT>(z, memory, part_val, part_idx, n, k, d, per_split);                                      \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kThreads)                                                             \
      nearest_partial_f16_k##KT(const unsigned short* __restrict__ z, const unsigned short* __restrict__ memory,      \
                                float* __restrict__ part_val, int* __restrict__ part_idx, int n, int k, int d,        \
                                int per_split) {                                                                     \
    partial_impl<unsigned short, KT>(z, memory, part_val, part_idx, n, k, d, per_split);                             \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kMergeThreads)                                                        \
      nearest_merge_f32_k##KT(const float* __restrict__ z, const float* __restrict__ part_val,                        \
                              const int* __restrict__ part_idx, float* __restrict__ score,                           \
                              long long* __restrict__ index, float* __restrict__ distance, int n, int d, int splits) { \
    merge_impl<float, KT>(z, part_val, part_idx, score, index, distance, n, d, splits);                              \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(kMergeThreads)                                                        \
      nearest_merge_f16_k##KT(const unsigned short* __restrict__ z, const float* __restrict__ part_val,               \
                              const int* __restrict__ part_idx, float* __restrict__ score,                           \
                              long long* __restrict__ index, float* __restrict__ distance, int n, int d, int splits) { \
    merge_impl<unsigned short, KT>(z, part_val, part_idx, score, index, distance, n, d, splits);                     \
  }

LEMO_NEAREST_KERNELS(1)
LEMO_NEAREST_KERNELS(2)
LEMO_NEAREST_KERNELS(3)
LEMO_NEAREST_KERNELS(4)
LEMO_NEAREST_KERNELS(5)
LEMO_NEAREST_KERNELS(6)
LEMO_NEAREST_KERNELS(7)
LEMO_NEAREST_KERNELS(8)
