#include "inc/utils.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace fs = std::filesystem;

namespace {

// ImageNet mean and standard deviation on the 0..255 scale (src/dataset.py IMAGENET_MEAN/STD x 255).
// Products taken in double and rounded once, like the float32 parameters MindSpore's Normalize receives.
constexpr float kMean[3] = {static_cast<float>(0.485 * 255), static_cast<float>(0.456 * 255),
                            static_cast<float>(0.406 * 255)};
constexpr float kStd[3] = {static_cast<float>(0.229 * 255), static_cast<float>(0.224 * 255),
                           static_cast<float>(0.225 * 255)};

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

// MindSpore's Resize(size) keeps the aspect ratio; the longer side is computed in float32 and
// truncated (checked against MindSpore 2.10 on a grid of sizes).
cv::Size ShorterSideSize(int rows, int cols, int size) {
  if (rows <= cols) {
    return cv::Size(static_cast<int>(static_cast<float>(cols) / static_cast<float>(rows) * static_cast<float>(size)),
                    size);
  }
  return cv::Size(size,
                  static_cast<int>(static_cast<float>(rows) / static_cast<float>(cols) * static_cast<float>(size)));
}

}  // namespace

std::vector<std::string> ListFiles(const std::string &dir, const std::vector<std::string> &extensions,
                                   bool recursive) {
  if (!fs::is_directory(dir)) {
    throw std::runtime_error("input folder " + dir + " does not exist");
  }
  std::vector<std::string> files;
  auto keep = [&](const fs::directory_entry &entry) {
    if (!entry.is_regular_file()) return;
    const std::string ext = Lower(entry.path().extension().string());
    if (std::find(extensions.begin(), extensions.end(), ext) != extensions.end()) {
      files.push_back(entry.path().string());
    }
  };
  if (recursive) {
    for (const auto &entry : fs::recursive_directory_iterator(dir)) keep(entry);
  } else {
    for (const auto &entry : fs::directory_iterator(dir)) keep(entry);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string FileStem(const std::string &path) { return fs::path(path).stem().string(); }

void MakeDirs(const std::string &dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw std::runtime_error("cannot create folder " + dir + ": " + error.message());
  }
}

std::vector<float> ReadFloatFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    throw std::runtime_error("cannot open " + path);
  }
  const std::streamsize bytes = in.tellg();
  if (bytes % static_cast<std::streamsize>(sizeof(float)) != 0) {
    throw std::runtime_error(path + ": " + std::to_string(bytes) + " bytes is not a whole number of float32 values");
  }
  std::vector<float> values(static_cast<size_t>(bytes) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char *>(values.data()), bytes);
  if (!in) {
    throw std::runtime_error("cannot read " + path);
  }
  return values;
}

void WriteFloatFile(const std::string &path, const float *values, size_t count) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char *>(values), static_cast<std::streamsize>(count * sizeof(float)));
  if (!out) {
    throw std::runtime_error("cannot write " + path);
  }
}

int DefaultResize(int crop) { return static_cast<int>(std::lround(crop * 256.0 / 224.0)); }

void LoadImageNetImage(const std::string &path, int resize, int height, int width, std::vector<float> *out) {
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  if (bgr.empty()) {
    throw std::runtime_error("cannot decode image " + path);
  }
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::Mat resized;
  cv::resize(rgb, resized, ShorterSideSize(rgb.rows, rgb.cols, resize), 0, 0, cv::INTER_LINEAR);
  if (resized.rows < height || resized.cols < width) {
    throw std::runtime_error(path + ": resized to " + std::to_string(resized.cols) + "x" +
                             std::to_string(resized.rows) + ", smaller than the " + std::to_string(width) + "x" +
                             std::to_string(height) + " crop; use --resize >= the crop size");
  }
  // Centre-crop offsets use floor division, as MindSpore's CenterCrop does.
  const int top = (resized.rows - height) / 2;
  const int left = (resized.cols - width) / 2;
  const cv::Mat crop = resized(cv::Rect(left, top, width, height));

  const size_t plane = static_cast<size_t>(height) * width;
  const size_t start = out->size();
  out->resize(start + 3 * plane);
  float *chw = out->data() + start;
  for (int y = 0; y < height; ++y) {
    const uint8_t *row = crop.ptr<uint8_t>(y);
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        chw[c * plane + static_cast<size_t>(y) * width + x] = (static_cast<float>(row[3 * x + c]) - kMean[c]) / kStd[c];
      }
    }
  }
}
