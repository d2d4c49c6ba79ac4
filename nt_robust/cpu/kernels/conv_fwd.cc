// conv_impl = "native" (nt_robust/cpu/native.py): the forward pass of a 2-d
// NHWC/HWIO float32 convolution as an XLA FFI custom call,
//   out[n, ho, wo, k] = sum_{i, j, c} x[n, ho*sh + i - pt, wo*sw + j - pl, c] * w[i, j, c, k],
// a direct convolution that keeps 8 (or 7) output pixels x 32 (or 16) output channels in
// registers and reads each weight vector once per block of pixels. Out-of-image taps read a
// row of zeros, so the inner loop has no branches. The input may be dilated (lh, lw): a
// strided convolution's input gradient is this convolution of the dilated output gradient
// with the flipped kernel. Output rows are spread over XLA's thread pool (common.h); each row
// is computed by one thread, in one order. Built at run time with g++ -O3 -march=native.
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

// x's pixel column read by output column wo at kernel column j, or -1 where that is padding
// or (x dilated) one of the zeros between its columns.
inline int64_t source_column(const Shape& s, int64_t wo, int64_t j) {
  const int64_t u = wo * s.sw + j - s.pl;
  if (s.lw == 1) return (u >= 0 && u < s.w) ? u : -1;  // no integer division on the common path
  return (u >= 0 && u % s.lw == 0 && u / s.lw < s.w) ? u / s.lw : -1;
}

// out[n, ho, wo0 + step*p, k0:k0+16*V] for p < pixels: P x V accumulators in registers; each
// weight vector loaded once per P pixels, each input value broadcast once per V vectors. A
// kernel row or column that reads only padding (or dilation zeros) for all P pixels is skipped.
template <int V, int P>
inline void pixel_block(const float* xn, const float* w, const float* zeros, const Shape& s, int64_t ho, int64_t wo0,
                        int64_t step, int64_t pixels, int64_t k0, float* orow) {
  vec acc[P][V];
  for (int64_t p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = vec{};
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t u = ho * s.sh + i - s.pt;
    if (u < 0 || u % s.lh != 0 || u / s.lh >= s.h) continue;
    const int64_t hi = u / s.lh;
    for (int64_t j = 0; j < s.kw; ++j) {
      const float* src[P];
      bool any = false;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t wi = p < pixels ? source_column(s, wo0 + step * p, j) : -1;
        src[p] = wi >= 0 ? xn + (hi * s.w + wi) * s.c : zeros;
        any |= wi >= 0;
      }
      if (!any) continue;
      const float* wt = w + ((i * s.kw + j) * s.c) * s.k + k0;
      for (int64_t c = 0; c < s.c; ++c) {
        vec wv[V];
        for (int v = 0; v < V; ++v) std::memcpy(&wv[v], wt + c * s.k + v * kLanes, sizeof(vec));
#pragma GCC unroll 8
        for (int64_t p = 0; p < P; ++p) {
          const float xv = src[p][c];
          for (int v = 0; v < V; ++v) acc[p][v] += xv * wv[v];
        }
      }
    }
  }
  for (int64_t p = 0; p < pixels; ++p)
    for (int v = 0; v < V; ++v)
      std::memcpy(orow + (wo0 + step * p) * s.k + k0 + v * kLanes, &acc[p][v], sizeof(vec));
}

// The full channel vectors of out[n, ho, phase + step * b, :] for b < count, P pixels at a time.
template <int P>
void vector_blocks(const float* xn, const float* w, const float* zeros, const Shape& s, int64_t ho, int64_t phase,
                   int64_t step, int64_t count, int64_t k_pairs, int64_t k_full, float* orow) {
  for (int64_t b = 0; b < count; b += P) {
    const int64_t pixels = std::min<int64_t>(P, count - b), wo0 = phase + step * b;
    for (int64_t k0 = 0; k0 < k_pairs; k0 += 2 * kLanes)  // pairs of channel vectors: P x 2 vectors of sums
      pixel_block<2, P>(xn, w, zeros, s, ho, wo0, step, pixels, k0, orow);
    for (int64_t k0 = k_pairs; k0 < k_full; k0 += kLanes)
      pixel_block<1, P>(xn, w, zeros, s, ho, wo0, step, pixels, k0, orow);
  }
}

// One output row out[n, ho, :, :], in blocks of 8 pixels, or of 7 where the row splits into
// sevens but not eights (28 or 14 columns: no half-empty last block). With x dilated (lw > 1)
// its columns are taken one phase (wo mod lw) at a time: the columns of a phase read the same
// kernel columns, so no pixel in a block multiplies a dilation zero.
void conv_row(const float* x, const float* w, const float* zeros, float* out, const Shape& s, int64_t n, int64_t ho) {
  const int64_t k_full = s.k - s.k % kLanes, k_pairs = k_full - k_full % (2 * kLanes);
  const float* xn = x + n * s.h * s.w * s.c;
  float* orow = out + ((n * s.ho + ho) * s.wo) * s.k;
  const int64_t step = s.lw;
  for (int64_t phase = 0; phase < std::min(step, s.wo); ++phase) {
    const int64_t count = (s.wo - phase + step - 1) / step;
    auto at = [&](int64_t b) { return phase + step * b; };
    if (kLanes == 8)  // AVX2: 16 registers, so 4 pixels x 2 vectors of sums (8 pixels would spill)
      vector_blocks<4>(xn, w, zeros, s, ho, phase, step, count, k_pairs, k_full, orow);
    else if (count % 8 != 0 && count % 7 == 0)
      vector_blocks<7>(xn, w, zeros, s, ho, phase, step, count, k_pairs, k_full, orow);
    else
      vector_blocks<8>(xn, w, zeros, s, ho, phase, step, count, k_pairs, k_full, orow);
    for (int64_t k = k_full; k < s.k; ++k)  // output channels past the last full vector
      for (int64_t b = 0; b < count; ++b) {
        const int64_t wo = at(b);
        float sum = 0.0f;
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t u = ho * s.sh + i - s.pt;
          if (u < 0 || u % s.lh != 0 || u / s.lh >= s.h) continue;
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t wi = source_column(s, wo, j);
            if (wi < 0) continue;
            for (int64_t c = 0; c < s.c; ++c)
              sum += xn[((u / s.lh) * s.w + wi) * s.c + c] * w[((i * s.kw + j) * s.c + c) * s.k + k];
          }
        }
        orow[wo * s.k + k] = sum;
      }
  }
}

ffi::Error ConvFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> out, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t lh,
                       int64_t lw) {
  Shape s;
  if (ffi::Error error = nt_robust::read_shape("conv_fwd", x.dimensions(), out->dimensions(), w.dimensions(), sh, sw,
                                               pt, pl, &s);
      error.failure())
    return error;
  if (lh < 1 || lw < 1) return ffi::Error::InvalidArgument("conv_fwd: the input dilation must be >= 1");
  s.lh = lh;
  s.lw = lw;
  const std::vector<float> zeros(s.c, 0.0f);
  const float *xd = x.typed_data(), *wd = w.typed_data();
  float* od = out->typed_data();
  nt_robust::parallel_for(pool, s.n * s.ho,
                          [&](int64_t row) { conv_row(xd, wd, zeros.data(), od, s, row / s.ho, row % s.ho); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NtRobustConvFwd, ConvFwdImpl,
                              nt_robust::conv_binding().Attr<int64_t>("lh").Attr<int64_t>("lw"));
