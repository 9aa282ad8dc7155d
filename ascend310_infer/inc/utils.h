/** File helpers and input reading of the offline inference app. */
#ifndef GOOGLENET_INFER_UTILS_H_
#define GOOGLENET_INFER_UTILS_H_

#include <cstdint>
#include <string>
#include <vector>

/** Regular files under `dir` whose extension (lower-cased, with the dot) is one of `extensions`,
 *  sorted by path; `recursive` descends into sub-folders. Throws when `dir` is not a folder. */
std::vector<std::string> ListFiles(const std::string &dir, const std::vector<std::string> &extensions,
                                   bool recursive);

/** File name without folder and extension: "a/b/img_1.JPEG" -> "img_1". */
std::string FileStem(const std::string &path);

/** mkdir -p; throws on failure. */
void MakeDirs(const std::string &dir);

/** The whole file as float32 values; throws when its size is not a multiple of 4 bytes. */
std::vector<float> ReadFloatFile(const std::string &path);

/** Write `values` as raw float32; throws on failure. */
void WriteFloatFile(const std::string &path, const float *values, size_t count);

/** ImageNet evaluation preprocessing, as src/dataset.py eval_transforms does it: decode to RGB,
 *  resize the shorter side to `resize` (bilinear), centre crop `height` x `width`, normalise with
 *  the ImageNet mean/std, HWC -> CHW. Appends height*width*3 float32 values to `out`. */
void LoadImageNetImage(const std::string &path, int resize, int height, int width, std::vector<float> *out);

/** The shorter-side size src/dataset.py uses for a crop of `crop` pixels: round(crop * 256 / 224). */
int DefaultResize(int crop);

#endif  // GOOGLENET_INFER_UTILS_H_
