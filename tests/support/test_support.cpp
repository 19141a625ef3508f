#include "tests/support/test_support.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <unistd.h>

namespace origami::test {

Device test_device() {
  const char* e = std::getenv("ORIGAMI_TEST_DEVICE");
  if (!e || !*e || std::string(e) == "cpu") return Device::cpu();
  return device_from_string(e);
}

bool test_device_available() {
  Device d = test_device();
  return d.is_cpu() || cuda_device_count() > d.index;
}

Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::f32: return {1e-5, 1e-6};
    case DType::bf16: return {1e-2, 1e-3};
    case DType::f16: return {2e-3, 1e-4};
    default: return {0.0, 0.0};  // integers: exact
  }
}

HostArray host_array(const Shape& shape, double fill) {
  HostArray a;
  a.shape = shape;
  a.data.assign(size_t(shape_numel(shape)), fill);
  return a;
}

HostArray to_host_array(const Tensor& t) {
  HostArray a;
  a.shape = t.shape();
  Tensor h = t.to(Device::cpu()).contiguous();
  a.data.resize(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) a.data[size_t(i)] = h.item_at(i);
  return a;
}

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) t.set_at(i, u(rng));
  return t;
}

Tensor random_ints(const Shape& shape, DType dtype, int64_t lo, int64_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> u(lo, hi - 1);
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) t.set_at(i, double(u(rng)));
  return t;
}

Tensor on_test_device(const Tensor& cpu) {
  return cpu.device() == test_device() ? cpu.clone() : cpu.to(test_device());
}

Tensor empty_on_test_device(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, test_device());
  if (is_floating(dtype)) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

::testing::AssertionResult all_close(const HostArray& a, const HostArray& e, Tolerance tol) {
  if (a.shape != e.shape)
    return ::testing::AssertionFailure()
           << "shape " << shape_str(a.shape) << " differs from expected " << shape_str(e.shape);
  double max_e = 0, max_err = 0;
  int64_t worst = -1;
  // The scale is the largest finite expected magnitude; NaNs and infinities must match exactly.
  for (int64_t i = 0; i < e.numel(); ++i)
    if (std::isfinite(e[i])) max_e = std::max(max_e, std::fabs(e[i]));
  for (int64_t i = 0; i < e.numel(); ++i) {
    double err = std::fabs(a[i] - e[i]);
    if (!std::isfinite(a[i]) || !std::isfinite(e[i])) {
      const bool same = (std::isnan(a[i]) && std::isnan(e[i])) || a[i] == e[i];
      err = same ? 0.0 : std::numeric_limits<double>::infinity();
    }
    if (err > max_err) {
      max_err = err;
      worst = i;
    }
  }
  const double bound = tol.rel * max_e + tol.abs;
  if (max_err <= bound)
    return ::testing::AssertionSuccess() << "max error " << max_err << " <= " << bound;
  return ::testing::AssertionFailure()
         << "max |actual - expected| = " << max_err << " at flat index " << worst << " (actual "
         << a[worst] << ", expected " << e[worst] << "), allowed " << bound << " = " << tol.rel
         << " * max|expected| " << max_e << " + " << tol.abs << ", shape " << shape_str(e.shape);
}

::testing::AssertionResult all_close(const Tensor& actual, const HostArray& expected,
                                     Tolerance tol) {
  return all_close(to_host_array(actual), expected, tol);
}

double weighted_sum(const Tensor& x, const Tensor& w) {
  HostArray a = to_host_array(x), b = to_host_array(w);
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a[i] * b[i];
  return s;
}

double finite_difference_error(const std::function<double()>& loss, Tensor& x, const Tensor& grad,
                               int samples, double h, uint64_t seed) {
  EXPECT_TRUE(x.device().is_cpu() && x.dtype() == DType::f32 && x.is_contiguous())
      << "finite differences need a contiguous CPU f32 tensor, got " << x.str();
  HostArray g = to_host_array(grad);
  double scale = 1e-6;
  for (double v : g.data) scale = std::max(scale, std::fabs(v));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, x.numel() - 1);
  double worst = 0;
  float* p = x.data_as<float>();
  for (int s = 0; s < samples && x.numel() > 0; ++s) {
    const int64_t i = pick(rng);
    const float orig = p[i];
    p[i] = float(orig + h);
    const double lp = loss();
    p[i] = float(orig - h);
    const double lm = loss();
    p[i] = orig;
    const double fd = (lp - lm) / (2 * h);
    worst = std::max(worst, std::fabs(fd - g[i]) / scale);
  }
  return worst;
}

// ---- npy -----------------------------------------------------------------------------------------

void write_npy(const std::string& path, const Tensor& t_in) {
  Tensor t = t_in.to(Device::cpu()).contiguous();
  if (t.dtype() == DType::bf16 || t.dtype() == DType::f16) t = t.to(DType::f32);
  const char* descr = t.dtype() == DType::f32   ? "<f4"
                      : t.dtype() == DType::i32 ? "<i4"
                      : t.dtype() == DType::i64 ? "<i8"
                                                : "|u1";
  std::ostringstream shape;
  shape << "(";
  for (int64_t d : t.shape()) shape << d << ",";
  shape << ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " +
                       shape.str() + ", }";
  // Pad so that magic(6) + version(2) + len(2) + header is a multiple of 64, ending in '\n'.
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  ORIGAMI_CHECK(f, "cannot write ", path);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = uint16_t(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(static_cast<const char*>(t.data()), std::streamsize(t.nbytes()));
}

HostArray read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ORIGAMI_CHECK(f, "cannot read ", path);
  char magic[8];
  f.read(magic, 8);
  ORIGAMI_CHECK(f && std::string(magic, 6) == "\x93NUMPY", path, " is not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t l;
    f.read(reinterpret_cast<char*>(&l), 2);
    hlen = l;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  f.read(header.data(), hlen);
  auto field = [&](const std::string& key) {
    size_t p = header.find("'" + key + "'");
    ORIGAMI_CHECK(p != std::string::npos, path, ": npy header lacks ", key);
    return p + key.size() + 3;
  };
  size_t dp = header.find('\'', field("descr"));
  std::string descr = header.substr(dp + 1, header.find('\'', dp + 1) - dp - 1);
  ORIGAMI_CHECK(header.find("'fortran_order': False") != std::string::npos, path,
                ": fortran order not supported");
  size_t sp = header.find('(', field("shape"));
  std::string shape_s = header.substr(sp + 1, header.find(')', sp) - sp - 1);
  Shape shape;
  std::stringstream ss(shape_s);
  std::string tok;
  while (std::getline(ss, tok, ','))
    if (tok.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(tok));
  HostArray a = host_array(shape);
  const int64_t n = a.numel();
  auto read_all = [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> buf{};
    buf.resize(size_t(n));
    f.read(reinterpret_cast<char*>(buf.data()), std::streamsize(sizeof(T) * size_t(n)));
    ORIGAMI_CHECK(f || n == 0, path, ": truncated data");
    for (int64_t i = 0; i < n; ++i) a[i] = double(buf[size_t(i)]);
  };
  if (descr == "<f8") read_all(double{});
  else if (descr == "<f4") read_all(float{});
  else if (descr == "<i8") read_all(int64_t{});
  else if (descr == "<i4") read_all(int32_t{});
  else if (descr == "|u1" || descr == "|b1") read_all(uint8_t{});
  else ORIGAMI_FAIL(path, ": unsupported npy dtype ", descr);
  return a;
}

// ---- PyTorch reference ------------------------------------------------------------------------

static std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no origami::Error thrown; expected one naming: "
                  << (parts.empty() ? std::string("(anything)") : parts.front());
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos)
          << "message \"" << msg << "\" does not contain \"" << part << "\"";
  }
}

std::map<std::string, HostArray> run_torch(const std::vector<TorchCase>& cases) {
  namespace fs = std::filesystem;
  std::map<std::string, HostArray> out;
  char tmpl[] = "/tmp/origami_torch_XXXXXX";
  const char* dir_c = mkdtemp(tmpl);
  if (!dir_c) {
    ADD_FAILURE() << "cannot create a temporary folder for the PyTorch reference";
    return out;
  }
  const fs::path dir(dir_c);
  std::ostringstream manifest;
  manifest << "{\"cases\": [\n";
  for (size_t c = 0; c < cases.size(); ++c) {
    const TorchCase& tc = cases[c];
    manifest << (c ? ",\n" : "") << "{\"name\": \"" << json_escape(tc.name) << "\", \"op\": \""
             << json_escape(tc.op) << "\", \"params\": " << tc.params_json << ", \"inputs\": {";
    for (size_t i = 0; i < tc.inputs.size(); ++i) {
      const std::string file = "in_" + std::to_string(c) + "_" + std::to_string(i) + ".npy";
      write_npy((dir / file).string(), tc.inputs[i].second);
      manifest << (i ? ", " : "") << "\"" << json_escape(tc.inputs[i].first) << "\": \"" << file
               << "\"";
    }
    manifest << "}}";
  }
  manifest << "\n]}\n";
  {
    std::ofstream mf(dir / "manifest.json");
    mf << manifest.str();
  }
  const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                          "/tests/golden/torch_ops.py\" \"" + dir.string() + "\" > \"" +
                          (dir / "log.txt").string() + "\" 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream lf(dir / "log.txt");
    std::stringstream log;
    log << lf.rdbuf();
    ADD_FAILURE() << "PyTorch reference failed (" << cmd << "):\n" << log.str();
    fs::remove_all(dir);
    return out;
  }
  std::ifstream index(dir / "outputs.txt");
  std::string key, file;
  while (index >> key >> file) out[key] = read_npy((dir / file).string());
  fs::remove_all(dir);
  return out;
}

}  // namespace origami::test
