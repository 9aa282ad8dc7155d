/**
 * Offline GoogleNet inference: runs an exported model over preprocessed CIFAR-10 .bin files or
 * ImageNet JPEGs and writes result_Files/<input name>_<output index>.bin (raw float32 logits,
 * one row per image) and an average latency in time_Result/.
 *
 *   main --model_path=googlenet.mindir --dataset=cifar10 --dataset_path=preprocess_Result/00_data
 */
#include <gflags/gflags.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "inc/backend.h"
#include "inc/utils.h"

DEFINE_string(model_path, "", "exported model: MindIR (MindSpore backend) or ONNX (OpenVINO backend)");
DEFINE_string(dataset, "cifar10", "cifar10 (float32 .bin files from preprocess.py) or imagenet (JPEG files)");
DEFINE_string(dataset_path, "", "folder of the inputs (imagenet: searched recursively)");
DEFINE_int32(device_id, 0, "device id (Ascend)");
DEFINE_int32(resize, 0, "imagenet: shorter side before the centre crop; 0 = round(crop height * 256 / 224)");
DEFINE_string(result_path, "./result_Files", "folder for <input name>_<output index>.bin");
DEFINE_string(time_path, "./time_Result", "folder for the latency summary");
DEFINE_string(input_dump_path, "", "if set, also write each preprocessed input batch there (for checks)");

namespace {

struct InputBatch {
  std::vector<std::string> names;  // one result name per image of the batch
  std::vector<float> data;         // images in NCHW order, names.size() of them
};

struct Timing {
  double total_ms = 0;
  size_t batches = 0;
  size_t images = 0;
};

void CheckFlags() {
  if (FLAGS_model_path.empty() || FLAGS_dataset_path.empty()) {
    throw std::invalid_argument("--model_path and --dataset_path are required; run with --help for the flags");
  }
  if (FLAGS_dataset != "cifar10" && FLAGS_dataset != "imagenet") {
    throw std::invalid_argument("--dataset=" + FLAGS_dataset + " is not supported; expected cifar10 or imagenet");
  }
  if (FLAGS_device_id < 0 || FLAGS_resize < 0) {
    throw std::invalid_argument("--device_id and --resize must be >= 0");
  }
  std::ifstream model(FLAGS_model_path);
  if (!model) {
    throw std::invalid_argument("--model_path=" + FLAGS_model_path + ": no such file");
  }
}

// CIFAR-10: every .bin file from preprocess.py is one batch of whole images.
std::vector<InputBatch> ReadCifarBatches(size_t image_values, size_t max_batch) {
  std::vector<InputBatch> batches;
  for (const auto &file : ListFiles(FLAGS_dataset_path, {".bin"}, false)) {
    InputBatch batch;
    batch.data = ReadFloatFile(file);
    const size_t images = batch.data.size() / image_values;
    if (images == 0 || images * image_values != batch.data.size() || images > max_batch) {
      throw std::runtime_error(file + ": " + std::to_string(batch.data.size()) + " float32 values, expected 1 to " +
                               std::to_string(max_batch) + " images of " + std::to_string(image_values) +
                               " values (the model's input); preprocess with the model's image size and batch");
    }
    batch.names.assign(images, FileStem(file));
    batches.push_back(std::move(batch));
  }
  return batches;
}

// ImageNet: JPEGs decoded and transformed here, grouped into batches of the model's batch size.
std::vector<InputBatch> ReadImageNetBatches(int height, int width, size_t batch_size) {
  const int resize = FLAGS_resize > 0 ? FLAGS_resize : DefaultResize(height);
  std::vector<InputBatch> batches;
  for (const auto &file : ListFiles(FLAGS_dataset_path, {".jpeg", ".jpg", ".png"}, true)) {
    if (batches.empty() || batches.back().names.size() == batch_size) batches.emplace_back();
    LoadImageNetImage(file, resize, height, width, &batches.back().data);
    batches.back().names.push_back(FileStem(file));
  }
  return batches;
}

// Results are named after the image file, so two images of one name in different folders would clash.
void CheckUniqueNames(const std::vector<InputBatch> &batches) {
  std::vector<std::string> names;
  for (const auto &batch : batches) names.insert(names.end(), batch.names.begin(), batch.names.end());
  std::sort(names.begin(), names.end());
  auto repeated = std::adjacent_find(names.begin(), names.end());
  if (repeated != names.end()) {
    throw std::runtime_error("two images named " + *repeated + ".* under " + FLAGS_dataset_path +
                             "; result files are named after the image, so names must be unique");
  }
}

// CIFAR-10 results keep the input file's name; ImageNet results are one file per image.
void WriteResults(const InputBatch &batch, const std::vector<std::vector<float>> &outputs, size_t model_batch) {
  for (size_t output = 0; output < outputs.size(); ++output) {
    const size_t row = outputs[output].size() / model_batch;
    if (FLAGS_dataset == "cifar10") {
      WriteFloatFile(FLAGS_result_path + "/" + batch.names[0] + "_" + std::to_string(output) + ".bin",
                     outputs[output].data(), row * batch.names.size());
      continue;
    }
    for (size_t i = 0; i < batch.names.size(); ++i) {
      WriteFloatFile(FLAGS_result_path + "/" + batch.names[i] + "_" + std::to_string(output) + ".bin",
                     outputs[output].data() + i * row, row);
    }
  }
}

void WriteTiming(const Timing &timing) {
  MakeDirs(FLAGS_time_path);
  const double per_batch = timing.total_ms / static_cast<double>(std::max<size_t>(timing.batches, 1));
  const double per_image = timing.total_ms / static_cast<double>(std::max<size_t>(timing.images, 1));
  std::ofstream out(FLAGS_time_path + "/test_perform_static.txt", std::ios::trunc);
  out << "NN inference cost average time: " << per_batch << " ms of infer_count " << timing.batches << "\n"
      << "per image: " << per_image << " ms over " << timing.images << " images\n";
  std::printf("NN inference cost average time: %.3f ms of infer_count %zu (%.3f ms per image, %zu images)\n",
              per_batch, timing.batches, per_image, timing.images);
}

void Run() {
  CheckFlags();
  // 1. Load the model.
  auto backend = CreateBackend(FLAGS_model_path, static_cast<uint32_t>(FLAGS_device_id));
  const std::vector<int64_t> shape = backend->InputShape();
  if (shape.size() != 4 || shape[0] < 1 || shape[1] != 3) {
    throw std::runtime_error("the model's input is not N x 3 x H x W");
  }
  const size_t model_batch = static_cast<size_t>(shape[0]);
  const size_t image_values = static_cast<size_t>(shape[1] * shape[2] * shape[3]);
  std::printf("%s, input %lldx%lldx%lldx%lld\n", backend->Describe().c_str(), static_cast<long long>(shape[0]),
              static_cast<long long>(shape[1]), static_cast<long long>(shape[2]), static_cast<long long>(shape[3]));

  // 2. Read and preprocess every input.
  const std::vector<InputBatch> batches =
      FLAGS_dataset == "cifar10" ? ReadCifarBatches(image_values, model_batch)
                                 : ReadImageNetBatches(static_cast<int>(shape[2]), static_cast<int>(shape[3]),
                                                       model_batch);
  if (batches.empty()) {
    throw std::runtime_error("no " + std::string(FLAGS_dataset == "cifar10" ? ".bin" : "image") + " files in " +
                             FLAGS_dataset_path);
  }
  if (FLAGS_dataset == "imagenet") CheckUniqueNames(batches);
  MakeDirs(FLAGS_result_path);
  if (!FLAGS_input_dump_path.empty()) MakeDirs(FLAGS_input_dump_path);

  // 3. Infer batch by batch (a short last batch is padded with zeros), timing the runtime only.
  Timing timing;
  std::vector<float> input(model_batch * image_values);
  for (const auto &batch : batches) {
    std::fill(std::copy(batch.data.begin(), batch.data.end(), input.begin()), input.end(), 0.0f);
    if (!FLAGS_input_dump_path.empty()) {
      WriteFloatFile(FLAGS_input_dump_path + "/" + batch.names[0] + ".bin", batch.data.data(), batch.data.size());
    }
    const auto start = std::chrono::steady_clock::now();
    const auto outputs = backend->Run(input);
    timing.total_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    timing.batches += 1;
    timing.images += batch.names.size();
    WriteResults(batch, outputs, model_batch);
  }
  // 4. Latency summary.
  WriteTiming(timing);
}

}  // namespace

int main(int argc, char **argv) {
  gflags::SetUsageMessage("offline GoogleNet inference; see README.md, section Offline inference");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  try {
    Run();
  } catch (const std::exception &error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
