// Momentum SGD for MindSpore's CPU backend, loaded through ops.Custom(func_type="aot"); see
// src/optimizer.py. One call updates every parameter of the network in place, the same arithmetic
// as nn.Momentum's per-parameter Mul + AddN (weight decay), Mul (loss scale) and ApplyMomentum:
//   g' = (g + w * decay) * inverse_loss_scale
//   moment = moment * momentum + g'
//   w = w - lr * moment
// A GoogleNet step at a 32x32 input spends several milliseconds launching those ~290 operations
// (docs/PERFORMANCE.md, "Changes tried": the momentum update as one kernel call).
//
// MomentumUpdate(settings[2 + P] = {momentum, inverse_loss_scale, decay of each parameter},
//                lr[1 or P], w_0 .. w_{P-1}, moment_0 .. moment_{P-1}, g_0 .. g_{P-1}) -> done[1]
// w_i and moment_i are updated in place; done is 1.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

bool IsFloat32(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

int64_t Elements(int ndim, const int64_t *shape) {
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) count *= shape[d];
  return count;
}

void Update(float *w, float *moment, const float *g, int64_t count, float momentum, float inverse_scale,
            float decay, float lr) {
  for (int64_t i = 0; i < count; ++i) {
    const float gradient = (g[i] + w[i] * decay) * inverse_scale;
    moment[i] = moment[i] * momentum + gradient;
    w[i] -= lr * moment[i];
  }
}

}  // namespace

extern "C" int MomentumUpdate(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam < 6 || (nparam - 3) % 3 != 0) return 1;
  const int count = (nparam - 3) / 3;
  for (int i = 0; i < nparam; ++i) {
    if (!IsFloat32(dtypes[i])) return 2;
  }
  const int64_t lr_count = Elements(ndims[1], shapes[1]);
  if (Elements(ndims[0], shapes[0]) != 2 + count || (lr_count != 1 && lr_count != count)) return 3;
  std::vector<int64_t> sizes(count);
  for (int p = 0; p < count; ++p) {
    sizes[p] = Elements(ndims[2 + p], shapes[2 + p]);
    if (Elements(ndims[2 + count + p], shapes[2 + count + p]) != sizes[p] ||
        Elements(ndims[2 + 2 * count + p], shapes[2 + 2 * count + p]) != sizes[p]) {
      return 3;
    }
  }
  const auto *settings = static_cast<const float *>(params[0]);
  const auto *lr = static_cast<const float *>(params[1]);
  for (int p = 0; p < count; ++p) {
    Update(static_cast<float *>(params[2 + p]), static_cast<float *>(params[2 + count + p]),
           static_cast<const float *>(params[2 + 2 * count + p]), sizes[p], settings[0], settings[1], settings[2 + p],
           lr[lr_count == 1 ? 0 : p]);
  }
  static_cast<float *>(params[nparam - 1])[0] = 1.0f;
  return 0;
}
