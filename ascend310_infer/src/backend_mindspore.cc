// MindSpore C++ inference API on Ascend 310: a MindIR loaded through Serialization, built on the
// Ascend310 device.
#include <stdexcept>
#include <string>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/types.h"
#include "inc/backend.h"

namespace {

class MindSporeBackend : public Backend {
 public:
  MindSporeBackend(const std::string &model_path, uint32_t device_id) : device_id_(device_id) {
    auto context = std::make_shared<mindspore::Context>();
    auto ascend310 = std::make_shared<mindspore::Ascend310DeviceInfo>();
    ascend310->SetDeviceID(device_id);
    context->MutableDeviceInfo().push_back(ascend310);

    mindspore::Graph graph;
    mindspore::Status status = mindspore::Serialization::Load(model_path, mindspore::ModelType::kMindIR, &graph);
    if (status != mindspore::kSuccess) {
      throw std::runtime_error("cannot load MindIR " + model_path + ": " + status.ToString());
    }
    status = model_.Build(mindspore::GraphCell(graph), context);
    if (status != mindspore::kSuccess) {
      throw std::runtime_error("cannot build " + model_path + " on Ascend 310 device " + std::to_string(device_id) +
                               ": " + status.ToString());
    }
    const auto inputs = model_.GetInputs();
    if (inputs.size() != 1) {
      throw std::runtime_error(model_path + ": expected a model with one input");
    }
    input_ = inputs[0];
  }

  std::vector<int64_t> InputShape() const override { return input_.Shape(); }

  std::vector<std::vector<float>> Run(const std::vector<float> &input) override {
    std::vector<mindspore::MSTensor> inputs = {
        mindspore::MSTensor(input_.Name(), mindspore::DataType::kNumberTypeFloat32, input_.Shape(), input.data(),
                            input.size() * sizeof(float))};
    std::vector<mindspore::MSTensor> outputs;
    const mindspore::Status status = model_.Predict(inputs, &outputs);
    if (status != mindspore::kSuccess) {
      throw std::runtime_error("inference failed: " + status.ToString());
    }
    std::vector<std::vector<float>> results;
    for (auto &output : outputs) {
      if (output.DataType() != mindspore::DataType::kNumberTypeFloat32) {
        throw std::runtime_error("output " + output.Name() + " is not float32");
      }
      const auto *data = static_cast<const float *>(output.Data().get());
      results.emplace_back(data, data + output.ElementNum());
    }
    return results;
  }

  std::string Describe() const override { return "MindSpore on Ascend 310 device " + std::to_string(device_id_); }

 private:
  mindspore::Model model_;
  mindspore::MSTensor input_;
  uint32_t device_id_;
};

}  // namespace

std::unique_ptr<Backend> CreateBackend(const std::string &model_path, uint32_t device_id) {
  return std::make_unique<MindSporeBackend>(model_path, device_id);
}
