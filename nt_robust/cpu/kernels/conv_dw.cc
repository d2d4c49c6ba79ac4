// conv_impl = "native" (nt_robust/cpu/native.py): the weight gradient of a 2-d
// NHWC/HWIO float32 convolution as an XLA FFI custom call,
//   dw[i, j, c, k] = sum_{n, ho, wo} x[n, ho*sh + i - pt, wo*sw + j - pl, c] * g[n, ho, wo, k],
// reading each image's activations and output gradient from cache once per (tap, block of 8
// input channels, block of 32 (or 16) output channels) with the 8 x 32 partial sums in registers.
// The batch is cut into at most 8 chunks of consecutive images, spread over XLA's thread pool
// (common.h); each chunk sums into its own buffer and the buffers are added in chunk order,
// so the result does not depend on which thread ran what. Built at run time with
// g++ -O3 -march=native (so only for the machine it runs on).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using nt_robust::kLanes;
using nt_robust::Shape;
using nt_robust::vec;
namespace ffi = xla::ffi;

constexpr int64_t kRows = 8;       // input channels held in registers at once
constexpr int64_t kMaxChunks = 8;  // of the batch, each summed separately

// One image's contribution to dw[i, j, c0:c0+R, k0:k0+16*V]: R x V accumulators stay in registers.
template <int R, int V>
inline void block(const float* x, const float* g, const Shape& s, int64_t i, int64_t j, int64_t c0, int64_t k0,
                  float* out) {
  vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vec{};
  const int64_t ho_lo = std::max<int64_t>(0, (s.pt - i + s.sh - 1) / s.sh);
  const int64_t ho_hi = std::min<int64_t>(s.ho, (s.h - 1 + s.pt - i) / s.sh + 1);
  const int64_t wo_lo = std::max<int64_t>(0, (s.pl - j + s.sw - 1) / s.sw);
  const int64_t wo_hi = std::min<int64_t>(s.wo, (s.w - 1 + s.pl - j) / s.sw + 1);
  for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
    const float* xrow = x + ((ho * s.sh + i - s.pt) * s.w) * s.c + c0;
    const float* grow = g + (ho * s.wo) * s.k + k0;
    for (int64_t wo = wo_lo; wo < wo_hi; ++wo) {
      vec gv[V];
      for (int v = 0; v < V; ++v) std::memcpy(&gv[v], grow + wo * s.k + v * kLanes, sizeof(vec));
      const float* xv = xrow + (wo * s.sw + j - s.pl) * s.c;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] += xv[r] * gv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float lanes[kLanes];
      std::memcpy(lanes, &acc[r][v], sizeof(vec));
      float* d = out + r * s.k + v * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) d[l] += lanes[l];
    }
}

typedef void (*BlockFn)(const float*, const float*, const Shape&, int64_t, int64_t, int64_t, int64_t, float*);
template <int V>
constexpr BlockFn kBlocks[kRows + 1] = {nullptr,     block<1, V>, block<2, V>, block<3, V>, block<4, V>,
                                        block<5, V>, block<6, V>, block<7, V>, block<8, V>};

// Images [n0, n1)'s contribution to dw, written (not added) to dw.
void conv_dw(const float* x, const float* g, float* dw, const Shape& s, int64_t n0, int64_t n1) {
  const int64_t taps = s.kh * s.kw;
  std::memset(dw, 0, sizeof(float) * taps * s.c * s.k);
  const int64_t k_full = s.k - s.k % kLanes;
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * s.h * s.w * s.c;
    const float* gn = g + n * s.ho * s.wo * s.k;
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        float* d = dw + (i * s.kw + j) * s.c * s.k;
        for (int64_t c0 = 0; c0 < s.c; c0 += kRows) {
          const int64_t rows = std::min(kRows, s.c - c0);
          int64_t k0 = 0;  // pairs of channel vectors (2 x 8 sums in registers), then one; AVX2's
          // 16 registers hold one vector's 8 sums only
          for (; kLanes == 16 && k0 + 2 * kLanes <= k_full; k0 += 2 * kLanes)
            kBlocks<2>[rows](xn, gn, s, i, j, c0, k0, d + c0 * s.k + k0);
          for (; k0 < k_full; k0 += kLanes) kBlocks<1>[rows](xn, gn, s, i, j, c0, k0, d + c0 * s.k + k0);
        }
        if (k_full < s.k) {  // output channels past the last full block: plain loops
          for (int64_t ho = 0; ho < s.ho; ++ho)
            for (int64_t wo = 0; wo < s.wo; ++wo) {
              const int64_t hi = ho * s.sh + i - s.pt, wi = wo * s.sw + j - s.pl;
              if (hi < 0 || hi >= s.h || wi < 0 || wi >= s.w) continue;
              const float* xv = xn + (hi * s.w + wi) * s.c;
              const float* gv = gn + (ho * s.wo + wo) * s.k;
              for (int64_t c = 0; c < s.c; ++c)
                for (int64_t k = k_full; k < s.k; ++k) d[c * s.k + k] += xv[c] * gv[k];
            }
        }
      }
  }
}

ffi::Error ConvDwImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  Shape s;
  if (ffi::Error error = nt_robust::read_shape("conv_dw", x.dimensions(), g.dimensions(), dw->dimensions(), sh, sw,
                                               pt, pl, &s);
      error.failure())
    return error;
  const int64_t size = s.kh * s.kw * s.c * s.k;
  const int64_t chunks = std::max<int64_t>(1, std::min(s.n, kMaxChunks));
  const int64_t per_chunk = (s.n + chunks - 1) / chunks;
  std::vector<float> partials((chunks - 1) * size);  // chunk 0 sums straight into dw
  const float *xd = x.typed_data(), *gd = g.typed_data();
  float* out = dw->typed_data();
  nt_robust::parallel_for(pool, chunks, [&](int64_t chunk) {
    conv_dw(xd, gd, chunk == 0 ? out : partials.data() + (chunk - 1) * size, s, std::min(s.n, chunk * per_chunk),
            std::min(s.n, (chunk + 1) * per_chunk));
  });
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* partial = partials.data() + (chunk - 1) * size;
    for (int64_t e = 0; e < size; ++e) out[e] += partial[e];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtRobustConvDw, ConvDwImpl, nt_robust::conv_binding());
