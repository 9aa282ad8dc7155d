// OpenVINO on CPU, for ONNX exports. Inference precision is forced to f32: the CPU plugin's default
// on bf16-capable CPUs is bf16, which moves GoogleNet logits by ~1e-3.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "inc/backend.h"

namespace {

class OpenVinoBackend : public Backend {
 public:
  explicit OpenVinoBackend(const std::string &model_path) {
    ov::Core core;
    const auto model = core.read_model(model_path);
    if (model->inputs().size() != 1) {
      throw std::runtime_error(model_path + ": expected a model with one input");
    }
    compiled_ = core.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32));
    request_ = compiled_.create_infer_request();
  }

  std::vector<int64_t> InputShape() const override {
    const ov::Shape shape = compiled_.input().get_shape();
    return std::vector<int64_t>(shape.begin(), shape.end());
  }

  std::vector<std::vector<float>> Run(const std::vector<float> &input) override {
    ov::Tensor tensor(ov::element::f32, compiled_.input().get_shape(), const_cast<float *>(input.data()));
    request_.set_input_tensor(tensor);
    request_.infer();
    std::vector<std::vector<float>> outputs;
    for (size_t i = 0; i < compiled_.outputs().size(); ++i) {
      const ov::Tensor output = request_.get_output_tensor(i);
      const float *data = output.data<const float>();
      outputs.emplace_back(data, data + output.get_size());
    }
    return outputs;
  }

  std::string Describe() const override { return "OpenVINO " + std::string(ov::get_openvino_version().buildNumber) +
                                                 " on CPU (f32)"; }

 private:
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};

}  // namespace

std::unique_ptr<Backend> CreateBackend(const std::string &model_path, uint32_t /*device_id*/) {
  return std::make_unique<OpenVinoBackend>(model_path);
}
