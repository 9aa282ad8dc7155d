/**
 * One interface over the inference runtimes; the build links exactly one implementation:
 * src/backend_mindspore.cc (MindSpore C++ API, MindIR on Ascend 310) or
 * src/backend_openvino.cc (OpenVINO on CPU, ONNX).
 */
#ifndef GOOGLENET_INFER_BACKEND_H_
#define GOOGLENET_INFER_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

class Backend {
 public:
  virtual ~Backend() = default;
  /** Shape of the model's (single) input, NCHW with a fixed batch N. */
  virtual std::vector<int64_t> InputShape() const = 0;
  /** Run one batch: `input` holds N*C*H*W float32 values; returns each output as float32 values. */
  virtual std::vector<std::vector<float>> Run(const std::vector<float> &input) = 0;
  /** Runtime and device, for the log. */
  virtual std::string Describe() const = 0;
};

/** Load `model_path` on the backend this binary was built with; throws std::runtime_error on failure. */
std::unique_ptr<Backend> CreateBackend(const std::string &model_path, uint32_t device_id);

#endif  // GOOGLENET_INFER_BACKEND_H_
