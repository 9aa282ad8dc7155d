// Inference convolutions and max pools on oneDNN with channels-last (NHWC) activations, for
// MindSpore's CPU backend, loaded through ops.Custom(func_type="aot"); see
// src/cpu_kernels/channels_last.py.
//
// Which oneDNN: MindSpore's own lib/libdnnl.so.3 (3.10.1, already loaded in every MindSpore process),
// compiled against the headers of PyPI's onednn-devel 2025.3.0 (oneDNN 3.9.1: oneDNN keeps its C API
// backward compatible within a major version, so a 3.10 library serves them) and linked to MindSpore's
// file (src/cpu_kernels/build.py). OneDnnLibrary() names the file the symbols were bound to; the tests
// check it is MindSpore's. That library is built with oneDNN's threadpool runtime: primitives run on a
// stream that carries a threadpool, here the kernels' own workers (workers.h).
//
// The convolution lets oneDNN choose its weights' layout (format_tag::any) and fuses bias and ReLU
// (the folded BatchNorm's shift, then ReLU as a post-op); its primitive is made once per shape, its
// weights reordered into the chosen layout on a filter's first call and kept with a copy of the
// values they came from (reordered again when the filter changes, as in conv.cc's PackedOnce).
//
// Entry points (the AOT calling convention: inputs then outputs in params):
//   ConvBiasReluNhwc(x[N,H,W,C], w[OC,C,K,K], bias[OC], spec[2] int64 = {token, stride})
//     -> y[N,ceil(H/s),ceil(W/s),OC] = relu(conv(x, w) + bias), 'same' padding as MindSpore's
//   MaxPoolNhwc(x[N,H,W,C], spec[2] int64 = {kernel, stride}) -> y[N,ceil(H/s),ceil(W/s),C], 'same'
//   ChannelsLastVersion(x[1]) -> v[3] (major, minor, patch of the oneDNN library in use)
// Return codes: 0 success, 1 argument count, 2 dtype, 3 shape, 4 a oneDNN call failed.

#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_threadpool.h>
#include <oneapi/dnnl/dnnl_threadpool_iface.hpp>

#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "workers.h"

namespace {

thread_local bool in_parallel = false;

// oneDNN's work handed to the kernels' workers.
class Threadpool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override { return static_cast<int>(Workers::Get().Threads()); }
  bool get_in_parallel() const override { return in_parallel; }
  uint64_t get_flags() const override { return 0; }  // synchronous: parallel_for returns when done
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (in_parallel) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    Workers::Get().Run(n, [&](int64_t i) {
      const bool outer = in_parallel;
      in_parallel = true;
      fn(static_cast<int>(i), n);
      in_parallel = outer;
    });
  }
};

// One engine and one stream for the process; calls are serialised (MindSpore may run kernels
// concurrently, and a stream is not meant to be shared between threads), each using every worker.
struct Context {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  Threadpool threadpool;
  std::mutex mutex;
  bool ok = false;

  static Context &Get() {
    static Context *context = [] {
      auto *made = new Context();  // never destroyed: the kernels may run until the process exits
      made->ok = dnnl_engine_create(&made->engine, dnnl_cpu, 0) == dnnl_success &&
                 dnnl_threadpool_interop_stream_create(&made->stream, made->engine, &made->threadpool) ==
                     dnnl_success;
      return made;
    }();
    return *context;
  }
};

bool Ok(dnnl_status_t status) { return status == dnnl_success; }

bool IsFloat32(const char *dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

// MindSpore's 'same' padding: the output ceil(in / stride), the padding needed split with the
// smaller half before.
struct SamePadding {
  int64_t out, before, after;
  SamePadding(int64_t in, int64_t kernel, int64_t stride) {
    out = (in + stride - 1) / stride;
    const int64_t needed = std::max<int64_t>((out - 1) * stride + kernel - in, 0);
    before = needed / 2;
    after = needed - before;
  }
};

dnnl_memory_desc_t Describe(std::initializer_list<int64_t> dims, dnnl_format_tag_t tag) {
  dnnl_dims_t shape{};
  int ndims = 0;
  for (const int64_t d : dims) shape[ndims++] = d;
  dnnl_memory_desc_t desc = nullptr;
  if (!Ok(dnnl_memory_desc_create_with_tag(&desc, ndims, shape, dnnl_f32, tag))) return nullptr;
  return desc;
}

// A primitive made for one shape, with its memory objects (data pointers set per call).
struct Primitive {
  dnnl_primitive_desc_t desc = nullptr;
  dnnl_primitive_t primitive = nullptr;
  std::vector<std::pair<int, dnnl_memory_t>> arguments;  // DNNL_ARG_* and its memory
  const_dnnl_memory_desc_t weights = nullptr;            // the layout oneDNN chose for the weights
};

// Makes the primitive for `key` once (`make` fills it; false: oneDNN refused) and keeps it.
template <typename Key, typename Make>
Primitive *Cached(std::map<Key, std::unique_ptr<Primitive>> &cache, const Key &key, Make make) {
  auto found = cache.find(key);
  if (found != cache.end()) return found->second.get();
  auto made = std::make_unique<Primitive>();
  if (!make(made.get())) return nullptr;
  return cache.emplace(key, std::move(made)).first->second.get();
}

bool AddArgument(Primitive *p, int argument, const_dnnl_memory_desc_t desc) {
  dnnl_memory_t memory = nullptr;
  if (!Ok(dnnl_memory_create(&memory, desc, Context::Get().engine, DNNL_MEMORY_NONE))) return false;
  p->arguments.emplace_back(argument, memory);
  return true;
}

bool Execute(Primitive *p, const std::vector<void *> &data) {
  std::vector<dnnl_exec_arg_t> arguments;
  for (size_t i = 0; i < p->arguments.size(); ++i) {
    if (!Ok(dnnl_memory_set_data_handle(p->arguments[i].second, data[i]))) return false;
    arguments.push_back({p->arguments[i].first, p->arguments[i].second});
  }
  Context &context = Context::Get();
  return Ok(dnnl_primitive_execute(p->primitive, context.stream, static_cast<int>(arguments.size()),
                                   arguments.data())) &&
         Ok(dnnl_stream_wait(context.stream));
}

// ---- convolution + bias + ReLU ----

using ConvKey = std::array<int64_t, 7>;  // n, h, w, c, oc, k, stride

bool MakeConv(const ConvKey &key, Primitive *p) {
  const auto [n, h, w, c, oc, k, stride] = key;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  dnnl_memory_desc_t src = Describe({n, c, h, w}, dnnl_nhwc);
  dnnl_memory_desc_t weights = Describe({oc, c, k, k}, dnnl_format_tag_any);
  dnnl_memory_desc_t bias = Describe({oc}, dnnl_a);
  dnnl_memory_desc_t dst = Describe({n, oc, rows.out, cols.out}, dnnl_nhwc);
  dnnl_post_ops_t post_ops = nullptr;
  dnnl_primitive_attr_t attr = nullptr;
  const dnnl_dims_t strides = {stride, stride}, dilation = {0, 0};
  const dnnl_dims_t before = {rows.before, cols.before}, after = {rows.after, cols.after};
  bool ok = src && weights && bias && dst && Ok(dnnl_post_ops_create(&post_ops)) &&
            Ok(dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_relu, 0.0f, 0.0f)) &&
            Ok(dnnl_primitive_attr_create(&attr)) && Ok(dnnl_primitive_attr_set_post_ops(attr, post_ops)) &&
            Ok(dnnl_convolution_forward_primitive_desc_create(&p->desc, Context::Get().engine, dnnl_forward_inference,
                                                              dnnl_convolution_direct, src, weights, bias, dst, strides,
                                                              dilation, before, after, attr)) &&
            Ok(dnnl_primitive_create(&p->primitive, p->desc));
  if (ok) {
    p->weights = dnnl_primitive_desc_query_md(p->desc, dnnl_query_weights_md, 0);
    ok = AddArgument(p, DNNL_ARG_SRC, src) && AddArgument(p, DNNL_ARG_WEIGHTS, p->weights) &&
         AddArgument(p, DNNL_ARG_BIAS, bias) && AddArgument(p, DNNL_ARG_DST, dst);
  }
  for (dnnl_memory_desc_t desc : {src, weights, bias, dst}) dnnl_memory_desc_destroy(desc);
  dnnl_primitive_attr_destroy(attr);
  dnnl_post_ops_destroy(post_ops);
  return ok;
}

// A filter in the layout its primitive chose, and the values (OIHW) it was reordered from.
struct Reordered {
  std::vector<float> from;
  dnnl_memory_t memory = nullptr;
};

constexpr int64_t kReorderedFilterValues = 1 << 26;  // bound on the filters kept (values of the originals)

// The filter `w` of the cell named `token` in the layout of `p`: reordered on the first call and
// whenever its values differ from those it was last reordered from. Past kReorderedFilterValues
// (networks built and dropped in one process leave their filters behind) the cache starts over;
// calls are serialised, so no call is using a filter then.
dnnl_memory_t ReorderedFilter(int64_t token, const ConvKey &key, const float *w, const Primitive *p) {
  static std::map<std::pair<int64_t, ConvKey>, Reordered> cache;
  static int64_t cached_values = 0;
  const int64_t values = key[4] * key[3] * key[5] * key[5];
  if (cache.count({token, key}) == 0) {
    if (cached_values + values > kReorderedFilterValues) {
      for (auto &kept : cache) dnnl_memory_destroy(kept.second.memory);
      cache.clear();
      cached_values = 0;
    }
    cached_values += values;
  }
  Reordered &entry = cache[{token, key}];
  if (entry.memory != nullptr && static_cast<int64_t>(entry.from.size()) == values && SameValues(entry.from, w)) {
    return entry.memory;
  }
  Context &context = Context::Get();
  dnnl_memory_desc_t plain = Describe({key[4], key[3], key[5], key[5]}, dnnl_oihw);
  dnnl_memory_t source = nullptr;
  dnnl_primitive_desc_t reorder_desc = nullptr;
  dnnl_primitive_t reorder = nullptr;
  if (entry.memory == nullptr && !Ok(dnnl_memory_create(&entry.memory, p->weights, context.engine,
                                                        DNNL_MEMORY_ALLOCATE))) {
    entry.memory = nullptr;
  }
  bool ok = entry.memory != nullptr && plain != nullptr &&
            Ok(dnnl_memory_create(&source, plain, context.engine, const_cast<float *>(w))) &&
            Ok(dnnl_reorder_primitive_desc_create(&reorder_desc, plain, context.engine, p->weights, context.engine,
                                                  nullptr)) &&
            Ok(dnnl_primitive_create(&reorder, reorder_desc));
  if (ok) {
    dnnl_exec_arg_t arguments[2] = {{DNNL_ARG_FROM, source}, {DNNL_ARG_TO, entry.memory}};
    ok = Ok(dnnl_primitive_execute(reorder, context.stream, 2, arguments)) && Ok(dnnl_stream_wait(context.stream));
  }
  dnnl_primitive_destroy(reorder);
  dnnl_primitive_desc_destroy(reorder_desc);
  dnnl_memory_destroy(source);
  dnnl_memory_desc_destroy(plain);
  if (!ok) {
    entry.from.clear();
    return nullptr;
  }
  entry.from.assign(w, w + values);
  return entry.memory;
}

// ---- max pooling ----

using PoolKey = std::array<int64_t, 6>;  // n, h, w, c, kernel, stride

bool MakePool(const PoolKey &key, Primitive *p) {
  const auto [n, h, w, c, k, stride] = key;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  dnnl_memory_desc_t src = Describe({n, c, h, w}, dnnl_nhwc);
  dnnl_memory_desc_t dst = Describe({n, c, rows.out, cols.out}, dnnl_nhwc);
  const dnnl_dims_t strides = {stride, stride}, kernel = {k, k}, dilation = {0, 0};
  const dnnl_dims_t before = {rows.before, cols.before}, after = {rows.after, cols.after};
  // Max pooling in oneDNN leaves the padding out of every window, as MindSpore's 'same' pooling does.
  const bool ok = src && dst &&
                  Ok(dnnl_pooling_forward_primitive_desc_create(&p->desc, Context::Get().engine, dnnl_forward_inference,
                                                                dnnl_pooling_max, src, dst, strides, kernel, dilation,
                                                                before, after, nullptr)) &&
                  Ok(dnnl_primitive_create(&p->primitive, p->desc)) && AddArgument(p, DNNL_ARG_SRC, src) &&
                  AddArgument(p, DNNL_ARG_DST, dst);
  dnnl_memory_desc_destroy(src);
  dnnl_memory_desc_destroy(dst);
  return ok;
}

bool NhwcShape(int ndim, const int64_t *shape) { return ndim == 4 && shape[0] > 0 && shape[1] > 0 && shape[2] > 0; }

}  // namespace

extern "C" {

// The file oneDNN's functions were bound to in this library, and its version (for the tests).
const char *OneDnnLibrary() {
  Dl_info info{};
  return dladdr(reinterpret_cast<void *>(&dnnl_primitive_execute), &info) != 0 ? info.dli_fname : "";
}

int ChannelsLastVersion(int nparam, void **params, int *, int64_t **, const char **dtypes, void *, void *) {
  if (nparam != 2) return 1;
  if (!IsFloat32(dtypes[1])) return 2;
  const dnnl_version_t *version = dnnl_version();
  auto *out = static_cast<float *>(params[1]);
  out[0] = static_cast<float>(version->major);
  out[1] = static_cast<float>(version->minor);
  out[2] = static_cast<float>(version->patch);
  return 0;
}

int ConvBiasReluNhwc(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  for (int i : {0, 1, 2, 4}) {
    if (!IsFloat32(dtypes[i])) return 2;
  }
  const int64_t *x = shapes[0], *w = shapes[1];
  if (!NhwcShape(ndims[0], x) || ndims[1] != 4 || w[1] != x[3] || w[2] != w[3] || w[2] % 2 != 1 || ndims[2] != 1 ||
      shapes[2][0] != w[0] || shapes[3][0] != 2) {
    return 3;
  }
  const auto *spec = static_cast<const int64_t *>(params[3]);
  const ConvKey key{x[0], x[1], x[2], x[3], w[0], w[2], spec[1]};
  const SamePadding rows(x[1], w[2], spec[1]), cols(x[2], w[2], spec[1]);
  const int64_t *y = shapes[4];
  if (spec[1] < 1 || y[0] != x[0] || y[1] != rows.out || y[2] != cols.out || y[3] != w[0]) return 3;
  Context &context = Context::Get();
  std::lock_guard<std::mutex> lock(context.mutex);
  static std::map<ConvKey, std::unique_ptr<Primitive>> primitives;
  Primitive *p = context.ok ? Cached(primitives, key, [&](Primitive *made) { return MakeConv(key, made); }) : nullptr;
  dnnl_memory_t filter = p ? ReorderedFilter(spec[0], key, static_cast<const float *>(params[1]), p) : nullptr;
  void *filter_data = nullptr;
  if (filter == nullptr || !Ok(dnnl_memory_get_data_handle(filter, &filter_data))) return 4;
  return Execute(p, {params[0], filter_data, params[2], params[4]}) ? 0 : 4;
}

int MaxPoolNhwc(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[2])) return 2;
  const int64_t *x = shapes[0], *y = shapes[2];
  if (!NhwcShape(ndims[0], x) || shapes[1][0] != 2) return 3;
  const auto *spec = static_cast<const int64_t *>(params[1]);
  const PoolKey key{x[0], x[1], x[2], x[3], spec[0], spec[1]};
  const SamePadding rows(x[1], spec[0], spec[1]), cols(x[2], spec[0], spec[1]);
  if (spec[0] < 1 || spec[1] < 1 || y[0] != x[0] || y[1] != rows.out || y[2] != cols.out || y[3] != x[3]) return 3;
  Context &context = Context::Get();
  std::lock_guard<std::mutex> lock(context.mutex);
  static std::map<PoolKey, std::unique_ptr<Primitive>> primitives;
  Primitive *p = context.ok ? Cached(primitives, key, [&](Primitive *made) { return MakePool(key, made); }) : nullptr;
  return p != nullptr && Execute(p, {params[0], params[2]}) ? 0 : 4;
}

}  // extern "C"
