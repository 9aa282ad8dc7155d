// Convolutions and max pools on oneDNN for MindSpore's CPU backend, loaded through
// ops.Custom(func_type="aot"): for training on channels-last (NHWC) activations, forward and backward,
// convolution with BatchNorm and ReLU (src/cpu_kernels/channels_last.py); for folded inference on
// oneDNN's channel-blocked layout, convolution with bias and ReLU, and whole Inceptions
// (src/cpu_kernels/blocked.py).
//
// Which oneDNN: MindSpore's own lib/libdnnl.so.3 (3.10.1, already loaded in every MindSpore process),
// compiled against the headers of PyPI's onednn-devel 2025.3.0 (oneDNN 3.9.1: oneDNN keeps its C API
// backward compatible within a major version, so a 3.10 library serves them) and linked to MindSpore's
// file (src/cpu_kernels/build.py). OneDnnLibrary() names the file the symbols were bound to; the tests
// check it is MindSpore's. That library is built with oneDNN's threadpool runtime: primitives run on a
// stream that carries a threadpool, here the kernels' own workers (workers.h).
//
// The inference convolution lets oneDNN choose its weights' layout (format_tag::any) and fuses bias
// and ReLU (the folded BatchNorm's shift, then ReLU as a post-op); its primitive is made once per
// shape, its weights reordered into the chosen layout on a filter's first call and kept with a copy
// of the values they came from (reordered again when the filter changes, as in conv.cc's PackedOnce).
// The training primitives are made once per shape too; their filters change every step and are
// reordered on every call.
//
// Entry points (the AOT calling convention: inputs then outputs in params), b = BlockedChannels():
//   ConvBiasReluBlocked(x[N,C/b,H,W,b] or the image x[N,C,H,W], w[OC,C,K,K], bias[OC], spec[2] int64 =
//     {token, stride}) -> y[N,OC/b,ceil(H/s),ceil(W/s),b] = relu(conv(x, w) + bias), 'same' padding
//   MaxPoolBlocked(x[N,C/b,H,W,b], spec[2] int64 = {kernel, stride}) -> y[N,C/b,ceil(H/s),ceil(W/s),b]
//   InceptionBlocked(x, six filters and biases, tokens[6]) -> y (described where it is defined)
//   ChannelsLastVersion(x[1]) -> v[3] (major, minor, patch of the oneDNN library in use)
// and for training, with spec[2] int64 = {stride, input gradient wanted}:
//   ConvNhwc(x, w, spec) -> z; ConvNhwcGrad(dz, x, w, spec) -> dx, dw
//   ConvBatchNormReluNhwcTrain(x, w, gamma, beta, moving mean, moving variance, settings, spec)
//     -> y, z, batch mean, batch variance; ConvBatchNormReluNhwcGrad(...) -> dx, dw, dgamma, dbeta
//   MaxPoolNhwcTrain(x, {kernel, stride}) -> y, workspace; MaxPoolNhwcGrad(dy, workspace, x, spec) -> dx
// (each described where it is defined).
// Return codes: 0 success, 1 argument count, 2 dtype, 3 shape, 4 a oneDNN call failed.

#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_threadpool.h>
#include <oneapi/dnnl/dnnl_threadpool_iface.hpp>

#include <array>
#include <cstdint>
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

// A primitive made for one shape, with its memory objects (data pointers set per call). Its handles
// are released with it: that happens only when making it failed part way, since the ones made are kept
// for the life of the process (Kept).
struct Primitive {
  dnnl_primitive_desc_t desc = nullptr;
  dnnl_primitive_t primitive = nullptr;
  std::vector<std::pair<int, dnnl_memory_t>> arguments;  // DNNL_ARG_* and its memory
  const_dnnl_memory_desc_t weights = nullptr;            // the layout oneDNN chose for the weights

  Primitive() = default;
  Primitive(const Primitive &) = delete;
  Primitive &operator=(const Primitive &) = delete;
  ~Primitive() {
    for (const auto &argument : arguments) dnnl_memory_destroy(argument.second);
    dnnl_primitive_destroy(primitive);
    dnnl_primitive_desc_destroy(desc);
  }
};

// The primitives made, per shape. Each cache is made once and never destroyed: the kernels may run until
// the process exits, and oneDNN's own state may be gone before static objects are destroyed.
template <typename Key, typename Value>
using Kept = std::map<Key, std::unique_ptr<Value>>;

// Makes the primitive(s) for `key` once (`make` fills them; false: oneDNN refused, and what was made
// is released) and keeps them.
template <typename Key, typename Value, typename Make>
Value *Cached(Kept<Key, Value> &cache, const Key &key, Make make) {
  auto found = cache.find(key);
  if (found != cache.end()) return found->second.get();
  auto made = std::make_unique<Value>();
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

// ---- inference: convolution + bias + ReLU ----

// Activations in oneDNN's channel-blocked layout (nChw16c where oneDNN may use AVX-512, else nChw8c):
// channels in groups of Block(), each group a plane of Block()-value vectors. oneDNN's convolutions read
// and write a channel range of such a tensor in place when the range starts on a group, which NHWC
// does not allow them (a strided NHWC destination runs a reference kernel): so an Inception's four
// branches write straight into its output, and nothing concatenates.
int64_t Block() {
  static const int64_t block =
      (dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? 16 : 8;
  return block;
}

dnnl_format_tag_t BlockedTag() { return Block() == 16 ? dnnl_nChw16c : dnnl_nChw8c; }

// n, h, w, c, oc, k, stride; the source's layout (a dnnl_format_tag_t: the blocked layout, or NCHW for
// the image); the (blocked) destination's channels and where this convolution's oc channels start in them.
using ConvKey = std::array<int64_t, 10>;

ConvKey BlockedConv(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc, int64_t k, int64_t stride,
                    dnnl_format_tag_t source, int64_t total, int64_t offset) {
  return {n, h, w, c, oc, k, stride, source, total, offset};
}

bool MakeConv(const ConvKey &key, Primitive *p) {
  const auto [n, h, w, c, oc, k, stride, source, total, offset] = key;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  dnnl_memory_desc_t src = Describe({n, c, h, w}, static_cast<dnnl_format_tag_t>(source));
  dnnl_memory_desc_t weights = Describe({oc, c, k, k}, dnnl_format_tag_any);
  dnnl_memory_desc_t bias = Describe({oc}, dnnl_a);
  dnnl_memory_desc_t whole = Describe({n, total, rows.out, cols.out}, BlockedTag());
  dnnl_memory_desc_t part_of_whole = nullptr;  // the channels [offset, offset + oc) when that is not all of them
  const dnnl_dims_t part = {n, oc, rows.out, cols.out}, at = {0, offset, 0, 0};
  dnnl_post_ops_t post_ops = nullptr;
  dnnl_primitive_attr_t attr = nullptr;
  const dnnl_dims_t strides = {stride, stride}, dilation = {0, 0};
  const dnnl_dims_t before = {rows.before, cols.before}, after = {rows.after, cols.after};
  bool ok = src && weights && bias && whole &&
            (total == oc || Ok(dnnl_memory_desc_create_submemory(&part_of_whole, whole, part, at)));
  const_dnnl_memory_desc_t dst = part_of_whole != nullptr ? part_of_whole : whole;
  ok = ok && Ok(dnnl_post_ops_create(&post_ops)) &&
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
  for (dnnl_memory_desc_t desc : {src, weights, bias, whole, part_of_whole}) dnnl_memory_desc_destroy(desc);
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
  static auto &cache = *new std::map<std::pair<int64_t, ConvKey>, Reordered>();
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

// ---- inference: max pooling ----

using PoolKey = std::array<int64_t, 6>;  // n, h, w, c, kernel, stride

bool MakePool(const PoolKey &key, Primitive *p) {
  const auto [n, h, w, c, k, stride] = key;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  dnnl_memory_desc_t src = Describe({n, c, h, w}, BlockedTag());
  dnnl_memory_desc_t dst = Describe({n, c, rows.out, cols.out}, BlockedTag());
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

// Whether w is an OIHW filter (square, odd) of c input channels.
bool FilterFits(int w_ndim, const int64_t *w, int64_t c) {
  return w_ndim == 4 && w[1] == c && w[2] == w[3] && w[2] % 2 == 1;
}

// Whether NHWC x and the OIHW filter w fit one convolution.
bool ConvShapes(int x_ndim, const int64_t *x, int w_ndim, const int64_t *w) {
  return NhwcShape(x_ndim, x) && FilterFits(w_ndim, w, x[3]);
}

// A settings or spec input: two values.
bool Pair(int ndim, const int64_t *shape) { return ndim == 1 && shape[0] == 2; }

// Whether y is the NHWC output of a 'same' convolution of x (NHWC) with filter w (OIHW) and `stride`.
bool ConvOutputShape(const int64_t *x, const int64_t *w, int64_t stride, const int64_t *y) {
  const SamePadding rows(x[1], w[2], stride), cols(x[2], w[2], stride);
  return y[0] == x[0] && y[1] == rows.out && y[2] == cols.out && y[3] == w[0];
}

// The pooling of NHWC x (argument ix) with spec {kernel, stride} (argument ispec) into y (argument iy,
// its 'same' output), in *key; false when a shape or the spec is wrong.
bool PoolShapes(void **params, const int *ndims, int64_t *const *shapes, int ix, int ispec, int iy, PoolKey *key) {
  const int64_t *x = shapes[ix], *y = shapes[iy];
  if (!NhwcShape(ndims[ix], x) || !Pair(ndims[ispec], shapes[ispec]) || ndims[iy] != 4) return false;
  const auto *spec = static_cast<const int64_t *>(params[ispec]);
  if (spec[0] < 1 || spec[1] < 1) return false;
  *key = {x[0], x[1], x[2], x[3], spec[0], spec[1]};
  const SamePadding rows(x[1], spec[0], spec[1]), cols(x[2], spec[0], spec[1]);
  return y[0] == x[0] && y[1] == rows.out && y[2] == cols.out && y[3] == x[3];
}

// ---- inference in the blocked layout ----

// Whether x is a blocked activation, [N, C / Block(), H, W, Block()].
bool BlockedShape(int ndim, const int64_t *x) {
  return ndim == 5 && x[0] > 0 && x[1] > 0 && x[2] > 0 && x[3] > 0 && x[4] == Block();
}

// Whether y is the blocked tensor [n, c / Block(), h, w, Block()].
bool IsBlocked(int ndim, const int64_t *y, int64_t n, int64_t c, int64_t h, int64_t w) {
  return ndim == 5 && c % Block() == 0 && y[0] == n && y[1] == c / Block() && y[2] == h && y[3] == w &&
         y[4] == Block();
}

// Whether w (OIHW, square, odd) and bias fit a convolution of c input channels.
bool FilterShapes(int w_ndim, const int64_t *w, int bias_ndim, const int64_t *bias, int64_t c) {
  return FilterFits(w_ndim, w, c) && bias_ndim == 1 && bias[0] == w[0];
}

Primitive *ConvPrimitive(const ConvKey &key) {
  static auto &primitives = *new Kept<ConvKey, Primitive>();
  return Context::Get().ok ? Cached(primitives, key, [&](Primitive *made) { return MakeConv(key, made); }) : nullptr;
}

// relu(conv(x, w) + bias) into y by the primitive for `key`, with the filter kept under `token`.
// The caller holds the context's lock.
bool RunConv(const ConvKey &key, int64_t token, const void *x, const float *w, const void *bias, void *y) {
  Primitive *p = ConvPrimitive(key);
  dnnl_memory_t filter = p != nullptr ? ReorderedFilter(token, key, w, p) : nullptr;
  void *filter_data = nullptr;
  return filter != nullptr && Ok(dnnl_memory_get_data_handle(filter, &filter_data)) &&
         Execute(p, {const_cast<void *>(x), filter_data, const_cast<void *>(bias), y});
}

// Max pooling of blocked x into y. The caller holds the context's lock.
bool RunBlockedPool(const PoolKey &key, const void *x, void *y) {
  static auto &primitives = *new Kept<PoolKey, Primitive>();
  Primitive *p = Context::Get().ok ? Cached(primitives, key, [&](Primitive *made) { return MakePool(key, made); })
                                   : nullptr;
  return p != nullptr && Execute(p, {const_cast<void *>(x), y});
}

// Room for an Inception's intermediate tensors: grown to the largest asked for, 64-byte aligned. The
// caller holds the context's lock.
float *Scratch(int64_t values) {
  static auto &scratch = *new std::vector<float>();
  constexpr int64_t kAlign = 16;  // values: 64 bytes
  if (static_cast<int64_t>(scratch.size()) < values + kAlign) scratch.resize(values + kAlign);
  const auto address = reinterpret_cast<uintptr_t>(scratch.data());
  return scratch.data() + (kAlign - address / sizeof(float) % kAlign) % kAlign;
}

// Values of a dense blocked tensor of c channels (the last group filled up).
int64_t BlockedValues(int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * ((c + Block() - 1) / Block()) * Block() * h * w;
}

// ---- training: convolution (+ BatchNorm + ReLU) and max pooling with their gradients ----
// The filters change every step, so they are reordered into the layouts oneDNN chose on every call
// (forward and backward-data layouts may differ) and the filter gradient back into OIHW.

using TrainConvKey = std::array<int64_t, 6>;  // n, h, w, c, oc, k; stride in the last place below
using TrainKey = std::pair<TrainConvKey, int64_t>;

// All primitives of one training convolution shape, and the memory for the filters in their layouts.
struct TrainConv {
  Primitive forward, backward_data, backward_weights;
  Primitive to_forward, to_backward_data, from_diff_weights;  // reorders of the filter and its gradient
  dnnl_memory_t forward_weights = nullptr, backward_data_weights = nullptr, diff_weights = nullptr;

  TrainConv() = default;
  TrainConv(const TrainConv &) = delete;
  TrainConv &operator=(const TrainConv &) = delete;
  ~TrainConv() {
    for (dnnl_memory_t memory : {forward_weights, backward_data_weights, diff_weights}) dnnl_memory_destroy(memory);
  }
};

bool MakeReorder(Primitive *p, const_dnnl_memory_desc_t from, const_dnnl_memory_desc_t to) {
  Context &context = Context::Get();
  return Ok(dnnl_reorder_primitive_desc_create(&p->desc, from, context.engine, to, context.engine, nullptr)) &&
         Ok(dnnl_primitive_create(&p->primitive, p->desc)) && AddArgument(p, DNNL_ARG_FROM, from) &&
         AddArgument(p, DNNL_ARG_TO, to);
}

bool Allocate(dnnl_memory_t *memory, const_dnnl_memory_desc_t desc) {
  return Ok(dnnl_memory_create(memory, desc, Context::Get().engine, DNNL_MEMORY_ALLOCATE));
}

void *Data(dnnl_memory_t memory) {
  void *data = nullptr;
  dnnl_memory_get_data_handle(memory, &data);
  return data;
}

bool MakeTrainConv(const TrainKey &key, TrainConv *t) {
  const auto [n, h, w, c, oc, k] = key.first;
  const int64_t stride = key.second;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  const dnnl_engine_t engine = Context::Get().engine;
  dnnl_memory_desc_t src = Describe({n, c, h, w}, dnnl_nhwc);
  dnnl_memory_desc_t any = Describe({oc, c, k, k}, dnnl_format_tag_any);
  dnnl_memory_desc_t plain = Describe({oc, c, k, k}, dnnl_oihw);
  dnnl_memory_desc_t dst = Describe({n, oc, rows.out, cols.out}, dnnl_nhwc);
  const dnnl_dims_t strides = {stride, stride}, dilation = {0, 0};
  const dnnl_dims_t before = {rows.before, cols.before}, after = {rows.after, cols.after};
  bool ok = src && any && plain && dst &&
            Ok(dnnl_convolution_forward_primitive_desc_create(&t->forward.desc, engine, dnnl_forward_training,
                                                              dnnl_convolution_direct, src, any, nullptr, dst, strides,
                                                              dilation, before, after, nullptr)) &&
            Ok(dnnl_convolution_backward_data_primitive_desc_create(&t->backward_data.desc, engine,
                                                                    dnnl_convolution_direct, src, any, dst, strides,
                                                                    dilation, before, after, t->forward.desc,
                                                                    nullptr)) &&
            Ok(dnnl_convolution_backward_weights_primitive_desc_create(&t->backward_weights.desc, engine,
                                                                       dnnl_convolution_direct, src, any, nullptr, dst,
                                                                       strides, dilation, before, after,
                                                                       t->forward.desc, nullptr));
  if (ok) {
    const_dnnl_memory_desc_t forward_weights = dnnl_primitive_desc_query_md(t->forward.desc, dnnl_query_weights_md, 0);
    const_dnnl_memory_desc_t data_weights =
        dnnl_primitive_desc_query_md(t->backward_data.desc, dnnl_query_weights_md, 0);
    const_dnnl_memory_desc_t diff_weights =
        dnnl_primitive_desc_query_md(t->backward_weights.desc, dnnl_query_diff_weights_md, 0);
    ok = Ok(dnnl_primitive_create(&t->forward.primitive, t->forward.desc)) &&
         Ok(dnnl_primitive_create(&t->backward_data.primitive, t->backward_data.desc)) &&
         Ok(dnnl_primitive_create(&t->backward_weights.primitive, t->backward_weights.desc)) &&
         AddArgument(&t->forward, DNNL_ARG_SRC, src) && AddArgument(&t->forward, DNNL_ARG_WEIGHTS, forward_weights) &&
         AddArgument(&t->forward, DNNL_ARG_DST, dst) &&
         AddArgument(&t->backward_data, DNNL_ARG_DIFF_DST, dst) &&
         AddArgument(&t->backward_data, DNNL_ARG_WEIGHTS, data_weights) &&
         AddArgument(&t->backward_data, DNNL_ARG_DIFF_SRC, src) &&
         AddArgument(&t->backward_weights, DNNL_ARG_SRC, src) &&
         AddArgument(&t->backward_weights, DNNL_ARG_DIFF_DST, dst) &&
         AddArgument(&t->backward_weights, DNNL_ARG_DIFF_WEIGHTS, diff_weights) &&
         MakeReorder(&t->to_forward, plain, forward_weights) && MakeReorder(&t->to_backward_data, plain, data_weights) &&
         MakeReorder(&t->from_diff_weights, diff_weights, plain) && Allocate(&t->forward_weights, forward_weights) &&
         Allocate(&t->backward_data_weights, data_weights) && Allocate(&t->diff_weights, diff_weights);
  }
  for (dnnl_memory_desc_t desc : {src, any, plain, dst}) dnnl_memory_desc_destroy(desc);
  return ok;
}

// z = conv(x, w), x and z NHWC, w OIHW.
bool ConvForward(TrainConv *t, const void *x, const void *w, void *z) {
  return Execute(&t->to_forward, {const_cast<void *>(w), Data(t->forward_weights)}) &&
         Execute(&t->forward, {const_cast<void *>(x), Data(t->forward_weights), z});
}

// dx and dw (OIHW) from dz; dx skipped when null.
bool ConvBackward(TrainConv *t, const void *dz, const void *x, const void *w, void *dx, void *dw) {
  if (dx != nullptr && !(Execute(&t->to_backward_data, {const_cast<void *>(w), Data(t->backward_data_weights)}) &&
                         Execute(&t->backward_data, {const_cast<void *>(dz), Data(t->backward_data_weights), dx}))) {
    return false;
  }
  return Execute(&t->backward_weights, {const_cast<void *>(x), const_cast<void *>(dz), Data(t->diff_weights)}) &&
         Execute(&t->from_diff_weights, {Data(t->diff_weights), dw});
}

// BatchNorm with batch statistics (scale and shift) then ReLU on NHWC z, and their gradients; one per
// shape and epsilon.
using NormKey = std::array<int64_t, 4>;  // n, h, w, c
struct TrainNorm {
  Primitive forward, relu, relu_backward, backward;
};

bool MakeTrainNorm(const NormKey &key, float epsilon, TrainNorm *t) {
  const auto [n, h, w, c] = key;
  const dnnl_engine_t engine = Context::Get().engine;
  dnnl_memory_desc_t data = Describe({n, c, h, w}, dnnl_nhwc);
  dnnl_memory_desc_t channels = Describe({c}, dnnl_a);
  const unsigned flags = dnnl_use_scale | dnnl_use_shift;
  bool ok = data && channels &&
            Ok(dnnl_batch_normalization_forward_primitive_desc_create(&t->forward.desc, engine, dnnl_forward_training,
                                                                      data, data, epsilon, flags, nullptr)) &&
            Ok(dnnl_batch_normalization_backward_primitive_desc_create(&t->backward.desc, engine, dnnl_backward, data,
                                                                       data, data, epsilon, flags, t->forward.desc,
                                                                       nullptr)) &&
            Ok(dnnl_eltwise_forward_primitive_desc_create(&t->relu.desc, engine, dnnl_forward_training,
                                                          dnnl_eltwise_relu_use_dst_for_bwd, data, data, 0.0f, 0.0f,
                                                          nullptr)) &&
            Ok(dnnl_eltwise_backward_primitive_desc_create(&t->relu_backward.desc, engine,
                                                           dnnl_eltwise_relu_use_dst_for_bwd, data, data, data, 0.0f,
                                                           0.0f, t->relu.desc, nullptr)) &&
            Ok(dnnl_primitive_create(&t->forward.primitive, t->forward.desc)) &&
            Ok(dnnl_primitive_create(&t->backward.primitive, t->backward.desc)) &&
            Ok(dnnl_primitive_create(&t->relu.primitive, t->relu.desc)) &&
            Ok(dnnl_primitive_create(&t->relu_backward.primitive, t->relu_backward.desc));
  ok = ok && AddArgument(&t->forward, DNNL_ARG_SRC, data) && AddArgument(&t->forward, DNNL_ARG_SCALE, channels) &&
       AddArgument(&t->forward, DNNL_ARG_SHIFT, channels) && AddArgument(&t->forward, DNNL_ARG_DST, data) &&
       AddArgument(&t->forward, DNNL_ARG_MEAN, channels) && AddArgument(&t->forward, DNNL_ARG_VARIANCE, channels) &&
       AddArgument(&t->relu, DNNL_ARG_SRC, data) && AddArgument(&t->relu, DNNL_ARG_DST, data) &&
       AddArgument(&t->relu_backward, DNNL_ARG_DST, data) && AddArgument(&t->relu_backward, DNNL_ARG_DIFF_DST, data) &&
       AddArgument(&t->relu_backward, DNNL_ARG_DIFF_SRC, data) && AddArgument(&t->backward, DNNL_ARG_SRC, data) &&
       AddArgument(&t->backward, DNNL_ARG_MEAN, channels) && AddArgument(&t->backward, DNNL_ARG_VARIANCE, channels) &&
       AddArgument(&t->backward, DNNL_ARG_DIFF_DST, data) && AddArgument(&t->backward, DNNL_ARG_SCALE, channels) &&
       AddArgument(&t->backward, DNNL_ARG_DIFF_SRC, data) && AddArgument(&t->backward, DNNL_ARG_DIFF_SCALE, channels) &&
       AddArgument(&t->backward, DNNL_ARG_DIFF_SHIFT, channels);
  dnnl_memory_desc_destroy(data);
  dnnl_memory_desc_destroy(channels);
  return ok;
}

// Scratch for the gradients' intermediates, grown as needed and kept (two tensors of the largest
// convolution output: about 100 MB each for conv1 at 224x224, batch 32). Calls are serialised
// (Context::mutex).
float *Scratch(int which, int64_t values) {
  static std::vector<float> buffers[2];
  if (static_cast<int64_t>(buffers[which].size()) < values) buffers[which].resize(values);
  return buffers[which].data();
}

// ---- training max pooling: the forward pass keeps the position of each maximum (oneDNN's workspace) ----

struct TrainPool {
  Primitive forward, backward;
};

bool MakeTrainPool(const PoolKey &key, TrainPool *t) {
  const auto [n, h, w, c, k, stride] = key;
  const SamePadding rows(h, k, stride), cols(w, k, stride);
  const dnnl_engine_t engine = Context::Get().engine;
  dnnl_memory_desc_t src = Describe({n, c, h, w}, dnnl_nhwc);
  dnnl_memory_desc_t dst = Describe({n, c, rows.out, cols.out}, dnnl_nhwc);
  const dnnl_dims_t strides = {stride, stride}, kernel = {k, k}, dilation = {0, 0};
  const dnnl_dims_t before = {rows.before, cols.before}, after = {rows.after, cols.after};
  bool ok = src && dst &&
            Ok(dnnl_pooling_forward_primitive_desc_create(&t->forward.desc, engine, dnnl_forward_training,
                                                          dnnl_pooling_max, src, dst, strides, kernel, dilation, before,
                                                          after, nullptr)) &&
            Ok(dnnl_pooling_backward_primitive_desc_create(&t->backward.desc, engine, dnnl_pooling_max, src, dst,
                                                           strides, kernel, dilation, before, after, t->forward.desc,
                                                           nullptr)) &&
            Ok(dnnl_primitive_create(&t->forward.primitive, t->forward.desc)) &&
            Ok(dnnl_primitive_create(&t->backward.primitive, t->backward.desc));
  if (ok) {
    // the workspace must be one byte per output value, in the output's layout (the op's second output)
    const_dnnl_memory_desc_t workspace = dnnl_primitive_desc_query_md(t->forward.desc, dnnl_query_workspace_md, 0);
    ok = workspace != nullptr && dnnl_memory_desc_get_size(workspace) == dnnl_memory_desc_get_size(dst) / sizeof(float) &&
         AddArgument(&t->forward, DNNL_ARG_SRC, src) && AddArgument(&t->forward, DNNL_ARG_DST, dst) &&
         AddArgument(&t->forward, DNNL_ARG_WORKSPACE, workspace) &&
         AddArgument(&t->backward, DNNL_ARG_DIFF_DST, dst) && AddArgument(&t->backward, DNNL_ARG_WORKSPACE, workspace) &&
         AddArgument(&t->backward, DNNL_ARG_DIFF_SRC, src);
  }
  dnnl_memory_desc_destroy(src);
  dnnl_memory_desc_destroy(dst);
  return ok;
}

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

// The number of channels in a group of the blocked layout: 16 where oneDNN may use AVX-512, else 8.
int64_t BlockedChannels() { return Block(); }

// relu(conv(x, w) + bias), 'same' padding, into blocked y[N, OC/b, ceil(H/s), ceil(W/s), b]; x blocked
// [N, C/b, H, W, b], or the NCHW image [N, C, H, W] (conv1). spec[2] int64 = {token, stride}.
int ConvBiasReluBlocked(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  for (int i : {0, 1, 2, 4}) {
    if (!IsFloat32(dtypes[i])) return 2;
  }
  const int64_t *x = shapes[0], *w = shapes[1];
  const bool image = ndims[0] == 4;
  const bool image_shape = image && x[0] > 0 && x[1] > 0 && x[2] > 0 && x[3] > 0;
  if (!(image_shape || BlockedShape(ndims[0], x)) || !Pair(ndims[3], shapes[3])) return 3;
  const int64_t n = x[0], c = image ? x[1] : x[1] * Block(), h = x[2], width = x[3];
  const auto *spec = static_cast<const int64_t *>(params[3]);
  if (!FilterShapes(ndims[1], w, ndims[2], shapes[2], c) || spec[1] < 1) return 3;
  const SamePadding rows(h, w[2], spec[1]), cols(width, w[2], spec[1]);
  if (!IsBlocked(ndims[4], shapes[4], n, w[0], rows.out, cols.out)) return 3;
  const ConvKey key = BlockedConv(n, h, width, c, w[0], w[2], spec[1], image ? dnnl_nchw : BlockedTag(), w[0], 0);
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  return RunConv(key, spec[0], params[0], static_cast<const float *>(params[1]), params[2], params[4]) ? 0 : 4;
}

// 'same' max pooling of blocked x into blocked y; spec[2] int64 = {kernel, stride}.
int MaxPoolBlocked(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 3) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[2])) return 2;
  const int64_t *x = shapes[0];
  if (!BlockedShape(ndims[0], x) || !Pair(ndims[1], shapes[1])) return 3;
  const auto *spec = static_cast<const int64_t *>(params[1]);
  if (spec[0] < 1 || spec[1] < 1) return 3;
  const SamePadding rows(x[2], spec[0], spec[1]), cols(x[3], spec[0], spec[1]);
  const int64_t c = x[1] * Block();
  if (!IsBlocked(ndims[2], shapes[2], x[0], c, rows.out, cols.out)) return 3;
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  return RunBlockedPool({x[0], x[2], x[3], c, spec[0], spec[1]}, params[0], params[2]) ? 0 : 4;
}

// An Inception (src/googlenet.py) on blocked x[N, C/b, H, W, b], each branch writing its channels of
// blocked y in place:
//   InceptionBlocked(x, w1, b1, w2r, b2r, w2, b2, w3r, b3r, w3, b3, w4, b4, tokens[6] int64)
//     -> y = [relu(conv(x, w1) + b1) | branch 2 | branch 3 | relu(conv(maxpool3x3(x), w4) + b4)],
// branch 2 being relu(conv(relu(conv(x, w2r) + b2r), w2) + b2), branch 3 likewise; stride 1, 'same'
// padding; each branch's channels a multiple of b. tokens name the six filters, in argument order.
int InceptionBlocked(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  constexpr int kConvs = 6, kTokens = 13, kY = 14;
  if (nparam != 15) return 1;
  for (int i = 0; i < nparam; ++i) {
    if (i != kTokens && !IsFloat32(dtypes[i])) return 2;
  }
  const int64_t *x = shapes[0];  // its shape; params[0] its values
  if (!BlockedShape(ndims[0], x) || ndims[kTokens] != 1 || shapes[kTokens][0] != kConvs) return 3;
  const int64_t n = x[0], c = x[1] * Block(), h = x[2], w = x[3];
  const int64_t *filter[kConvs];
  for (int i = 0; i < kConvs; ++i) filter[i] = shapes[1 + 2 * i];
  // what each convolution reads: x, or the 1x1 reduction before it
  const int64_t inputs[kConvs] = {c, c, filter[1][0], c, filter[3][0], c};
  for (int i = 0; i < kConvs; ++i) {
    if (!FilterShapes(ndims[1 + 2 * i], filter[i], ndims[2 + 2 * i], shapes[2 + 2 * i], inputs[i])) return 3;
  }
  const int64_t c1 = filter[0][0], c2 = filter[2][0], c3 = filter[4][0], c4 = filter[5][0];
  const int64_t total = c1 + c2 + c3 + c4;
  for (const int64_t branch : {c1, c2, c3, c4}) {
    if (branch % Block() != 0) return 3;
  }
  if (!IsBlocked(ndims[kY], shapes[kY], n, total, h, w)) return 3;
  const auto *tokens = static_cast<const int64_t *>(params[kTokens]);
  void *y = params[kY];
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  const int64_t reduced2 = BlockedValues(n, filter[1][0], h, w), reduced3 = BlockedValues(n, filter[3][0], h, w);
  float *reduction2 = Scratch(reduced2 + reduced3 + BlockedValues(n, c, h, w));
  float *reduction3 = reduction2 + reduced2, *pooled = reduction3 + reduced3;
  // convolution i of src (in_channels) into channels [offset, offset + its outputs) of dst (channels)
  auto conv = [&](int i, const void *src, void *dst, int64_t channels, int64_t offset) {
    const ConvKey key =
        BlockedConv(n, h, w, inputs[i], filter[i][0], filter[i][2], 1, BlockedTag(), channels, offset);
    return RunConv(key, tokens[i], src, static_cast<const float *>(params[1 + 2 * i]), params[2 + 2 * i], dst);
  };
  const void *x_values = params[0];
  const bool ok = conv(1, x_values, reduction2, filter[1][0], 0) && conv(3, x_values, reduction3, filter[3][0], 0) &&
                  RunBlockedPool({n, h, w, c, 3, 1}, x_values, pooled) && conv(0, x_values, y, total, 0) &&
                  conv(2, reduction2, y, total, c1) && conv(4, reduction3, y, total, c1 + c2) &&
                  conv(5, pooled, y, total, c1 + c2 + c3);
  return ok ? 0 : 4;
}

}  // extern "C"

// ---- training entry points ----
// spec[2] int64 = {stride, input gradient wanted (0: the gradient for x is zeros, as for conv1's image)}

namespace {

// Arguments `which` are vectors of `channels` values.
bool PerChannel(const int *ndims, int64_t *const *shapes, std::initializer_list<int> which, int64_t channels) {
  for (int i : which) {
    if (ndims[i] != 1 || shapes[i][0] != channels) return false;
  }
  return true;
}

bool Float32Params(const char **dtypes, std::initializer_list<int> which) {
  for (int i : which) {
    if (!IsFloat32(dtypes[i])) return false;
  }
  return true;
}

// The training convolution of an entry point whose input x, filter w and spec are its arguments
// number ix, iw and ispec (shapes checked), or null with *error set (3: shapes, 4: oneDNN). Called
// with Context::mutex held.
TrainConv *TrainConvFor(void **params, int *ndims, int64_t **shapes, int ix, int iw, int ispec, int *error) {
  const int64_t *x = shapes[ix], *w = shapes[iw];
  const auto *spec = static_cast<const int64_t *>(params[ispec]);
  *error = 3;
  if (!Pair(ndims[ispec], shapes[ispec]) || !ConvShapes(ndims[ix], x, ndims[iw], w) || spec[0] < 1) return nullptr;
  *error = 4;
  Context &context = Context::Get();
  if (!context.ok) return nullptr;
  static auto &primitives = *new Kept<TrainKey, TrainConv>();
  const TrainKey key{{x[0], x[1], x[2], x[3], w[0], w[2]}, spec[0]};
  return Cached(primitives, key, [&](TrainConv *made) { return MakeTrainConv(key, made); });
}

TrainNorm *TrainNormFor(const int64_t *z, float epsilon) {
  static auto &primitives = *new Kept<std::pair<NormKey, float>, TrainNorm>();
  const NormKey key{z[0], z[1], z[2], z[3]};
  return Cached(primitives, std::make_pair(key, epsilon),
                [&](TrainNorm *made) { return MakeTrainNorm(key, epsilon, made); });
}

TrainPool *TrainPoolFor(const PoolKey &key) {
  static auto &primitives = *new Kept<PoolKey, TrainPool>();
  return Cached(primitives, key, [&](TrainPool *made) { return MakeTrainPool(key, made); });
}

int64_t Values(const int64_t *shape) { return shape[0] * shape[1] * shape[2] * shape[3]; }

// dx when the spec wants it, else zeros in dx and null.
void *InputGradient(void *dx, const int64_t *x, const int64_t *spec) {
  if (spec[1] != 0) return dx;
  std::memset(dx, 0, Values(x) * sizeof(float));
  return nullptr;
}

}  // namespace

extern "C" {

// ConvNhwc(x[N,H,W,C], w[OC,C,K,K], spec) -> z[N,H',W',OC] = conv(x, w), 'same' padding
int ConvNhwc(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 4) return 1;
  if (!Float32Params(dtypes, {0, 1, 3})) return 2;
  const auto *spec = static_cast<const int64_t *>(params[2]);
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  int error = 0;
  TrainConv *t = TrainConvFor(params, ndims, shapes, 0, 1, 2, &error);
  if (t == nullptr) return error;
  if (!ConvOutputShape(shapes[0], shapes[1], spec[0], shapes[3])) return 3;
  return ConvForward(t, params[0], params[1], params[3]) ? 0 : 4;
}

// ConvNhwcGrad(dz, x, w, spec) -> dx[N,H,W,C], dw[OC,C,K,K]
int ConvNhwcGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 6) return 1;
  if (!Float32Params(dtypes, {0, 1, 2, 4, 5})) return 2;
  const auto *spec = static_cast<const int64_t *>(params[3]);
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  int error = 0;
  TrainConv *t = TrainConvFor(params, ndims, shapes, 1, 2, 3, &error);
  if (t == nullptr) return error;
  if (!ConvOutputShape(shapes[1], shapes[2], spec[0], shapes[0])) return 3;
  return ConvBackward(t, params[0], params[1], params[2], InputGradient(params[4], shapes[1], spec), params[5]) ? 0
                                                                                                                 : 4;
}

// ConvBatchNormReluNhwcTrain(x, w, gamma[OC], beta[OC], moving_mean[OC], moving_variance[OC] (both updated in
// place), settings[2] float32 = {epsilon, momentum}, spec) -> y = relu(batchnorm(z)), z = conv(x, w), the
// batch's mean[OC] and (biased) variance[OC]. The moving statistics take weight `momentum` for the batch's
// mean and unbiased variance, as MindSpore's BatchNorm does.
int ConvBatchNormReluNhwcTrain(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                               void *) {
  if (nparam != 12) return 1;
  if (!Float32Params(dtypes, {0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11})) return 2;
  if (!Pair(ndims[6], shapes[6])) return 3;
  const auto *spec = static_cast<const int64_t *>(params[7]);
  const auto *settings = static_cast<const float *>(params[6]);
  const int64_t *z_shape = shapes[9];
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  int error = 0;
  TrainConv *t = TrainConvFor(params, ndims, shapes, 0, 1, 7, &error);
  if (t == nullptr) return error;
  const int64_t channels = shapes[1][0];
  if (!PerChannel(ndims, shapes, {2, 3, 4, 5, 10, 11}, channels)) return 3;
  for (int output : {8, 9}) {  // y and z
    if (!ConvOutputShape(shapes[0], shapes[1], spec[0], shapes[output])) return 3;
  }
  TrainNorm *norm = TrainNormFor(z_shape, settings[0]);
  if (norm == nullptr) return 4;
  auto *mean = static_cast<float *>(params[10]), *variance = static_cast<float *>(params[11]);
  if (!ConvForward(t, params[0], params[1], params[9]) ||
      !Execute(&norm->forward, {params[9], params[2], params[3], params[8], mean, variance}) ||
      !Execute(&norm->relu, {params[8], params[8]})) {
    return 4;
  }
  const double per_channel = static_cast<double>(z_shape[0] * z_shape[1] * z_shape[2]);
  const double momentum = settings[1], unbiased = per_channel / std::max(per_channel - 1.0, 1.0);
  auto *moving_mean = static_cast<float *>(params[4]), *moving_variance = static_cast<float *>(params[5]);
  for (int64_t ch = 0; ch < channels; ++ch) {
    moving_mean[ch] = static_cast<float>((1.0 - momentum) * moving_mean[ch] + momentum * mean[ch]);
    moving_variance[ch] = static_cast<float>((1.0 - momentum) * moving_variance[ch] + momentum * variance[ch] * unbiased);
  }
  return 0;
}

// ConvBatchNormReluNhwcGrad(dy, x, w, z, y, gamma, mean, variance, settings, spec) -> dx, dw, dgamma, dbeta
int ConvBatchNormReluNhwcGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam != 14) return 1;
  if (!Float32Params(dtypes, {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13})) return 2;
  if (!Pair(ndims[8], shapes[8])) return 3;
  const auto *spec = static_cast<const int64_t *>(params[9]);
  const auto *settings = static_cast<const float *>(params[8]);
  const int64_t *z_shape = shapes[3];
  std::lock_guard<std::mutex> lock(Context::Get().mutex);
  int error = 0;
  TrainConv *t = TrainConvFor(params, ndims, shapes, 1, 2, 9, &error);
  if (t == nullptr) return error;
  if (!PerChannel(ndims, shapes, {5, 6, 7, 12, 13}, shapes[2][0])) return 3;
  for (int input : {0, 3, 4}) {  // dy, z and y
    if (!ConvOutputShape(shapes[1], shapes[2], spec[0], shapes[input])) return 3;
  }
  TrainNorm *norm = TrainNormFor(z_shape, settings[0]);
  if (norm == nullptr) return 4;
  float *dnormalised = Scratch(0, Values(z_shape)), *dz = Scratch(1, Values(z_shape));
  const bool ok = Execute(&norm->relu_backward, {params[4], params[0], dnormalised}) &&
                  Execute(&norm->backward, {params[3], params[6], params[7], dnormalised, params[5], dz, params[12],
                                            params[13]}) &&
                  ConvBackward(t, dz, params[1], params[2], InputGradient(params[10], shapes[1], spec), params[11]);
  return ok ? 0 : 4;
}

// MaxPoolNhwcTrain(x, spec[2] = {kernel, stride}) -> y, workspace[N,H',W',C] uint8 (where each maximum was,
// oneDNN's own encoding; only MaxPoolNhwcGrad reads it)
int MaxPoolNhwcTrain(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 4) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[2]) || std::strcmp(dtypes[3], "uint8") != 0) return 2;
  PoolKey key{};
  if (!PoolShapes(params, ndims, shapes, 0, 1, 2, &key)) return 3;
  Context &context = Context::Get();
  std::lock_guard<std::mutex> lock(context.mutex);
  TrainPool *t = context.ok ? TrainPoolFor(key) : nullptr;
  return t != nullptr && Execute(&t->forward, {params[0], params[2], params[3]}) ? 0 : 4;
}

// MaxPoolNhwcGrad(dy, workspace, x, spec) -> dx
int MaxPoolNhwcGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 5) return 1;
  if (!IsFloat32(dtypes[0]) || !IsFloat32(dtypes[4]) || std::strcmp(dtypes[1], "uint8") != 0) return 2;
  PoolKey key{};
  if (!PoolShapes(params, ndims, shapes, 2, 3, 0, &key)) return 3;  // dy has the pooling's output shape
  Context &context = Context::Get();
  std::lock_guard<std::mutex> lock(context.mutex);
  TrainPool *t = context.ok ? TrainPoolFor(key) : nullptr;
  return t != nullptr && Execute(&t->backward, {params[0], params[1], params[4]}) ? 0 : 4;
}

}  // extern "C"
