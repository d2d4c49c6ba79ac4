// What the conv_impl = "native" kernels (conv_fwd.cc, conv_dw.cc) share: the vector type, the
// convolution's shape read from the FFI buffers, and a parallel loop over XLA:CPU's own
// intra-op thread pool (so a kernel uses every core when one XLA device holds the whole
// batch, and each device's call mostly runs its own shard when the batch is split).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace nt_robust {

namespace ffi = xla::ffi;

// Floats per vector: one register of the machine the kernels are compiled for (-march=native).
// Compiled for AVX2 only, 16-float vectors made the kernels 16-70x slower than XLA's
// convolutions (docs/benchmarks.md; the generated code was not inspected), so the width
// follows the ISA.
#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));

// x: n x h x w x c; the output (or output gradient): n x ho x wo x k; the kernel: kh x kw x c x k;
// strides sh, sw; pt, pl zero rows/columns before the image; x dilated by lh, lw (lh - 1 zero
// rows between its rows: how a strided convolution's input gradient reads its output gradient).
struct Shape {
  int64_t n, h, w, c, ho, wo, k, kh, kw, sh, sw, pt, pl;
  int64_t lh = 1, lw = 1;
};

// The Shape of a convolution from its input x, its output-shaped buffer y (the output, or
// the output gradient) and its kernel-shaped buffer w (the kernel, or the weight gradient).
inline ffi::Error read_shape(const char* name, ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                             ffi::Span<const int64_t> w, int64_t sh, int64_t sw, int64_t pt, int64_t pl, Shape* s) {
  if (x.size() != 4 || y.size() != 4 || w.size() != 4)
    return ffi::Error::InvalidArgument(std::string(name) + ": operands must be 4-d (NHWC, NHWC, HWIO)");
  *s = Shape{x[0], x[1], x[2], x[3], y[1], y[2], y[3], w[0], w[1], sh, sw, pt, pl};
  if (y[0] != s->n || w[2] != s->c || w[3] != s->k)
    return ffi::Error::InvalidArgument(std::string(name) + ": batch or channel counts of the operands disagree");
  if (sh < 1 || sw < 1 || pt < 0 || pl < 0)
    return ffi::Error::InvalidArgument(std::string(name) + ": strides must be >= 1 and pads >= 0");
  return ffi::Error::Success();
}

// The FFI binding both kernels start from: XLA's thread pool; x, then the kernel (or the output
// gradient); the result; the strides and the zero rows/columns before the image.
inline auto conv_binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("sh")
      .Attr<int64_t>("sw")
      .Attr<int64_t>("pt")
      .Attr<int64_t>("pl");
}

// body(chunk) for every chunk in [0, chunks), on the calling thread and up to
// num_threads - 1 tasks of XLA's pool. Chunks are claimed one at a time, so the work balances
// itself, and a task that starts late (or that XLA runs inline) finds nothing left and
// returns without touching body. Which thread runs a chunk never changes its result.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  if (helpers <= 0) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) body(chunk);
    return;
  }
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto run = [progress, chunks, &body] {
    for (int64_t chunk; (chunk = progress->next.fetch_add(1)) < chunks;) {
      body(chunk);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));
  run();
  while (progress->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace nt_robust
