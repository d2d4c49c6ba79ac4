// model.dense_impl = "native" (nt_robust/cpu/dense.py): a float32 matrix product as an XLA FFI
// custom call,
//   out[M, N] = A B,   A = a (M x K), or a^T with transpose_a;   B = b (K x N), or b^T with transpose_b,
// for the three products of a dense layer: the forward pass x W, the input gradient g W^T
// (transpose_b) and the weight gradient x^T g (transpose_a).
//
// Blocked as in BLIS: the output is cut into tiles of register blocks (kMR rows x two vectors
// of sums, kept in registers over a slice of kKC terms of K). Operands are copied ("packed")
// into the order a register block reads them; W^T is packed from W by transposing
// kLanes x kLanes blocks in registers. Tiles, and for a long K pieces of K summed afterwards
// in a fixed order, are spread over XLA's thread pool (common.h). How the work is cut depends
// on the shapes only, so a result never depends on which thread ran what.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using nt_robust::kLanes;
using nt_robust::vec;
namespace ffi = xla::ffi;

constexpr int64_t kNR = 2 * kLanes;            // columns per register block: two vectors
constexpr int64_t kMR = kLanes == 16 ? 8 : 6;  // rows per register block: 16 (AVX-512) or 12 (AVX2) sums + 2 of B
constexpr int64_t kKC = 256;                   // K slice: a packed column block (kKC x kNR) fits in L1
constexpr int64_t kTileRowBlocks = 16, kTileColumnBlocks = 8;  // a tile of register blocks, at most
constexpr int64_t kSerialPackFloats = 1 << 18;  // a shared operand up to 1 MiB is packed by the caller
constexpr int64_t kChunks = 4;                 // work items to aim for: enough to balance threads that start late
constexpr int64_t kMinPieceK = 256;            // K per piece, at least, when K is split

struct Product {
  const float* a;
  const float* b;
  int64_t m, n, k;
  bool transpose_a, transpose_b;
};

typedef int32_t lane_indices __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Swaps the off-diagonal D x D blocks of rows x and y (y D rows below x): one step of a
// kLanes x kLanes transpose, two two-source permutes.
template <int D>
inline void exchange(vec& x, vec& y) {
  lane_indices low, high;
  for (int c = 0; c < kLanes; ++c) {
    low[c] = (c & D) ? kLanes + c - D : c;
    high[c] = (c & D) ? kLanes + c : c + D;
  }
  const vec new_x = __builtin_shuffle(x, y, low), new_y = __builtin_shuffle(x, y, high);
  x = new_x;
  y = new_y;
}

template <int D>
inline void transpose_steps(vec* rows) {
  if constexpr (D >= 1) {
    for (int i = 0; i < kLanes; ++i)
      if ((i & D) == 0) exchange<D>(rows[i], rows[i + D]);
    transpose_steps<D / 2>(rows);
  }
}

// rows[r][c] -> rows[c][r] for a kLanes x kLanes block held in registers.
inline void transpose(vec* rows) { transpose_steps<kLanes / 2>(rows); }

// out[0:rows, 0:cols] (+)= the kMR x kNR block of A(packed) B(packed) over kc terms of K.
// Packed A element (r, kk) sits at pa[r * rs + kk * ks]; packed B row kk at pb[kk * kNR].
inline void register_block(const float* pa, int64_t rs, int64_t ks, const float* pb, int64_t kc, float* out,
                           int64_t ldo, bool accumulate, int64_t rows, int64_t cols) {
  vec acc[kMR][2];
  const float* arow[kMR];
  for (int64_t r = 0; r < kMR; ++r) {
    acc[r][0] = acc[r][1] = vec{};
    arow[r] = pa + r * rs;
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    vec b0, b1;
    std::memcpy(&b0, pb + kk * kNR, sizeof(vec));
    std::memcpy(&b1, pb + kk * kNR + kLanes, sizeof(vec));
#pragma GCC unroll 16
    for (int64_t r = 0; r < kMR; ++r) {
      const float a = arow[r][kk * ks];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * ldo;
    if (cols == kNR) {
      if (accumulate) {
        vec o0, o1;
        std::memcpy(&o0, o, sizeof(vec));
        std::memcpy(&o1, o + kLanes, sizeof(vec));
        acc[r][0] += o0;
        acc[r][1] += o1;
      }
      std::memcpy(o, &acc[r][0], sizeof(vec));
      std::memcpy(o + kLanes, &acc[r][1], sizeof(vec));
      continue;
    }
    float sums[kNR];
    std::memcpy(sums, &acc[r][0], sizeof(vec));
    std::memcpy(sums + kLanes, &acc[r][1], sizeof(vec));
    for (int64_t j = 0; j < cols; ++j) o[j] = accumulate ? o[j] + sums[j] : sums[j];
  }
}

// Operands copied ("packed") into the order the register blocks read them: B as column blocks
// of [k][kNR] (zeros past the last column); A as row blocks, either [r][k] at a row stride
// padded off multiples of 1 KiB (padded()) or (transpose_a: a's rows hold A's columns) [k][kMR]
// (zeros past the last row). An operand that several tiles read is packed once per call, before the tiles; one
// that a single tile reads is packed by that tile a K slice at a time, while it is in cache.
struct Packing {
  float* data;    // whole-call packing, or nullptr: each tile packs its slices
  int64_t block;  // floats per row (column) block
  int64_t rows;   // A: floats between a block's rows (not transpose_a)
};

// B's rows [k_begin, k_begin + kc) of column block jb into pb ([kc][kNR]) from b stored
// N x K (transpose_b): kLanes x kLanes blocks transposed in registers.
void pack_transposed_b(const Product& p, int64_t jb, int64_t k_begin, int64_t kc, float* pb) {
  const int64_t j0 = jb * kNR, cols = std::min(kNR, p.n - j0);
  int64_t k = k_begin;
  for (; k + kLanes <= k_begin + kc; k += kLanes)
    for (int64_t half = 0; half < kNR / kLanes; ++half) {
      vec rows[kLanes];
      for (int64_t r = 0; r < kLanes; ++r) {
        const int64_t j = half * kLanes + r;
        if (j < cols)
          std::memcpy(&rows[r], p.b + (j0 + j) * p.k + k, sizeof(vec));
        else
          rows[r] = vec{};
      }
      transpose(rows);
      for (int64_t c = 0; c < kLanes; ++c) std::memcpy(pb + (k - k_begin + c) * kNR + half * kLanes, &rows[c], sizeof(vec));
    }
  for (; k < k_begin + kc; ++k)
    for (int64_t j = 0; j < kNR; ++j) pb[(k - k_begin) * kNR + j] = j < cols ? p.b[(j0 + j) * p.k + k] : 0.0f;
}

// B's rows [k_begin, k_begin + kc) of column block jb into pb ([kc][kNR]).
void pack_b(const Product& p, int64_t jb, int64_t k_begin, int64_t kc, float* pb) {
  if (p.transpose_b) return pack_transposed_b(p, jb, k_begin, kc, pb);
  const int64_t j0 = jb * kNR, cols = std::min(kNR, p.n - j0);
  for (int64_t k = k_begin; k < k_begin + kc; ++k, pb += kNR) {
    const float* src = p.b + k * p.n + j0;
    if (cols == kNR) {  // a copy of fixed size: two vector moves, not a call to memcpy
      std::memcpy(pb, src, kNR * sizeof(float));
    } else {
      std::memcpy(pb, src, cols * sizeof(float));
      std::fill(pb + cols, pb + kNR, 0.0f);
    }
  }
}

// Terms [k_begin, k_begin + kc) of A's row block ib into pa, rows (or ks, transpose_a) `stride` apart.
void pack_a(const Product& p, int64_t ib, int64_t k_begin, int64_t kc, int64_t stride, float* pa) {
  const int64_t i0 = ib * kMR, rows = std::min(kMR, p.m - i0);
  if (p.transpose_a) {
    for (int64_t k = k_begin; k < k_begin + kc; ++k, pa += kMR) {
      const float* src = p.a + k * p.m + i0;
      if (rows == kMR) {
        std::memcpy(pa, src, kMR * sizeof(float));
      } else {
        std::memcpy(pa, src, rows * sizeof(float));
        std::fill(pa + rows, pa + kMR, 0.0f);
      }
    }
    return;
  }
  for (int64_t r = 0; r < kMR; ++r, pa += stride) {
    if (r < rows)
      std::memcpy(pa, p.a + (i0 + r) * p.k + k_begin, kc * sizeof(float));
    else
      std::fill(pa, pa + kc, 0.0f);
  }
}

// A row stride for packed A rows of `length` floats: past it, and off a multiple of 1 KiB
// (rows a multiple of 4 KiB apart would share the same few L1 sets).
int64_t padded(int64_t length) { return length % 256 == 0 ? length + 16 : length; }

// How A is packed, rows `length` floats long: the floats per row block and between rows.
Packing a_packing(const Product& p, float* data, int64_t length) {
  return p.transpose_a ? Packing{data, length * kMR, 1} : Packing{data, kMR * padded(length), padded(length)};
}

// The tile of out (row stride ldo) with row blocks [ib0, ib1) and column blocks [jb0, jb1), over
// K in [k_begin, k_end), in slices of kKC: one column block's slice stays in L1 while the tile's
// row blocks pass it. out holds exactly these sums afterwards.
// Part `part` of `parts` of the cache lines of `rows` rows of `length` floats, `stride` apart,
// asked into L2 ahead of their packing.
void prefetch_rows(const float* base, int64_t stride, int64_t rows, int64_t length, int64_t part, int64_t parts) {
  const int64_t per_row = (length + 15) / 16, lines = rows * per_row;
  for (int64_t line = part * lines / parts; line < (part + 1) * lines / parts; ++line)
    __builtin_prefetch(base + (line / per_row) * stride + (line % per_row) * 16, 0, 2);
}

// The source rows of B's column block jb over terms [k0, k0 + kc), part `part` of `parts`.
void prefetch_b(const Product& p, int64_t jb, int64_t k0, int64_t kc, int64_t part, int64_t parts) {
  const int64_t j0 = jb * kNR, cols = std::min(kNR, p.n - j0);
  if (p.transpose_b)
    prefetch_rows(p.b + j0 * p.k + k0, p.k, cols, kc, part, parts);
  else
    prefetch_rows(p.b + k0 * p.n + j0, p.n, kc, cols, part, parts);
}

// The source of A's row blocks [ib0, ib1) over terms [k0, k0 + kc), part `part` of `parts`.
void prefetch_a(const Product& p, int64_t ib0, int64_t ib1, int64_t k0, int64_t kc, int64_t part, int64_t parts) {
  const int64_t i0 = ib0 * kMR, rows = std::min(p.m, ib1 * kMR) - i0;
  if (p.transpose_a)
    prefetch_rows(p.a + k0 * p.m + i0, p.m, kc, rows, part, parts);
  else
    prefetch_rows(p.a + i0 * p.k + k0, p.k, rows, kc, part, parts);
}

// The tile of out (row stride ldo) with row blocks [ib0, ib1) and column blocks [jb0, jb1), over
// K in [k_begin, k_end), in slices of kKC: one column block's slice stays in L1 while the tile's
// row blocks pass it. Operands not packed for the whole call are packed here a slice (B: a
// column block) at a time, their next part's source prefetched while the register blocks run.
// out holds exactly these sums afterwards.
void tile(const Product& p, const Packing& pa_all, const Packing& pb_all, int64_t ib0, int64_t ib1, int64_t jb0,
          int64_t jb1, int64_t k_begin, int64_t k_end, float* out, int64_t ldo) {
  thread_local std::vector<float> a_slice, b_slice;
  const Packing pa_local = a_packing(p, nullptr, kKC);
  if (!pa_all.data) a_slice.resize((ib1 - ib0) * pa_local.block);
  if (!pb_all.data) b_slice.resize(kKC * kNR);
  const int64_t row_blocks = ib1 - ib0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kKC) {
    const int64_t kc = std::min(kKC, k_end - k0), k_next = k0 + kc, kc_next = std::min(kKC, k_end - k_next);
    if (!pa_all.data)
      for (int64_t ib = ib0; ib < ib1; ++ib)
        pack_a(p, ib, k0, kc, pa_local.rows, a_slice.data() + (ib - ib0) * pa_local.block);
    for (int64_t jb = jb0; jb < jb1; ++jb) {
      const float* pb = pb_all.data ? pb_all.data + jb * pb_all.block + k0 * kNR : b_slice.data();
      if (!pb_all.data) pack_b(p, jb, k0, kc, b_slice.data());
      for (int64_t ib = ib0; ib < ib1; ++ib) {
        if (!pb_all.data && jb + 1 < jb1) prefetch_b(p, jb + 1, k0, kc, ib - ib0, row_blocks);
        if (!pb_all.data && jb + 1 == jb1 && kc_next > 0) prefetch_b(p, jb0, k_next, kc_next, ib - ib0, row_blocks);
        if (!pa_all.data && kc_next > 0)
          prefetch_a(p, ib0, ib1, k_next, kc_next, (jb - jb0) * row_blocks + ib - ib0, (jb1 - jb0) * row_blocks);
        const Packing& pa = pa_all.data ? pa_all : pa_local;
        const float* a = pa_all.data ? pa_all.data + ib * pa_all.block + (p.transpose_a ? k0 * kMR : k0)
                                     : a_slice.data() + (ib - ib0) * pa_local.block;
        const int64_t i0 = (ib - ib0) * kMR, j0 = (jb - jb0) * kNR;
        register_block(a, pa.rows, p.transpose_a ? kMR : 1, pb, kc, out + i0 * ldo + j0, ldo, k0 > k_begin,
                       std::min(kMR, p.m - ib * kMR), std::min(kNR, p.n - jb * kNR));
      }
    }
  }
}

// Buffers reused from call to call on the calling thread (no allocation, nor page faults, per
// call). A lambda names a thread_local as the running thread's own, so the tasks get pointers.
float* scratch(std::vector<float>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> out, bool transpose_a, bool transpose_b) {
  const auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || od.size() != 2)
    return ffi::Error::InvalidArgument("matmul: operands must be 2-d");
  const Product p{a.typed_data(), b.typed_data(), transpose_a ? ad[1] : ad[0], transpose_b ? bd[0] : bd[1],
                  transpose_a ? ad[0] : ad[1], transpose_a, transpose_b};
  if ((transpose_b ? bd[1] : bd[0]) != p.k || od[0] != p.m || od[1] != p.n)
    return ffi::Error::InvalidArgument("matmul: the operands' shapes do not chain");
  float* result = out->typed_data();
  if (p.m == 0 || p.n == 0) return ffi::Error::Success();
  if (p.k == 0) {
    std::fill(result, result + p.m * p.n, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t row_blocks = (p.m + kMR - 1) / kMR, column_blocks = (p.n + kNR - 1) / kNR;
  // The work is cut into tiles of register blocks and (for a long K) pieces of K, at least
  // kChunks items where the product allows, so that no thread waits long for another. A
  // forward pass (128 x 3072 by 3072 x 256: one tile) is cut along K: its pieces are summed into
  // buffers of their own, and whichever task finishes a tile's last piece adds them to it, in
  // piece order. A short K (a 128 x 256 by 256 x 256 layer) has smaller tiles instead. The cut
  // depends on the shapes only.
  int64_t tile_rows = kTileRowBlocks, tile_columns = kTileColumnBlocks;
  auto tiles_of = [&](int64_t rows, int64_t columns) {
    return ((row_blocks + rows - 1) / rows) * ((column_blocks + columns - 1) / columns);
  };
  const int64_t pieces = std::max<int64_t>(
      1, std::min((kChunks + tiles_of(tile_rows, tile_columns) - 1) / tiles_of(tile_rows, tile_columns), p.k / kMinPieceK));
  while (tiles_of(tile_rows, tile_columns) * pieces < kChunks && (tile_rows > 1 || tile_columns > 1)) {
    const bool rows_first = std::min(tile_rows, row_blocks) >= std::min(tile_columns, column_blocks);
    if (rows_first && tile_rows > 1)
      tile_rows = (tile_rows + 1) / 2;
    else if (tile_columns > 1)
      tile_columns = (tile_columns + 1) / 2;
    else
      tile_rows = (tile_rows + 1) / 2;
  }
  const int64_t row_tiles = (row_blocks + tile_rows - 1) / tile_rows;
  const int64_t column_tiles = (column_blocks + tile_columns - 1) / tile_columns;
  const int64_t tiles = row_tiles * column_tiles;
  thread_local std::vector<float> a_buffer, b_buffer, partial_buffer;
  const Packing pa_all = a_packing(p, column_tiles > 1 ? scratch(a_buffer, row_blocks * a_packing(p, nullptr, p.k).block)
                                                       : nullptr, p.k);
  const Packing pb_all{row_tiles > 1 ? scratch(b_buffer, column_blocks * p.k * kNR) : nullptr, p.k * kNR, 0};
  const int64_t shared_blocks = (pa_all.data ? row_blocks : 0) + (pb_all.data ? column_blocks : 0);
  auto pack_shared = [&](int64_t block) {
    const int64_t b_blocks = pb_all.data ? column_blocks : 0;
    if (block < b_blocks)
      pack_b(p, block, 0, p.k, pb_all.data + block * pb_all.block);
    else
      pack_a(p, block - b_blocks, 0, p.k, pa_all.rows, pa_all.data + (block - b_blocks) * pa_all.block);
  };
  // A small shared operand (a 128 x 256 output gradient, say) is packed here, which is quicker
  // than waking the pool for it; a large one by the pool.
  const int64_t shared_floats = (pa_all.data ? row_blocks * pa_all.block : 0) + (pb_all.data ? column_blocks * pb_all.block : 0);
  if (shared_floats <= kSerialPackFloats)
    for (int64_t block = 0; block < shared_blocks; ++block) pack_shared(block);
  else
    nt_robust::parallel_for(pool, shared_blocks, pack_shared);

  const int64_t piece_k = (p.k + pieces - 1) / pieces;
  float* const partial = pieces > 1 ? scratch(partial_buffer, (pieces - 1) * p.m * p.n) : nullptr;
  std::unique_ptr<std::atomic<int64_t>[]> pieces_left(new std::atomic<int64_t>[tiles]);
  for (int64_t t = 0; t < tiles; ++t) pieces_left[t].store(pieces, std::memory_order_relaxed);
  auto compute = [&](int64_t chunk) {
    const int64_t piece = chunk / tiles, t = chunk % tiles;
    const int64_t ib0 = t / column_tiles * tile_rows, jb0 = t % column_tiles * tile_columns;
    const int64_t ib1 = std::min(row_blocks, ib0 + tile_rows), jb1 = std::min(column_blocks, jb0 + tile_columns);
    const int64_t k_begin = piece * piece_k, k_end = std::min(p.k, k_begin + piece_k);
    const int64_t corner = ib0 * kMR * p.n + jb0 * kNR;
    tile(p, pa_all, pb_all, ib0, ib1, jb0, jb1, k_begin, k_end,
         (piece == 0 ? result : partial + (piece - 1) * p.m * p.n) + corner, p.n);
    if (pieces == 1 || pieces_left[t].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    const int64_t rows = std::min(p.m, ib1 * kMR) - ib0 * kMR, cols = std::min(p.n, jb1 * kNR) - jb0 * kNR;
    for (int64_t i = 0; i < rows; ++i) {
      float* row = result + corner + i * p.n;
      for (int64_t other = 1; other < pieces; ++other) {
        const float* add = partial + (other - 1) * p.m * p.n + corner + i * p.n;
        for (int64_t j = 0; j < cols; ++j) row[j] += add[j];
      }
    }
  };
  nt_robust::parallel_for(pool, pieces * tiles, compute);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtRobustMatmul, MatmulImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
