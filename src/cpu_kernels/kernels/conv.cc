// Convolution (stride 1, odd square kernel, 'same' padding, no bias, NCHW, float32) for
// MindSpore's CPU backend, loaded through ops.Custom(func_type="aot"); see src/conv.py (and
// src/batch_norm.py for the BatchNorm + ReLU of training, which share its threads).
//
// Why: MindSpore 2.10's CPU convolutions (oneDNN gemm:jit) work image by image, which on the
// smallest planes of a 32x32 input (4x4 down to 1x1) leaves GEMMs too small to run fast
// (docs/PERFORMANCE.md, "Changes tried"). Here every convolution and both of its gradients are one
// blocked GEMM over a batch of images laid out as columns (im2col):
//   forward        y(OC, N*H*W)  = w(OC, C*K*K) . col(x)(C*K*K, N*H*W)
//   input grad     dcol(C*K*K, N*H*W) = w^T . dy, added back into dx (col2im); for a 1x1
//                  kernel simply the 1x1 convolution of dy with w^T
//   filter grad    dw(OC, C*K*K) = dy(OC, N*H*W) . col(x)^T
// Large batches of large planes are taken a few images at a time so that col stays bounded.
//
// The GEMM is the usual three-level blocking (panels of B and blocks of A packed into contiguous
// strips that stay in L2/L1, and a register-blocked micro-kernel of kMR x kNR outputs written with
// the compiler's vector extensions, so it becomes FMA code for whatever -march=native offers).
// Where a K x K window centred on any output covers the whole plane (1x1 planes; up to 2x2 for a
// 3x3 kernel) the forward pass and the input gradient run as dense maps between whole images, which
// skips the taps that fall on the padding; the filter gradient does so on 1x1 planes (the centre
// tap only). Work is shared with a pool of worker threads ($GOOGLENET_KERNEL_THREADS, default one
// per usable core) that sleep between calls (an OpenMP or BLAS pool would keep spinning, taking
// cores from MindSpore's own threads).
//
// Entry points (the AOT calling convention: inputs then outputs in params):
//   ConvForward(x[N,C,H,W], w[OC,C,K,K]) -> y[N,OC,H,W]
//   ConvGradInput(dy[N,OC,H,W], w[OC,C,K,K]) -> dx[N,C,H,W]
//   ConvGradFilter(x[N,C,H,W], dy[N,OC,H,W], w[OC,C,K,K]) -> dw[OC,C,K,K] (w only gives the shape)
//   ConvBiasReluForward(x, w, bias[OC], token[1] int64) -> relu(conv(x, w) + bias), for inference
//   with BatchNorm folded into w and bias; the filter is packed on the first call and kept under
//   its token (PackedOnce); ConvBiasReluStride2Forward the same with stride 2 ->
//   [N,OC,ceil(H/2),ceil(W/2)]
//   BatchNormReluTrain, BatchNormReluGrad: BatchNorm (batch statistics) + ReLU of a training step
//   and its gradient; ConvBatchNormReluTrain, ConvBatchNormReluGrad: a stride-1 convolution followed
//   by them, as one call each way (see "BatchNorm + ReLU in training" below)

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#include "workers.h"

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

constexpr int kMR = 6;               // rows of C per micro-kernel call
constexpr int kNR = 2 * kLanes;      // columns of C per micro-kernel call (two vectors)
constexpr int64_t kKC = 256;         // depth of a packed block
constexpr int64_t kMC = 16 * kMR;    // rows of A per packed block (kMC x kKC stays in L2)
constexpr int64_t kNC = 512;         // columns of B per pass (kKC x kNC stays in L2)
constexpr double kFlopsPerPiece = 5e5;        // smaller pieces cost more to hand out than they save
constexpr double kFlopsSmall = 2e7;           // below this a GEMM is cut into several pieces per thread
constexpr int64_t kColumnValues = 1 << 21;    // bound on the im2col buffer (floats)
constexpr int64_t kSharedPassValues = 1 << 19;  // elementwise passes at least this long use the threads
constexpr int64_t kPackedFilterValues = 1 << 26;  // bound on the filters kept packed for inference (floats)

// Pieces per thread when work is shared: enough that a late worker still finds some.
constexpr int64_t kPiecesPerThread = 4;

// ---- GEMM: C (row-major, leading dimension ldc) = A . B, or C += A . B ----

// A matrix read in place: element (i, j) at data[i * row + j * col], or, with offset tables, at
// data[row_offsets[i] + col_offsets[j]].
struct Matrix {
  const float *data;
  int64_t row, col;
  const int64_t *row_offsets = nullptr, *col_offsets = nullptr;
  const float *Row(int64_t i) const { return data + (row_offsets ? row_offsets[i] : i * row); }
  // The same matrix from row i on.
  Matrix From(int64_t i) const {
    return row_offsets ? Matrix{data, row, col, row_offsets + i, col_offsets} : Matrix{Row(i), row, col};
  }
};

// B (k x n) already packed: panel q (columns [q*kNR, q*kNR + kNR)) at data + q*k*kNR, its row p
// at + p*kNR. Columns past n hold whatever the packing read; they only reach columns of C that are
// never written out.
struct Panels {
  const float *data;
  int64_t k;
  const float *panel(int64_t column) const { return data + column / kNR * k * kNR; }
};

// Packs rows [i0, i0+m) x depth [p0, p0+kc) of A into strips of kMR rows: strip s holds, for each
// p, its kMR values of column p (rows past m are zero).
void PackA(Matrix a, int64_t i0, int64_t m, int64_t p0, int64_t kc, float *out) {
  for (int64_t s = 0; s < m; s += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - s);
    float *strip = out + s * kc;
    if (rows < kMR) std::fill(strip, strip + kMR * kc, 0.0f);
    for (int64_t i = 0; i < rows; ++i) {
      const float *src = a.Row(i0 + s + i);
      if (a.col_offsets != nullptr) {
        for (int64_t p = 0; p < kc; ++p) strip[p * kMR + i] = src[a.col_offsets[p0 + p]];
      } else {
        for (int64_t p = 0; p < kc; ++p) strip[p * kMR + i] = src[(p0 + p) * a.col];
      }
    }
  }
}

inline Vec Load(const float *p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void Store(float *p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// C[m x n] (+)= packed A strip (kMR x kc) . packed B strip (kc x kNR); m <= kMR, n <= kNR.
void MicroKernel(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int64_t m, int64_t n,
                 bool accumulate) {
  Vec acc[kMR][2] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const Vec b0 = Load(b), b1 = Load(b + kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      acc[i][0] += a[i] * b0;
      acc[i][1] += a[i] * b1;
    }
    a += kMR;
    b += kNR;
  }
  if (m == kMR && n == kNR) {
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      float *row = c + i * ldc;
      if (accumulate) {
        Store(row, Load(row) + acc[i][0]);
        Store(row + kLanes, Load(row + kLanes) + acc[i][1]);
      } else {
        Store(row, acc[i][0]);
        Store(row + kLanes, acc[i][1]);
      }
    }
    return;
  }
  alignas(64) float tile[kMR][kNR];
  for (int i = 0; i < kMR; ++i) {
    Store(tile[i], acc[i][0]);
    Store(tile[i] + kLanes, acc[i][1]);
  }
  for (int64_t i = 0; i < m; ++i) {
    float *row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) row[j] = accumulate ? row[j] + tile[i][j] : tile[i][j];
  }
}

// A packed whole, ahead of the product (PackWhole): depth block pc (kKC deep, kc = its depth) at
// data + pc * padded_rows, holding the strips of kMR rows of all rows in PackA's layout.
struct PackedA {
  const float *data = nullptr;
  int64_t padded_rows = 0, first_row = 0;
  const float *Block(int64_t pc, int64_t kc, int64_t row) const {
    return data + pc * padded_rows + (first_row + row) * kc;
  }
  PackedA From(int64_t row) const { return PackedA{data, padded_rows, first_row + row}; }
};

int64_t PaddedToStrips(int64_t rows) { return (rows + kMR - 1) / kMR * kMR; }

std::vector<float> PackWhole(Matrix a, int64_t m, int64_t k) {
  const int64_t padded_rows = PaddedToStrips(m);
  std::vector<float> packed(padded_rows * k);
  for (int64_t pc = 0; pc < k; pc += kKC) PackA(a, 0, m, pc, std::min(kKC, k - pc), packed.data() + pc * padded_rows);
  return packed;
}

// C[m x n] (+)= A[m x k] . B on one thread; A from `packed` when given, else packed here, kMC x kKC
// at a time, into pack_a.
void GemmSerial(int64_t m, int64_t n, Matrix a, PackedA packed, Panels b, float *c, int64_t ldc, bool accumulate,
                float *pack_a) {
  const int64_t k = b.k;
  for (int64_t jc = 0; jc < n; jc += kNC) {
    const int64_t nc = std::min(kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kKC) {
      const int64_t kc = std::min(kKC, k - pc);
      for (int64_t ic = 0; ic < m; ic += kMC) {
        const int64_t mc = std::min(kMC, m - ic);
        const float *a_block = pack_a;
        if (packed.data != nullptr) {
          a_block = packed.Block(pc, kc, ic);
        } else {
          PackA(a, ic, mc, pc, kc, pack_a);
        }
        for (int64_t jr = jc; jr < jc + nc; jr += kNR) {
          const float *b_strip = b.panel(jr) + pc * kNR;
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            MicroKernel(kc, a_block + ir * kc, b_strip, c + (ic + ir) * ldc + jr, ldc,
                        std::min<int64_t>(kMR, mc - ir), std::min<int64_t>(kNR, jc + nc - jr), accumulate || pc > 0);
          }
        }
      }
    }
  }
}

// The same product, its rows (or, for few rows, its columns) cut into pieces for the pool's threads
// when it is large enough to pay for them.
void Gemm(int64_t m, int64_t n, Matrix a, Panels b, float *c, int64_t ldc, bool accumulate, PackedA packed = {}) {
  Workers &workers = Workers::Get();
  const double flops = 2.0 * m * n * b.k;
  const bool split_rows = m >= 4 * kMR;  // B is packed already: pieces of rows share it
  const int64_t unit = split_rows ? kMR : kNR, extent = split_rows ? m : n;
  // Small products in several pieces per thread (a worker that wakes late still finds some);
  // large ones in one piece per thread, since every piece of rows reads all of B.
  const int64_t per_thread = flops < kFlopsSmall ? kPiecesPerThread : 1;
  const int64_t pieces = std::min<int64_t>({workers.Threads() * per_thread,
                                            std::max<int64_t>(flops / kFlopsPerPiece, 1), (extent + unit - 1) / unit});
  const int64_t share = ((extent + pieces - 1) / pieces + unit - 1) / unit * unit;
  workers.Run(pieces, [&](int64_t piece) {
    const int64_t begin = std::min(piece * share, extent), end = std::min(begin + share, extent);
    if (begin >= end) return;
    thread_local std::vector<float> pack_a;  // per thread, kept between calls
    pack_a.resize(packed.data != nullptr ? 0 : kMC * kKC);
    if (split_rows) {
      const Matrix rows = packed.data != nullptr ? a : a.From(begin);
      GemmSerial(end - begin, n, rows, packed.From(begin), b, c + begin * ldc, ldc, accumulate, pack_a.data());
    } else {
      const Panels cols{b.panel(begin), b.k};
      GemmSerial(m, end - begin, a, packed, cols, c + begin, ldc, accumulate, pack_a.data());
    }
  });
}

// ---- im2col, written straight into the GEMM's packed layout ----

struct ConvShape {
  int64_t n, c, h, w;  // input
  int64_t oc, k;       // output channels, kernel size (odd)
  int64_t stride = 1;  // 2 only in the forward pass (ConvBiasReluStride2Forward)
  int64_t plane() const { return h * w; }
  int64_t depth() const { return c * k * k; }
  // 'same' padding as MindSpore and TensorFlow define it: ceil(size / stride) outputs, the padding
  // that needs split with the odd value after the plane.
  int64_t out_h() const { return (h + stride - 1) / stride; }
  int64_t out_w() const { return (w + stride - 1) / stride; }
  int64_t out_plane() const { return out_h() * out_w(); }
  int64_t padding_h() const { return std::max<int64_t>((out_h() - 1) * stride + k - h, 0); }
  int64_t padding_w() const { return std::max<int64_t>((out_w() - 1) * stride + k - w, 0); }
};

int64_t PaddedToPanels(int64_t values) { return (values + kNR - 1) / kNR * kNR; }

// The im2col matrix of images [n0, n0 + images): row r = (c*K + ky)*K + kx, column
// j = b*OH*OW + y*OW + x holds x[n0 + b, c, y*S + ky - top, x*S + kx - left] (0 outside the plane;
// S the stride, top and left the padding before the plane: K/2 for stride 1).
// As the B of forward (depth x cols): Panels with k = depth. Transposed, as the B of the filter
// gradient (cols x depth): Panels with k = cols.
// Value (r, j) is source[row_offset[r] + column_offset[j]], where the source is x itself for a
// 1x1 kernel and a zero-bordered copy of x otherwise: every panel is then filled by gathers of
// kNR values, which the compiler vectorises, whatever the plane size.
template <bool Transposed>
void PackColumns(const float *x, const ConvShape &s, int64_t n0, int64_t images, float *out) {
  const int64_t hp = s.h + s.padding_h(), wp = s.w + s.padding_w(), plane = s.plane();
  const int64_t out_w = s.out_w(), out_plane = s.out_plane();
  const int64_t cols = images * out_plane, depth = s.depth(), taps = s.k * s.k;
  const int64_t image_values = s.c * hp * wp;
  const float *source = x + n0 * s.c * plane;
  thread_local std::vector<float> bordered;
  if (hp * wp > plane) {
    bordered.assign(images * image_values, 0.0f);
    const int64_t top = s.padding_h() / 2, left = s.padding_w() / 2;
    for (int64_t plane_index = 0; plane_index < images * s.c; ++plane_index) {
      const float *src = source + plane_index * plane;
      float *dst = bordered.data() + plane_index * hp * wp + top * wp + left;
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t xx = 0; xx < s.w; ++xx) dst[y * wp + xx] = src[y * s.w + xx];
      }
    }
    source = bordered.data();
  }
  // Offsets padded to whole panels (extra entries read valid memory; their values land in
  // columns of C that are never written out).
  thread_local std::vector<int32_t> row_offset, column_offset;
  row_offset.assign(PaddedToPanels(depth), 0);
  column_offset.assign(PaddedToPanels(cols), 0);
  for (int64_t r = 0; r < depth; ++r) {
    const int64_t ch = r / taps, tap = r % taps;
    row_offset[r] = static_cast<int32_t>(ch * hp * wp + tap / s.k * wp + tap % s.k);
  }
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t b = j / out_plane, y = j % out_plane / out_w, xx = j % out_w;
    column_offset[j] = static_cast<int32_t>(b * image_values + y * s.stride * wp + xx * s.stride);
  }
  const int32_t *rows = row_offset.data(), *columns = column_offset.data();
  const int64_t panels = PaddedToPanels(Transposed ? depth : cols) / kNR;
  const int64_t pieces = std::min<int64_t>(panels, Workers::Get().Threads() * kPiecesPerThread);
  Workers::Get().Run(pieces, [&](int64_t piece) {
    for (int64_t q = piece * panels / pieces; q < (piece + 1) * panels / pieces; ++q) {
      if (Transposed) {  // panel q: rows [q*kNR, q*kNR + kNR) of im2col, as columns of B
        const int32_t *panel_rows = rows + q * kNR;
        float *dst = out + q * cols * kNR;
        for (int64_t j = 0; j < cols; ++j, dst += kNR) {
          const float *src = source + columns[j];
          for (int i = 0; i < kNR; ++i) dst[i] = src[panel_rows[i]];
        }
      } else {  // panel q: columns [q*kNR, q*kNR + kNR)
        const int32_t *panel_columns = columns + q * kNR;
        float *dst = out + q * depth * kNR;
        for (int64_t r = 0; r < depth; ++r, dst += kNR) {
          const float *src = source + rows[r];
          for (int i = 0; i < kNR; ++i) dst[i] = src[panel_columns[i]];
        }
      }
    }
  });
}

// How many images per GEMM: all of them for small planes, fewer when im2col would grow too large.
int64_t ImagesPerGemm(const ConvShape &s) {
  const int64_t per_image = s.depth() * s.out_plane();
  return std::clamp<int64_t>(kColumnValues / std::max<int64_t>(per_image, 1), 1, s.n);
}

// The inference form with BatchNorm folded into the filter: each output value v of GEMM row r
// becomes relu(v + bias[r / rows_per_bias]) (rows_per_bias > 1 for the dense maps, whose rows are
// (channel, position) pairs).
struct BiasRelu {
  const float *bias = nullptr;
  int64_t rows_per_bias = 1;
  float Bias(int64_t row) const { return bias[row / rows_per_bias]; }
};

// The same on a tensor of `planes` planes, in place: shared between the threads when large (conv1's
// output at 224x224 is 0.8 M values an image), on the calling thread when small.
void ApplyBiasRelu(BiasRelu epilogue, int64_t rows, int64_t planes, int64_t plane, float *y) {
  const int64_t pieces = planes * plane < kSharedPassValues ? 1 : Workers::Get().Threads() * kPiecesPerThread;
  Workers::Get().Run(pieces, [&](int64_t piece) {
    for (int64_t i = piece * planes / pieces; i < (piece + 1) * planes / pieces; ++i) {
      const float b = epilogue.Bias(i % rows);
      float *values = y + i * plane;
      for (int64_t p = 0; p < plane; ++p) values[p] = std::max(values[p] + b, 0.0f);
    }
  });
}

// The GEMM's (rows, images*plane) matrix as images x rows x plane, and back; on the way out, with
// an epilogue, its bias and ReLU.
void MatrixToImages(const float *matrix, int64_t rows, int64_t images, int64_t plane, float *tensor,
                    BiasRelu epilogue = {}) {
  for (int64_t i = 0; i < images; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      const float *src = matrix + r * images * plane + i * plane;
      float *dst = tensor + (i * rows + r) * plane;
      if (epilogue.bias != nullptr) {
        const float b = epilogue.Bias(r);
        for (int64_t p = 0; p < plane; ++p) dst[p] = std::max(src[p] + b, 0.0f);
      } else {
        for (int64_t p = 0; p < plane; ++p) dst[p] = src[p];
      }
    }
  }
}

void ImagesToMatrix(const float *tensor, int64_t rows, int64_t images, int64_t plane, float *matrix) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < images; ++i) {
      const float *src = tensor + (i * rows + r) * plane;
      float *dst = matrix + r * images * plane + i * plane;
      for (int64_t p = 0; p < plane; ++p) dst[p] = src[p];
    }
  }
}

// y[N, OC, OH, OW] = conv(x, w), w given as the matrix (OC, C*K*K), or already packed; with an
// epilogue, relu(y + bias).
void Convolve(const float *x, Matrix w, const ConvShape &s, float *y, PackedA packed = {}, BiasRelu epilogue = {}) {
  const int64_t plane = s.out_plane(), depth = s.depth(), step = ImagesPerGemm(s);
  thread_local std::vector<float> columns, out;
  columns.resize(depth * PaddedToPanels(step * plane));
  for (int64_t n0 = 0; n0 < s.n; n0 += step) {
    const int64_t images = std::min(step, s.n - n0), cols = images * plane;
    PackColumns<false>(x, s, n0, images, columns.data());
    const Panels b{columns.data(), depth};
    if (images == 1) {  // the GEMM writes the image's output planes in place
      float *image = y + n0 * s.oc * plane;
      Gemm(s.oc, cols, w, b, image, cols, false, packed);
      if (epilogue.bias != nullptr) ApplyBiasRelu(epilogue, s.oc, s.oc, plane, image);
      continue;
    }
    out.resize(s.oc * cols);
    Gemm(s.oc, cols, w, b, out.data(), cols, false, packed);
    MatrixToImages(out.data(), s.oc, images, plane, y + n0 * s.oc * plane, epilogue);
  }
}

// dw(OC, C*K*K) = sum over images of dy(OC, cols) . im2col(x)^T(cols, C*K*K).
void FilterGradient(const float *x, const float *dy, const ConvShape &s, float *dw) {
  const int64_t plane = s.plane(), depth = s.depth(), step = ImagesPerGemm(s);
  thread_local std::vector<float> columns, dy_cols;
  columns.resize(PaddedToPanels(depth) * step * plane);
  for (int64_t n0 = 0; n0 < s.n; n0 += step) {
    const int64_t images = std::min(step, s.n - n0), cols = images * plane;
    Matrix a{dy + n0 * s.oc * plane, plane, 1};
    if (images > 1) {
      dy_cols.resize(s.oc * cols);
      ImagesToMatrix(dy + n0 * s.oc * plane, s.oc, images, plane, dy_cols.data());
      a = Matrix{dy_cols.data(), cols, 1};
    }
    PackColumns<true>(x, s, n0, images, columns.data());
    Gemm(s.oc, depth, a, Panels{columns.data(), cols}, dw, depth, n0 > 0);
  }
}

// dx for a K > 1 kernel: dcol(C*K*K, cols) = w^T . dy(OC, cols), then each column of dcol added
// back to the input position it was gathered from (col2im). The GEMM reads dy as it is, where
// convolving dy with the flipped filter would first gather OC*K*K rows of it (OC > C in GoogleNet).
void InputGradient(const float *dy, const float *w, const ConvShape &s, float *dx) {
  const int64_t pad = s.k / 2, hp = s.h + 2 * pad, wp = s.w + 2 * pad, plane = s.plane();
  const int64_t depth = s.depth(), taps = s.k * s.k, step = ImagesPerGemm(s);
  const ConvShape dy_shape{s.n, s.oc, s.h, s.w, 0, 1};
  thread_local std::vector<float> panels, dcol;
  panels.resize(s.oc * PaddedToPanels(step * plane));
  dcol.resize(depth * step * plane);
  for (int64_t n0 = 0; n0 < s.n; n0 += step) {
    const int64_t images = std::min(step, s.n - n0), cols = images * plane;
    PackColumns<false>(dy, dy_shape, n0, images, panels.data());
    Gemm(depth, cols, Matrix{w, 1, depth}, Panels{panels.data(), s.oc}, dcol.data(), cols, false);
    const float *gathered = dcol.data();  // thread_local: workers must not name it themselves
    const int64_t pieces = std::min<int64_t>(s.c, Workers::Get().Threads() * kPiecesPerThread);
    Workers::Get().Run(pieces, [&](int64_t piece) {
      thread_local std::vector<float> bordered;  // one channel of the images, zero border
      for (int64_t ch = piece * s.c / pieces; ch < (piece + 1) * s.c / pieces; ++ch) {
        bordered.assign(images * hp * wp, 0.0f);
        for (int64_t tap = 0; tap < taps; ++tap) {
          const float *src = gathered + (ch * taps + tap) * cols;
          float *base = bordered.data() + tap / s.k * wp + tap % s.k;
          for (int64_t b = 0, j = 0; b < images; ++b) {
            for (int64_t y = 0; y < s.h; ++y, j += s.w) {
              float *dst = base + b * hp * wp + y * wp;
              for (int64_t xx = 0; xx < s.w; ++xx) dst[xx] += src[j + xx];
            }
          }
        }
        for (int64_t b = 0; b < images; ++b) {
          const float *src = bordered.data() + b * hp * wp + pad * wp + pad;
          float *dst = dx + ((n0 + b) * s.c + ch) * plane;
          for (int64_t y = 0; y < s.h; ++y) {
            for (int64_t xx = 0; xx < s.w; ++xx) dst[y * s.w + xx] = src[y * wp + xx];
          }
        }
      }
    });
  }
}

bool IsFloat32(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

// 0 when the call has the tensors `kinds` lists, one character each: a digit for a float32 tensor
// of that rank ("444": three 4-d tensors), 'i' for a 1-d int64 tensor; else the error code the
// entry point returns.
int CheckArguments(int nparam, const char *kinds, const int *ndims, const char **dtypes) {
  if (nparam != static_cast<int>(std::strlen(kinds))) return 1;
  for (int i = 0; i < nparam; ++i) {
    const bool int64 = kinds[i] == 'i';
    if (ndims[i] != (int64 ? 1 : kinds[i] - '0')) return 1;
    if (int64 ? std::strcmp(dtypes[i], "int64") != 0 : !IsFloat32(dtypes[i])) return 2;
  }
  return 0;
}

// Reads the shape from x[N,C,H,W] and w[OC,C,K,K]; false if they do not describe a supported convolution.
bool ReadShape(const int64_t *x, const int64_t *w, ConvShape *s) {
  *s = ConvShape{x[0], x[1], x[2], x[3], w[0], w[2]};
  if (s->n <= 0 || s->c <= 0 || s->h <= 0 || s->w <= 0 || s->oc <= 0 || w[1] != s->c || w[2] != w[3] ||
      s->k % 2 != 1) {
    return false;
  }
  // im2col addresses the (zero-bordered) inputs with int32 offsets.
  const double values = static_cast<double>(s->n) * std::max(s->c, s->oc) * (s->h + s->k - 1) * (s->w + s->k - 1);
  return values < INT32_MAX;
}

bool SameShape(int ndim, const int64_t *a, const int64_t *b) { return ndim == 4 && std::equal(a, a + 4, b); }

// ---- planes a K x K window covers whole from every output (H, W <= K/2 + 1) ----
// There a 'same' convolution is a dense map from an image's C*P inputs to its OC*P outputs (P = H*W)
// that skips the taps falling on the padding (im2col would multiply 8 zeros of 9 on a 1x1 plane, 5
// of 9 on a 2x2 one): y(OC*P, N) = W(OC*P, C*P) . x(C*P, N), each image a column, with
// W((oc, p), (c, q)) = w[oc, c, tap(p, q)], tap(p, q) = (K*qy + qx) - (K*py + px) + centre, the
// filter read in place through offset tables.
bool CoversPlane(const ConvShape &s) { return s.stride == 1 && s.h <= s.k / 2 + 1 && s.w <= s.k / 2 + 1; }

struct DenseFilter {
  std::vector<int64_t> outputs, inputs;  // offsets of rows (oc, p) and columns (c, q) of W in w
  explicit DenseFilter(const ConvShape &s) : outputs(s.oc * s.plane()), inputs(s.c * s.plane()) {
    const int64_t plane = s.plane(), taps = s.k * s.k, centre = taps / 2;
    for (int64_t p = 0; p < plane; ++p) {
      const int64_t position = s.k * (p / s.w) + p % s.w;  // >= 0: p lies within the centre's reach
      for (int64_t oc = 0; oc < s.oc; ++oc) outputs[oc * plane + p] = oc * s.c * taps + centre - position;
      for (int64_t c = 0; c < s.c; ++c) inputs[c * plane + p] = c * taps + position;
    }
  }
  Matrix Forward(const float *w) const { return Matrix{w, 0, 0, outputs.data(), inputs.data()}; }
  Matrix Transposed(const float *w) const { return Matrix{w, 0, 0, inputs.data(), outputs.data()}; }
};

// The tensors of a covered-plane convolution as N images of C*P (or OC*P) channels of one value.
ConvShape AsDense(const ConvShape &s, int64_t in_channels, int64_t out_channels) {
  return ConvShape{s.n, in_channels * s.plane(), 1, 1, out_channels * s.plane(), 1};
}

void Forward(const float *x, const float *w, const ConvShape &s, float *y) {
  if (CoversPlane(s)) {
    Convolve(x, DenseFilter(s).Forward(w), AsDense(s, s.c, s.oc), y);
  } else {
    Convolve(x, Matrix{w, s.depth(), 1}, s, y);
  }
}

// dx of the convolution from dy (the forward convolution's shape s).
void GradientOfInput(const float *dy, const float *w, const ConvShape &s, float *dx) {
  if (CoversPlane(s)) {  // dx(C*P, N) = W^T . dy(OC*P, N)
    Convolve(dy, DenseFilter(s).Transposed(w), AsDense(s, s.oc, s.c), dx);
  } else if (s.k == 1) {  // dx = conv(dy, w^T), the filter read transposed
    Convolve(dy, Matrix{w, 1, s.c}, ConvShape{s.n, s.oc, s.h, s.w, s.c, 1}, dx);
  } else {
    InputGradient(dy, w, s, dx);
  }
}

// dw of the convolution from x and dy.
void GradientOfFilter(const float *x, const float *dy, const ConvShape &s, float *dw) {
  const int64_t taps = s.k * s.k, centre = taps / 2;
  if (s.k == 1 || s.plane() > 1) {
    FilterGradient(x, dy, s, dw);
    return;
  }
  thread_local std::vector<float> centres;  // the only taps that see the plane
  centres.resize(s.oc * s.c);
  FilterGradient(x, dy, ConvShape{s.n, s.c, 1, 1, s.oc, 1}, centres.data());
  std::fill(dw, dw + s.oc * s.depth(), 0.0f);
  for (int64_t i = 0; i < s.oc * s.c; ++i) dw[i * taps + centre] = centres[i];
}

// ---- filters packed once, for inference ----
// A folded inference network calls each convolution with the same filter every time, so its GEMM's
// A (the filter, or the dense map read from it) is packed on the first call and kept. The key is a
// token the caller gives each filter (src/cpu_kernels/conv.py: one per ConvBiasReLU, never reused
// within a process) and the input plane (the dense maps depend on it). The entry keeps a copy of the
// filter it was packed from, compared with the filter of every call: weights loaded into the network
// later (at the same address or not) are packed again, never served stale. Past kPackedFilterValues
// the cache starts over.
using PackedFilter = std::shared_ptr<const std::vector<float>>;

PackedFilter PackedOnce(int64_t token, const float *w, const ConvShape &s,
                        const std::function<std::vector<float>()> &pack) {
  struct Entry {
    std::shared_ptr<const std::vector<float>> filter;  // the values it was packed from
    PackedFilter packed;
  };
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, Entry> cache;
  static int64_t cached_values = 0;
  const int64_t filter_values = s.oc * s.depth();
  const auto key = std::make_tuple(token, s.h, s.w);
  Entry entry;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto found = cache.find(key);
    if (found != cache.end()) entry = found->second;
  }
  if (entry.packed != nullptr && static_cast<int64_t>(entry.filter->size()) == filter_values &&
      SameValues(*entry.filter, w)) {
    return entry.packed;
  }
  entry = Entry{std::make_shared<const std::vector<float>>(w, w + filter_values),
                std::make_shared<const std::vector<float>>(pack())};
  const int64_t values = static_cast<int64_t>(entry.packed->size()) + filter_values;
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) {
    cached_values -= static_cast<int64_t>(found->second.packed->size() + found->second.filter->size());
    cache.erase(found);
  }
  if (cached_values + values > kPackedFilterValues) {
    cache.clear();  // calls still running keep their filters through their own references
    cached_values = 0;
  }
  cached_values += values;
  cache.emplace(key, entry);
  return entry.packed;
}

// relu(conv(x, w) + bias[OC]): a convolution with BatchNorm folded into it (w and bias), and ReLU,
// for inference, stride 1 or 2; token[0] names the filter (PackedOnce).
int BiasReluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, int64_t stride) {
  if (const int error = CheckArguments(nparam, "441i4", ndims, dtypes)) return error;
  ConvShape s{};
  if (!ReadShape(shapes[0], shapes[1], &s)) return 3;
  s.stride = stride;
  const int64_t expected[4] = {s.n, s.oc, s.out_h(), s.out_w()};
  if (shapes[2][0] != s.oc || shapes[3][0] < 1 || !SameShape(ndims[4], shapes[4], expected)) return 3;
  const auto *x = static_cast<const float *>(params[0]);
  const auto *w = static_cast<const float *>(params[1]);
  const auto *bias = static_cast<const float *>(params[2]);
  const int64_t token = static_cast<const int64_t *>(params[3])[0];
  auto *y = static_cast<float *>(params[4]);
  const bool dense = CoversPlane(s);
  const ConvShape gemm = dense ? AsDense(s, s.c, s.oc) : s;
  const PackedFilter packed = PackedOnce(token, w, s, [&] {
    return PackWhole(dense ? DenseFilter(s).Forward(w) : Matrix{w, s.depth(), 1}, gemm.oc, gemm.depth());
  });
  Convolve(x, Matrix{}, gemm, y, PackedA{packed->data(), PaddedToStrips(gemm.oc)},
           BiasRelu{bias, dense ? s.plane() : 1});
  return 0;
}

// ---- BatchNorm + ReLU in training ----
// MindSpore's BatchNorm in training (ops.BatchNorm, is_training=True), then ReLU, as one operation;
// its gradient (BatchNormGrad after ReluGrad) as one more. A network of small planes spends more in
// launching these four MindSpore operations than in their arithmetic (docs/PERFORMANCE.md, "Changes tried").
// Per channel over its M = N*H*W values: the batch mean and biased variance normalise the values;
// the moving statistics, parameters of the network, are updated in place with weight `momentum` for
// the batch's mean and unbiased variance, as MindSpore's operation does.

struct ChannelsShape {
  int64_t n, c, plane;
  int64_t values() const { return n * c * plane; }
  double per_channel() const { return static_cast<double>(n) * plane; }
  // On planes of at most 16 values the loops run along whole images instead of along planes, with
  // the per-channel values spread over the plane's positions, so that they vectorise.
  bool spread() const { return plane <= 16; }
};

// Per-channel values laid out for ChannelSums and ChannelMap: entry k = channel, or with spread()
// channel * plane + position.
std::vector<float> Spread(const ChannelsShape &s, int64_t c0, int64_t c1, const std::function<float(int64_t)> &value) {
  const int64_t repeat = s.spread() ? s.plane : 1;
  std::vector<float> out(s.c * repeat);
  for (int64_t ch = c0; ch < c1; ++ch) std::fill_n(out.begin() + ch * repeat, repeat, value(ch));
  return out;
}

// Two sums per channel ch in [c0, c1) in one pass: first[ch] of f(i, k) and second[ch] of g(i, k)
// over the channel's values, i a value's index in the tensor and k its entry in per-channel arrays
// laid out by Spread.
template <typename F, typename G>
void ChannelSums(const ChannelsShape &s, int64_t c0, int64_t c1, F f, G g, double *first, double *second) {
  if (!s.spread()) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      double total_f = 0.0, total_g = 0.0;
      for (int64_t i = 0; i < s.n; ++i) {
        const int64_t base = (i * s.c + ch) * s.plane;
        float part_f = 0.0f, part_g = 0.0f;
#pragma omp simd reduction(+ : part_f, part_g)
        for (int64_t p = 0; p < s.plane; ++p) {
          part_f += f(base + p, ch);
          part_g += g(base + p, ch);
        }
        total_f += part_f;
        total_g += part_g;
      }
      first[ch] = total_f;
      second[ch] = total_g;
    }
    return;
  }
  const int64_t j0 = c0 * s.plane, j1 = c1 * s.plane;
  thread_local std::vector<double> partials;
  partials.assign(2 * (j1 - j0), 0.0);
  double *partial_f = partials.data(), *partial_g = partial_f + (j1 - j0);  // entry j at j - j0
  for (int64_t i = 0; i < s.n; ++i) {
    const int64_t base = i * s.c * s.plane;
    for (int64_t j = j0; j < j1; ++j) {
      partial_f[j - j0] += f(base + j, j);
      partial_g[j - j0] += g(base + j, j);
    }
  }
  for (int64_t ch = c0; ch < c1; ++ch) {
    first[ch] = second[ch] = 0.0;
    for (int64_t p = (ch - c0) * s.plane; p < (ch - c0 + 1) * s.plane; ++p) {
      first[ch] += partial_f[p];
      second[ch] += partial_g[p];
    }
  }
}

// f(i, k) for every value of channels [c0, c1), as in ChannelSums.
template <typename F>
void ChannelMap(const ChannelsShape &s, int64_t c0, int64_t c1, F f) {
  for (int64_t i = 0; i < s.n; ++i) {
    if (s.spread()) {
      const int64_t base = i * s.c * s.plane;
      for (int64_t j = c0 * s.plane; j < c1 * s.plane; ++j) f(base + j, j);
    } else {
      for (int64_t ch = c0; ch < c1; ++ch) {
        const int64_t base = (i * s.c + ch) * s.plane;
        for (int64_t p = 0; p < s.plane; ++p) f(base + p, ch);
      }
    }
  }
}

// task(c0, c1) over ranges of channels; shared between the threads when the tensor is large.
void ForChannels(const ChannelsShape &s, const std::function<void(int64_t, int64_t)> &task) {
  const int64_t pieces = s.values() < kSharedPassValues ? 1 : std::min(s.c, Workers::Get().Threads() * kPiecesPerThread);
  Workers::Get().Run(pieces, [&](int64_t piece) { task(piece * s.c / pieces, (piece + 1) * s.c / pieces); });
}

// The elementwise functions below capture raw pointers by value: through a captured reference the
// compiler must assume that a store may change the pointer, and gives up vectorising.
void BatchNormReluForward(const float *z, const ChannelsShape &s, const float *gamma, const float *beta, float epsilon,
                          float momentum, float *moving_mean, float *moving_variance, float *y, float *mean,
                          float *inverse_std) {
  ForChannels(s, [&](int64_t c0, int64_t c1) {
    // Mean and variance in one pass over z - pivot, the pivot a value of the channel (close enough
    // to the mean that the variance does not cancel away).
    const std::vector<float> spread_pivot = Spread(s, c0, c1, [&](int64_t ch) { return z[ch * s.plane]; });
    const float *pivot = spread_pivot.data();
    std::vector<double> sums(s.c), squares(s.c);
    ChannelSums(s, c0, c1, [z, pivot](int64_t i, int64_t k) { return z[i] - pivot[k]; },
                [z, pivot](int64_t i, int64_t k) { return (z[i] - pivot[k]) * (z[i] - pivot[k]); }, sums.data(),
                squares.data());
    for (int64_t ch = c0; ch < c1; ++ch) {
      const double shifted_mean = sums[ch] / s.per_channel();
      const double variance = std::max(squares[ch] / s.per_channel() - shifted_mean * shifted_mean, 0.0);
      mean[ch] = static_cast<float>(z[ch * s.plane] + shifted_mean);
      inverse_std[ch] = static_cast<float>(1.0 / std::sqrt(variance + epsilon));
      const double unbiased = variance * s.per_channel() / std::max(s.per_channel() - 1.0, 1.0);
      moving_mean[ch] = static_cast<float>((1.0 - momentum) * moving_mean[ch] + momentum * mean[ch]);
      moving_variance[ch] = static_cast<float>((1.0 - momentum) * moving_variance[ch] + momentum * unbiased);
    }
    const std::vector<float> scale = Spread(s, c0, c1, [&](int64_t ch) { return gamma[ch] * inverse_std[ch]; });
    const std::vector<float> shift = Spread(s, c0, c1, [&](int64_t ch) {
      return beta[ch] - mean[ch] * gamma[ch] * inverse_std[ch];
    });
    const float *a = scale.data(), *b = shift.data();
    ChannelMap(s, c0, c1, [z, y, a, b](int64_t i, int64_t k) { y[i] = std::max(z[i] * a[k] + b[k], 0.0f); });
  });
}

// ReLU's gradient; both values are read whatever y is, which lets the loops below vectorise.
inline float ThroughRelu(float y, float dy) { return y > 0.0f ? dy : 0.0f; }

// dz from dy through ReLU (where y > 0) and BatchNorm with batch statistics; dgamma, dbeta:
// with g the gradient through ReLU and xhat = (z - mean) * inverse_std,
// dz = gamma * inverse_std * (g - mean(g) - xhat * mean(g * xhat)), dgamma = sum(g * xhat), dbeta = sum(g).
void BatchNormReluBackward(const float *dy, const float *z, const float *y, const ChannelsShape &s,
                           const float *gamma, const float *mean, const float *inverse_std, float *dz, float *dgamma,
                           float *dbeta) {
  ForChannels(s, [&](int64_t c0, int64_t c1) {
    const std::vector<float> spread_mean = Spread(s, c0, c1, [&](int64_t ch) { return mean[ch]; });
    const std::vector<float> spread_inverse = Spread(s, c0, c1, [&](int64_t ch) { return inverse_std[ch]; });
    const float *m = spread_mean.data(), *inv = spread_inverse.data();
    std::vector<double> sums(s.c), weighted(s.c);
    ChannelSums(s, c0, c1, [y, dy](int64_t i, int64_t) { return ThroughRelu(y[i], dy[i]); },
                [y, dy, z, m, inv](int64_t i, int64_t k) { return ThroughRelu(y[i], dy[i]) * (z[i] - m[k]) * inv[k]; },
                sums.data(), weighted.data());
    for (int64_t ch = c0; ch < c1; ++ch) {
      dgamma[ch] = static_cast<float>(weighted[ch]);
      dbeta[ch] = static_cast<float>(sums[ch]);
    }
    const std::vector<float> spread_scale = Spread(s, c0, c1, [&](int64_t ch) { return gamma[ch] * inverse_std[ch]; });
    const std::vector<float> spread_mean_g = Spread(s, c0, c1, [&](int64_t ch) {
      return static_cast<float>(sums[ch] / s.per_channel());
    });
    const std::vector<float> spread_slope = Spread(s, c0, c1, [&](int64_t ch) {
      return static_cast<float>(weighted[ch] / s.per_channel()) * inverse_std[ch];
    });
    const float *scale = spread_scale.data(), *mean_g = spread_mean_g.data(), *slope = spread_slope.data();
    ChannelMap(s, c0, c1, [y, dy, z, dz, m, scale, mean_g, slope](int64_t i, int64_t k) {
      const float g = ThroughRelu(y[i], dy[i]);
      dz[i] = scale[k] * (g - mean_g[k] - (z[i] - m[k]) * slope[k]);
    });
  });
}

bool ChannelVectors(const int64_t *shape, int ndim, int64_t c) { return ndim == 1 && shape[0] == c; }

}  // namespace

extern "C" {

int ConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (const int error = CheckArguments(nparam, "444", ndims, dtypes)) return error;
  ConvShape s{};
  if (!ReadShape(shapes[0], shapes[1], &s)) return 3;
  const int64_t expected[4] = {s.n, s.oc, s.h, s.w};
  if (!SameShape(ndims[2], shapes[2], expected)) return 3;
  Forward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), s,
          static_cast<float *>(params[2]));
  return 0;
}

int ConvBiasReluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  return BiasReluForward(nparam, params, ndims, shapes, dtypes, 1);
}

int ConvBiasReluStride2Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  return BiasReluForward(nparam, params, ndims, shapes, dtypes, 2);
}

int ConvGradInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (const int error = CheckArguments(nparam, "444", ndims, dtypes)) return error;
  ConvShape s{};  // the forward convolution's shape, input = dx
  if (!ReadShape(shapes[2], shapes[1], &s)) return 3;
  const int64_t expected[4] = {s.n, s.oc, s.h, s.w};
  if (!SameShape(ndims[0], shapes[0], expected)) return 3;
  GradientOfInput(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), s,
                  static_cast<float *>(params[2]));
  return 0;
}

int ConvGradFilter(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (const int error = CheckArguments(nparam, "4444", ndims, dtypes)) return error;
  ConvShape s{};
  if (!ReadShape(shapes[0], shapes[2], &s)) return 3;
  const int64_t expected[4] = {s.n, s.oc, s.h, s.w};
  if (!SameShape(ndims[1], shapes[1], expected) || !SameShape(ndims[3], shapes[3], shapes[2])) return 3;
  GradientOfFilter(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), s,
                   static_cast<float *>(params[3]));
  return 0;
}

// BatchNormReluTrain(z[N,C,H,W], gamma[C], beta[C], moving_mean[C], moving_variance[C],
//                    settings[2] = {epsilon, momentum}) -> y[N,C,H,W], mean[C], inverse_std[C];
// moving_mean and moving_variance are updated in place.
int BatchNormReluTrain(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (const int error = CheckArguments(nparam, "411111411", ndims, dtypes)) return error;
  const ChannelsShape s{shapes[0][0], shapes[0][1], shapes[0][2] * shapes[0][3]};
  for (const int i : {1, 2, 3, 4, 7, 8}) {
    if (!ChannelVectors(shapes[i], ndims[i], s.c)) return 3;
  }
  if (shapes[5][0] != 2 || !SameShape(ndims[6], shapes[6], shapes[0])) return 3;
  const auto *settings = static_cast<const float *>(params[5]);
  BatchNormReluForward(static_cast<const float *>(params[0]), s, static_cast<const float *>(params[1]),
                       static_cast<const float *>(params[2]), settings[0], settings[1], static_cast<float *>(params[3]),
                       static_cast<float *>(params[4]), static_cast<float *>(params[6]),
                       static_cast<float *>(params[7]), static_cast<float *>(params[8]));
  return 0;
}

// BatchNormReluGrad(dy, z, y [N,C,H,W], gamma, mean, inverse_std [C]) -> dz[N,C,H,W], dgamma[C], dbeta[C]
int BatchNormReluGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (const int error = CheckArguments(nparam, "444111411", ndims, dtypes)) return error;
  const ChannelsShape s{shapes[0][0], shapes[0][1], shapes[0][2] * shapes[0][3]};
  for (const int i : {1, 2, 6}) {
    if (!SameShape(ndims[i], shapes[i], shapes[0])) return 3;
  }
  for (const int i : {3, 4, 5, 7, 8}) {
    if (!ChannelVectors(shapes[i], ndims[i], s.c)) return 3;
  }
  BatchNormReluBackward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                        static_cast<const float *>(params[2]), s, static_cast<const float *>(params[3]),
                        static_cast<const float *>(params[4]), static_cast<const float *>(params[5]),
                        static_cast<float *>(params[6]), static_cast<float *>(params[7]),
                        static_cast<float *>(params[8]));
  return 0;
}

// ConvBatchNormReluTrain(x[N,C,H,W], w[OC,C,K,K], gamma, beta, moving_mean, moving_variance [OC],
//                        settings[2]) -> y[N,OC,H,W], z[N,OC,H,W] (the convolution's output, kept for the
// gradient), mean[OC], inverse_std[OC]: a stride-1 convolution, then BatchNormReluTrain.
int ConvBatchNormReluTrain(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (const int error = CheckArguments(nparam, "44111114411", ndims, dtypes)) return error;
  ConvShape s{};
  if (!ReadShape(shapes[0], shapes[1], &s)) return 3;
  const int64_t expected[4] = {s.n, s.oc, s.h, s.w};
  for (const int i : {2, 3, 4, 5, 9, 10}) {
    if (!ChannelVectors(shapes[i], ndims[i], s.oc)) return 3;
  }
  if (shapes[6][0] != 2 || !SameShape(ndims[7], shapes[7], expected) || !SameShape(ndims[8], shapes[8], expected)) {
    return 3;
  }
  auto *z = static_cast<float *>(params[8]);
  Forward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), s, z);
  const auto *settings = static_cast<const float *>(params[6]);
  BatchNormReluForward(z, ChannelsShape{s.n, s.oc, s.plane()}, static_cast<const float *>(params[2]),
                       static_cast<const float *>(params[3]), settings[0], settings[1], static_cast<float *>(params[4]),
                       static_cast<float *>(params[5]), static_cast<float *>(params[7]),
                       static_cast<float *>(params[9]), static_cast<float *>(params[10]));
  return 0;
}

// ConvBatchNormReluGrad(dy, x, w, z, y, gamma, mean, inverse_std) -> dx, dw, dgamma, dbeta: the gradient
// of ConvBatchNormReluTrain (BatchNormReluGrad, then the convolution's two gradients).
int ConvBatchNormReluGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (const int error = CheckArguments(nparam, "444441114411", ndims, dtypes)) return error;
  ConvShape s{};
  if (!ReadShape(shapes[1], shapes[2], &s)) return 3;
  const int64_t expected[4] = {s.n, s.oc, s.h, s.w};
  for (const int i : {0, 3, 4}) {
    if (!SameShape(ndims[i], shapes[i], expected)) return 3;
  }
  for (const int i : {5, 6, 7, 10, 11}) {
    if (!ChannelVectors(shapes[i], ndims[i], s.oc)) return 3;
  }
  if (!SameShape(ndims[8], shapes[8], shapes[1]) || !SameShape(ndims[9], shapes[9], shapes[2])) return 3;
  thread_local std::vector<float> dz;
  dz.resize(s.n * s.oc * s.plane());
  BatchNormReluBackward(static_cast<const float *>(params[0]), static_cast<const float *>(params[3]),
                        static_cast<const float *>(params[4]), ChannelsShape{s.n, s.oc, s.plane()},
                        static_cast<const float *>(params[5]), static_cast<const float *>(params[6]),
                        static_cast<const float *>(params[7]), dz.data(), static_cast<float *>(params[10]),
                        static_cast<float *>(params[11]));
  const auto *x = static_cast<const float *>(params[1]);
  const auto *w = static_cast<const float *>(params[2]);
  const float *gradient = dz.data();  // thread_local: the kernels' workers must not name it themselves
  GradientOfInput(gradient, w, s, static_cast<float *>(params[8]));
  GradientOfFilter(x, gradient, s, static_cast<float *>(params[9]));
  return 0;
}

}  // extern "C"
