// Max pooling ('same' padding, NCHW, float32) for MindSpore's CPU backend, loaded through
// ops.Custom(func_type="aot"); see src/max_pool.py.
//
// Why: on CPU MindSpore 2.10 computes MaxPoolGrad by re-running the pooling forward and then the
// backward with oneDNN's plain-layout reference kernel (a third of GoogleNet's training step, see
// docs/PERFORMANCE.md). Here the forward also writes, per output, the flat index (within its H*W
// plane) of the maximum it chose, and the gradient is a scatter through those indices.
//
// Which maximum: the first in row-major window order (strict '>'), padding never chosen, the
// same rule as MindSpore's own MaxPoolGrad, so the same inputs receive the gradient, ties
// included (they are common: windows of ReLU zeros). Where windows overlap an input can collect
// several contributions; they are summed here in output order, MindSpore sums them in an order
// of its own, so such sums may differ in the last bits of float32.
//
// The window is separable: a horizontal pass keeps, per input row and output column, the
// maximum of the K columns and the first column holding it; a vertical pass combines K such rows
// in order. The first row holding the overall maximum, and the first column within that row, is
// exactly the first maximum in row-major order. Both passes run over contiguous arrays, which
// the compiler vectorises; the 3x3 stride-1 pool (9 of GoogleNet's 13) runs them over whole
// blocks of planes at once, so that small planes (4x4 at 32x32 input) cost no per-row overhead.
// Work is split over planes between std::threads only when it is large enough to pay for them
// (an OpenMP team would keep spinning between calls, taking cores from MindSpore's own threads).
//
// Entry points (the AOT calling convention: inputs then outputs in params):
//   MaxPoolK{K}S{S}(x[N,C,H,W]) -> y[N,C,OH,OW] float32, argmax[N,C,OH,OW] int32 (flat index
//   into x, so x may hold at most 2^31 - 1 values)
//   MaxPoolGrad(x[N,C,H,W], dy[N,C,OH,OW], argmax[N,C,OH,OW]) -> dx[N,C,H,W] float32
// with OH = ceil(H / S), OW = ceil(W / S) and the padding split as MindSpore's pad_mode="same"
// splits it (the odd pixel at the bottom/right).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

struct Geometry {
  int64_t planes;  // N * C
  int64_t h, w, oh, ow;
  int64_t pad_top, pad_left;
};

constexpr int64_t kBlockValues = 16384;       // values per block of planes: temporaries stay in L2
constexpr int64_t kValuesPerThread = 131072;  // below this a thread costs more than it saves

int64_t SamePadBefore(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  const int64_t total = std::max<int64_t>((out - 1) * stride + kernel - in, 0);
  return total / 2;
}

// Calls fn(first_plane, end_plane) over [0, planes), on several threads when the work is large.
template <typename Fn>
void ForPlanes(int64_t planes, int64_t values_per_plane, Fn fn) {
  const int64_t hardware = std::max<int64_t>(std::thread::hardware_concurrency(), 1);
  const int64_t wanted = std::max<int64_t>(planes * values_per_plane / kValuesPerThread, 1);
  const int64_t threads = std::min({hardware, wanted, planes});
  if (threads <= 1) {
    fn(int64_t{0}, planes);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t share = (planes + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = std::min(t * share, planes), end = std::min(begin + share, planes);
    if (begin < end) workers.emplace_back(fn, begin, end);
  }
  fn(int64_t{0}, std::min(share, planes));
  for (auto &worker : workers) worker.join();
}

// ---- 3x3, stride 1, padding 1 on every side: both passes over a whole block of planes ----
// Each value is compared with its neighbours in window order; a neighbour outside the plane gets
// NaN added (every comparison with NaN is false, so it is never chosen), one inside gets -0.0f
// added (which leaves every float as it is). The centre starts as the best; the neighbour before
// it wins ties (>=), the one after it must be greater: that is the first maximum in order.

struct NeighbourMasks {
  std::vector<float> left, right, up, down;
};

// The masks for a block of whole planes (the same for every block of that size).
NeighbourMasks MakeMasks(int64_t n, int64_t h, int64_t w) {
  const float out = std::numeric_limits<float>::quiet_NaN(), in = -0.0f;
  NeighbourMasks m{std::vector<float>(n), std::vector<float>(n), std::vector<float>(n), std::vector<float>(n)};
  const int64_t plane = h * w;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t col = i % w, row = (i % plane) / w;
    m.left[i] = col > 0 ? in : out;
    m.right[i] = col < w - 1 ? in : out;
    m.up[i] = row > 0 ? in : out;
    m.down[i] = row < h - 1 ? in : out;
  }
  return m;
}

// best/at: the centre; before/after: the neighbours' values with their mask added.
inline void FirstMax(float before, int32_t before_at, float after, int32_t after_at, float &best, int32_t &at) {
  const bool take_before = before >= best;
  best = take_before ? before : best;
  at = take_before ? before_at : at;
  const bool take_after = after > best;
  best = take_after ? after : best;
  at = take_after ? after_at : at;
}

// n values of x (whole planes), flat index base in the whole tensor -> row maxima and their indices.
void RowMax3(const float *x, int64_t n, int64_t base, const NeighbourMasks &m, float *row_max, int32_t *row_at) {
  const float out = std::numeric_limits<float>::quiet_NaN();
  auto at = [base](int64_t i) { return static_cast<int32_t>(base + i); };
  for (int64_t i = 0; i < n; ++i) {
    if (i == 1 && n > 2) {  // the interior, without bounds checks, vectorised
      for (; i + 1 < n; ++i) {
        float best = x[i];
        int32_t best_at = at(i);
        FirstMax(x[i - 1] + m.left[i], at(i - 1), x[i + 1] + m.right[i], at(i + 1), best, best_at);
        row_max[i] = best;
        row_at[i] = best_at;
      }
    }
    float best = x[i];
    int32_t best_at = at(i);
    FirstMax(i > 0 ? x[i - 1] + m.left[i] : out, at(i - 1), i + 1 < n ? x[i + 1] + m.right[i] : out, at(i + 1),
             best, best_at);
    row_max[i] = best;
    row_at[i] = best_at;
  }
}

void ColumnMax3(const float *row_max, const int32_t *row_at, int64_t n, int64_t w, const NeighbourMasks &m,
                float *y, int32_t *argmax) {
  const float out = std::numeric_limits<float>::quiet_NaN();
  auto edge = [&](int64_t i) {
    float best = row_max[i];
    int32_t best_at = row_at[i];
    FirstMax(i >= w ? row_max[i - w] + m.up[i] : out, i >= w ? row_at[i - w] : 0,
             i + w < n ? row_max[i + w] + m.down[i] : out, i + w < n ? row_at[i + w] : 0, best, best_at);
    y[i] = best;
    argmax[i] = best_at;
  };
  for (int64_t i = 0; i < std::min(w, n); ++i) edge(i);
  for (int64_t i = w; i + w < n; ++i) {
    float best = row_max[i];
    int32_t best_at = row_at[i];
    FirstMax(row_max[i - w] + m.up[i], row_at[i - w], row_max[i + w] + m.down[i], row_at[i + w], best, best_at);
    y[i] = best;
    argmax[i] = best_at;
  }
  for (int64_t i = std::max(n - w, w); i < n; ++i) edge(i);
}

// Planes per block of the 3x3 stride-1 pool.
int64_t PlanesPerBlock(int64_t plane) { return std::max<int64_t>(kBlockValues / plane, 1); }

// The masks of a whole block of H x W planes, made once per plane shape and kept (making them costs
// as much as pooling a small tensor); a smaller block uses their beginning.
const NeighbourMasks &Masks(int64_t h, int64_t w) {
  static std::mutex mutex;
  static std::map<std::pair<int64_t, int64_t>, NeighbourMasks> made;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(h, w);
  auto found = made.find(key);
  if (found == made.end()) found = made.emplace(key, MakeMasks(PlanesPerBlock(h * w) * h * w, h, w)).first;
  return found->second;  // std::map never moves its values
}

void Pool3x3Stride1(const float *x, float *y, int32_t *argmax, const Geometry &g) {
  const int64_t plane = g.h * g.w, block = PlanesPerBlock(plane);
  const NeighbourMasks &masks = Masks(g.h, g.w);
  ForPlanes(g.planes, plane, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(block * plane);
    std::vector<int32_t> row_at(block * plane);
    for (int64_t first = begin; first < end; first += block) {
      const int64_t offset = first * plane, n = (std::min(first + block, end) - first) * plane;
      RowMax3(x + offset, n, offset, masks, row_max.data(), row_at.data());
      ColumnMax3(row_max.data(), row_at.data(), n, g.w, masks, y + offset, argmax + offset);
    }
  });
}

// ---- K = 2 or 3, stride 2, even H and W (every strided pool of GoogleNet at 224 and 32 input) ----
// Windows start at even rows and columns (no padding before); with K = 3 the last window of each
// row and column reaches one padded pixel past the end, ruled out by a NaN mask as above. The first
// value of a window is always inside, so plain '>' in window order keeps the first maximum.

// The 2x2 pool's output rows shorter than this are combined in one loop over the whole block
// (NarrowRows): a loop per output row costs more than its comparisons there. At 32x32 input
// (maxpool4: rows of one value) 32x832x2x2 went from 240 to 46 us; with rows of 7 (224x224 input)
// the loop per row was faster (5.1 against 6.3 ms). The same for the 3x3 pool was no faster (its
// loads become gathers, which the compiler does not use on this CPU).
constexpr int64_t kNarrowRow = 4;

// For output o of a block of planes (row q = o / ow, column c = o % ow): the index of row 2q,
// column c, in the horizontal maxima. Made once per shape and block, like the masks above.
const std::vector<int32_t> &NarrowRows(int64_t oh, int64_t ow, int64_t planes) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, std::vector<int32_t>> made;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(oh, ow, planes);
  auto found = made.find(key);
  if (found == made.end()) {
    std::vector<int32_t> first_row(planes * oh * ow);
    for (int64_t o = 0; o < planes * oh * ow; ++o) first_row[o] = static_cast<int32_t>(2 * (o / ow) * ow + o % ow);
    found = made.emplace(key, std::move(first_row)).first;
  }
  return found->second;  // std::map never moves its values
}

// y[oc] = the maximum of ROWS rows of horizontal maxima (stride ow), the first row holding it winning.
template <int ROWS>
void CombineRows(const float *row_max, const int32_t *row_at, int64_t ow, float *y, int32_t *argmax) {
  for (int64_t oc = 0; oc < ow; ++oc) {
    float best = row_max[oc];
    int32_t at = row_at[oc];
    for (int d = 1; d < ROWS; ++d) {
      const bool greater = row_max[d * ow + oc] > best;
      best = greater ? row_max[d * ow + oc] : best;
      at = greater ? row_at[d * ow + oc] : at;
    }
    y[oc] = best;
    argmax[oc] = at;
  }
}

// CombineRows<2> for all outputs of a block at once, rows found through NarrowRows.
void CombineNarrowRows(const float *row_max, const int32_t *row_at, int64_t outputs, int64_t ow,
                       const int32_t *first_row, float *y, int32_t *argmax) {
  for (int64_t o = 0; o < outputs; ++o) {
    const int64_t r = first_row[o];
    const bool second = row_max[r + ow] > row_max[r];
    y[o] = second ? row_max[r + ow] : row_max[r];
    argmax[o] = second ? row_at[r + ow] : row_at[r];
  }
}

template <int K>
void PoolStride2Even(const float *x, float *y, int32_t *argmax, const Geometry &g) {
  const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow, ow = g.ow;
  const int64_t block = std::max<int64_t>(kBlockValues / plane, 1);
  // For K = 3: NaN where a row's last window would read the padding, -0.0f elsewhere.
  std::vector<float> third(std::min(block, g.planes) * g.h * ow, -0.0f);
  for (int64_t j = ow - 1; j < static_cast<int64_t>(third.size()); j += ow) {
    third[j] = std::numeric_limits<float>::quiet_NaN();
  }
  const int32_t *narrow = K == 2 && ow < kNarrowRow ? NarrowRows(g.oh, ow, std::min(block, g.planes)).data() : nullptr;
  ForPlanes(g.planes, plane, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(block * g.h * ow);
    std::vector<int32_t> row_at(block * g.h * ow);
    for (int64_t first = begin; first < end; first += block) {
      const int64_t planes = std::min(first + block, end) - first, base = first * plane;
      const float *xb = x + base;
      // Horizontal: output column j of the block's rows reads x[2j], x[2j+1] (and x[2j+2]).
      const int64_t n = planes * g.h * ow;
      auto horizontal = [&](int64_t j, bool last) {
        const float *v = xb + 2 * j;
        float best = v[0];
        auto at = static_cast<int32_t>(base + 2 * j);
        if (v[1] > best) best = v[1], at += 1;
        if (K == 3 && !last && v[2] + third[j] > best) best = v[2], at = static_cast<int32_t>(base + 2 * j + 2);
        row_max[j] = best;
        row_at[j] = at;
      };
      // Local pointers: through the captured vectors the compiler reloads them after every store
      // and does not vectorise.
      float *rm = row_max.data();
      int32_t *ra = row_at.data();
      const float *mask = third.data();
      for (int64_t j = 0; j + 1 < n; ++j) {
        const float *v = xb + 2 * j;
        float best = v[0];
        auto at = static_cast<int32_t>(base + 2 * j);
        const bool second = v[1] > best;
        best = second ? v[1] : best;
        at = second ? at + 1 : at;
        if (K == 3) {
          const bool third_wins = v[2] + mask[j] > best;
          best = third_wins ? v[2] : best;
          at = third_wins ? static_cast<int32_t>(base + 2 * j + 2) : at;
        }
        rm[j] = best;
        ra[j] = at;
      }
      horizontal(n - 1, true);  // its third value would lie past the block
      // Vertical: output row q of the block reads rows 2q, 2q+1 (and 2q+2) of the horizontal maxima.
      float *yb = y + first * out_plane;
      int32_t *ab = argmax + first * out_plane;
      if (narrow != nullptr) {
        CombineNarrowRows(rm, ra, planes * out_plane, ow, narrow, yb, ab);
        continue;
      }
      for (int64_t q = 0; q < planes * g.oh; ++q) {
        const int64_t r = 2 * q * ow;
        if (K == 3 && q % g.oh != g.oh - 1) {
          CombineRows<3>(rm + r, ra + r, ow, yb + q * ow, ab + q * ow);
        } else {
          CombineRows<2>(rm + r, ra + r, ow, yb + q * ow, ab + q * ow);
        }
      }
    }
  });
}

// ---- any K, S (strided pools on odd sizes): one plane at a time ----

// Horizontal pass over one input row: out[oc] = max of row[oc*S - pad + k], k < K, in range;
// col[oc] = the first column holding it.
template <int K, int S>
void RowMax(const float *row, int64_t w, int64_t ow, int64_t pad_left, float *out, int32_t *col) {
  // Output columns whose whole window lies inside the row.
  int64_t first = (pad_left + S - 1) / S;
  int64_t last = w - K + pad_left >= 0 ? (w - K + pad_left) / S : -1;  // inclusive
  first = std::min(first, ow);
  last = std::min(last, ow - 1);
  auto edge = [&](int64_t oc) {
    const int64_t start = oc * S - pad_left;
    float best = 0.0f;
    int32_t at = -1;
    for (int k = 0; k < K; ++k) {
      const int64_t c = start + k;
      if (c < 0 || c >= w) continue;
      if (at < 0 || row[c] > best) {
        best = row[c];
        at = static_cast<int32_t>(c);
      }
    }
    out[oc] = best;
    col[oc] = at;
  };
  for (int64_t oc = 0; oc < first; ++oc) edge(oc);
  for (int64_t oc = first; oc <= last; ++oc) {
    const int64_t start = oc * S - pad_left;
    float best = row[start];
    int32_t at = static_cast<int32_t>(start);
    for (int k = 1; k < K; ++k) {
      const float v = row[start + k];
      const bool greater = v > best;
      best = greater ? v : best;
      at = greater ? static_cast<int32_t>(start + k) : at;
    }
    out[oc] = best;
    col[oc] = at;
  }
  for (int64_t oc = std::max(last + 1, first); oc < ow; ++oc) edge(oc);
}

// base: the flat index of the plane's first value in the whole tensor.
template <int K, int S>
void PoolPlane(const float *x, float *y, int32_t *argmax, int64_t base, const Geometry &g, float *row_max,
               int32_t *row_col) {
  for (int64_t r = 0; r < g.h; ++r) {
    RowMax<K, S>(x + r * g.w, g.w, g.ow, g.pad_left, row_max + r * g.ow, row_col + r * g.ow);
  }
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    float *out = y + oy * g.ow;
    int32_t *idx = argmax + oy * g.ow;
    bool started = false;
    for (int k = 0; k < K; ++k) {
      const int64_t r = oy * S - g.pad_top + k;
      if (r < 0 || r >= g.h) continue;
      const float *m = row_max + r * g.ow;
      const int32_t *c = row_col + r * g.ow;
      const auto row_base = static_cast<int32_t>(base + r * g.w);
      if (!started) {
        for (int64_t oc = 0; oc < g.ow; ++oc) {
          out[oc] = m[oc];
          idx[oc] = row_base + c[oc];
        }
        started = true;
        continue;
      }
      for (int64_t oc = 0; oc < g.ow; ++oc) {
        const bool greater = m[oc] > out[oc];
        out[oc] = greater ? m[oc] : out[oc];
        idx[oc] = greater ? row_base + c[oc] : idx[oc];
      }
    }
  }
}

template <int K, int S>
void PoolPlanes(const float *x, float *y, int32_t *argmax, const Geometry &g) {
  const int64_t in_size = g.h * g.w, out_size = g.oh * g.ow;
  ForPlanes(g.planes, in_size, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(g.h * g.ow);
    std::vector<int32_t> row_col(g.h * g.ow);
    for (int64_t i = begin; i < end; ++i) {
      PoolPlane<K, S>(x + i * in_size, y + i * out_size, argmax + i * out_size, i * in_size, g, row_max.data(),
                      row_col.data());
    }
  });
}

bool IsFloat32(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }
bool IsInt32(const char *dtype) { return std::strcmp(dtype, "int32") == 0 || std::strcmp(dtype, "int") == 0; }

// The geometry of input `in` and pooled tensor `out` (both NCHW); false if they are not usable.
bool ReadGeometry(int *ndims, int64_t **shapes, int in, int out, Geometry *g) {
  if (ndims[in] != 4 || ndims[out] != 4) return false;
  g->planes = shapes[in][0] * shapes[in][1];
  g->h = shapes[in][2];
  g->w = shapes[in][3];
  g->oh = shapes[out][2];
  g->ow = shapes[out][3];
  return g->planes > 0 && g->h > 0 && g->w > 0 && g->oh > 0 && g->ow > 0 && g->planes * g->h * g->w <= INT32_MAX &&
         shapes[out][0] * shapes[out][1] == g->planes;
}

template <int K, int S>
int MaxPool(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Geometry g{};
  if (nparam != 3 || !ReadGeometry(ndims, shapes, 0, 1, &g)) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[1]) || !IsInt32(dtypes[2])) return 2;
  if (g.oh != (g.h + S - 1) / S || g.ow != (g.w + S - 1) / S) return 3;
  g.pad_top = SamePadBefore(g.h, g.oh, K, S);
  g.pad_left = SamePadBefore(g.w, g.ow, K, S);
  const auto *x = static_cast<const float *>(params[0]);
  auto *y = static_cast<float *>(params[1]);
  auto *argmax = static_cast<int32_t *>(params[2]);
  if (K == 3 && S == 1) {
    Pool3x3Stride1(x, y, argmax, g);
  } else if (S == 2 && g.h % 2 == 0 && g.w % 2 == 0) {
    PoolStride2Even<K>(x, y, argmax, g);
  } else {
    PoolPlanes<K, S>(x, y, argmax, g);
  }
  return 0;
}

}  // namespace

extern "C" {

int MaxPoolK3S1(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return MaxPool<3, 1>(nparam, params, ndims, shapes, dtypes);
}

int MaxPoolK3S2(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return MaxPool<3, 2>(nparam, params, ndims, shapes, dtypes);
}

int MaxPoolK2S2(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return MaxPool<2, 2>(nparam, params, ndims, shapes, dtypes);
}

int MaxPoolGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  Geometry g{};
  if (nparam != 4 || !ReadGeometry(ndims, shapes, 0, 1, &g) || ndims[2] != 4 || ndims[3] != 4) return 1;
  if (!IsFloat32(dtypes[1]) || !IsInt32(dtypes[2]) || !IsFloat32(dtypes[3])) return 2;
  const auto *dy = static_cast<const float *>(params[1]);
  const auto *argmax = static_cast<const int32_t *>(params[2]);
  auto *dx = static_cast<float *>(params[3]);
  const int64_t in_size = g.h * g.w, out_size = g.oh * g.ow;
  ForPlanes(g.planes, in_size, [&](int64_t begin, int64_t end) {
    std::fill(dx + begin * in_size, dx + end * in_size, 0.0f);
    // Each plane's indices stay inside the plane, so threads never write the same value.
    for (int64_t o = begin * out_size; o < end * out_size; ++o) dx[argmax[o]] += dy[o];
  });
  return 0;
}

}  // extern "C"
