// GPTQ and RTN weight quantization and the Hugging Face GPTQ packing (see gptq.h).
#include "models/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <nlohmann/json.hpp>

#include "runtime/dtype.h"
#include "runtime/error.h"

namespace origami::models {

namespace {

// ---- quantizer
// -----------------------------------------------------------------------------------

struct GroupParams {
  double scale = 1.0;
  double zero = 0.0;
};

// Scale and zero of one row of one group, w[0..n), as AutoGPTQ's Quantizer.find_params.
GroupParams find_params(const double* w, int64_t n, int maxq, bool sym) {
  double xmin = 0.0, xmax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    xmin = std::min(xmin, w[i]);
    xmax = std::max(xmax, w[i]);
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0 && xmax == 0.0) {
    xmin = -1.0;
    xmax = 1.0;
  }
  GroupParams p;
  p.scale = (xmax - xmin) / maxq;
  p.zero = sym ? double((maxq + 1) / 2) : std::nearbyint(-xmin / p.scale);
  return p;
}

// The level of w (round half to even, the default rounding mode).
inline int32_t quantize_level(double w, const GroupParams& p, int maxq) {
  const double q = std::nearbyint(w / p.scale) + p.zero;
  return int32_t(std::clamp(q, 0.0, double(maxq)));
}

inline double dequantize_level(int32_t q, const GroupParams& p) {
  return p.scale * (q - p.zero);
}

void check_config(const QuantConfig& c, int64_t rows, int64_t cols, const char* what) {
  ORIGAMI_CHECK(c.bits >= 2 && c.bits <= 8, what, ": bits must be 2..8, got ", c.bits);
  ORIGAMI_CHECK(c.group_size == -1 || c.group_size > 0, what,
                ": group_size must be -1 or positive, got ", c.group_size);
  ORIGAMI_CHECK(c.block_size > 0, what, ": block_size must be positive, got ", c.block_size);
  ORIGAMI_CHECK(c.percdamp >= 0, what, ": percdamp must be >= 0, got ", c.percdamp);
  ORIGAMI_CHECK(rows > 0 && cols > 0, what, ": weight must be non-empty, got [", rows, ",", cols,
                "]");
}

QuantizedLinear empty_result(int64_t rows, int64_t cols, const QuantConfig& c) {
  const int64_t g = c.group_size == -1 ? cols : c.group_size;
  const int64_t groups = (cols + g - 1) / g;
  QuantizedLinear out;
  out.rows = rows;
  out.cols = cols;
  out.bits = c.bits;
  out.group_size = c.group_size;
  out.q.assign(size_t(rows * cols), 0);
  out.scales.assign(size_t(groups * rows), 0.0f);
  out.zeros.assign(size_t(groups * rows), 0);
  out.g_idx.assign(size_t(cols), 0);
  return out;
}

void store_params(QuantizedLinear& out, int64_t group, int64_t row, const GroupParams& p) {
  out.scales[size_t(group * out.rows + row)] = float(p.scale);
  out.zeros[size_t(group * out.rows + row)] = int32_t(p.zero);
}

// Multiply-adds below which a loop runs on one thread (a parallel region costs more).
constexpr int64_t kParallelWork = int64_t(1) << 22;

// Four partial sums: independent chains the compiler can pipeline (the order is fixed, so results
// do not depend on the thread count).
inline double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  const int64_t n4 = n - n % 4;
  for (int64_t k = 0; k < n4; k += 4) {
    s0 += a[k] * b[k];
    s1 += a[k + 1] * b[k + 1];
    s2 += a[k + 2] * b[k + 2];
    s3 += a[k + 3] * b[k + 3];
  }
  for (int64_t k = n4; k < n; ++k) s0 += a[k] * b[k];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace

// ---- linear algebra
// ------------------------------------------------------------------------------

void cholesky_lower(std::vector<double>& a, int64_t n) {
  ORIGAMI_CHECK(int64_t(a.size()) == n * n, "cholesky: expected ", n * n, " values, got ",
                a.size());
  // By blocks of kB columns: L_ij = (A_ij - sum_{k<j} L_ik L_jk) / L_jj, the sum over the columns
  // before the block taken for the whole block at once (one parallel region per block).
  constexpr int64_t kB = 64;
  for (int64_t j0 = 0; j0 < n; j0 += kB) {
    const int64_t j1 = std::min(n, j0 + kB);
#pragma omp parallel for schedule(static) if ((n - j0) * kB * j0 >= kParallelWork)
    for (int64_t i = j0; i < n; ++i) {
      double* ri = &a[size_t(i * n)];
      for (int64_t j = j0; j < std::min(j1, i + 1); ++j) ri[j] -= dot(ri, &a[size_t(j * n)], j0);
    }
    for (int64_t j = j0; j < j1; ++j) {
      double* rj = &a[size_t(j * n)];
      const double d = rj[j] - dot(rj + j0, rj + j0, j - j0);
      ORIGAMI_CHECK(d > 0 && std::isfinite(d), "cholesky: matrix not positive definite at column ",
                    j, " (pivot ", d, ")");
      rj[j] = std::sqrt(d);
      for (int64_t i = j + 1; i < j1; ++i) {
        double* ri = &a[size_t(i * n)];
        ri[j] = (ri[j] - dot(ri + j0, rj + j0, j - j0)) / rj[j];
      }
    }
#pragma omp parallel for schedule(static) if ((n - j1) * kB * kB / 2 >= kParallelWork)
    for (int64_t i = j1; i < n; ++i) {
      double* ri = &a[size_t(i * n)];
      for (int64_t j = j0; j < j1; ++j) {
        const double* rj = &a[size_t(j * n)];
        ri[j] = (ri[j] - dot(ri + j0, rj + j0, j - j0)) / rj[j];
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) a[size_t(i * n + j)] = 0.0;
}

std::vector<double> inverse_upper_cholesky(const std::vector<double>& a, int64_t n) {
  ORIGAMI_CHECK(int64_t(a.size()) == n * n, "inverse_upper_cholesky: expected ", n * n,
                " values, got ", a.size());
  // With J the order reversal and C C^T = J A J (C lower): J A^-1 J = C^-T C^-1, so
  // A^-1 = (J C^-1 J)^T (J C^-1 J), and U = J C^-1 J is upper triangular with a positive diagonal.
  std::vector<double> c(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) c[size_t(i * n + j)] = a[size_t((n - 1 - i) * n + (n - 1 - j))];
  cholesky_lower(c, n);
  // X = C^-1 (lower) row by row: X_i = (e_i - sum_{m<i} C_im X_m) / C_ii, by chunks of columns.
  std::vector<double> x(size_t(n * n), 0.0);
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1) if (n * n * n / 6 >= kParallelWork)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t k0 = ch * kChunk, k1 = std::min(n, k0 + kChunk);
    for (int64_t i = k0; i < n; ++i) {
      double* xi = &x[size_t(i * n)];
      const double* ci = &c[size_t(i * n)];
      if (i < k1) xi[i] = 1.0;
      for (int64_t m = k0; m < i; ++m) {
        const double* xm = &x[size_t(m * n)];
        const double cim = ci[m];
        for (int64_t k = k0; k < std::min(k1, m + 1); ++k) xi[k] -= cim * xm[k];
      }
      for (int64_t k = k0; k < std::min(k1, i + 1); ++k) xi[k] /= ci[i];
    }
  }
  std::vector<double> u(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) u[size_t(i * n + j)] = x[size_t((n - 1 - i) * n + (n - 1 - j))];
  return u;
}

// ---- Hessian
// -------------------------------------------------------------------------------------

HessianAccumulator::HessianAccumulator(int64_t cols) : cols_(cols) {
  ORIGAMI_CHECK(cols > 0, "HessianAccumulator: cols must be positive, got ", cols);
  sum_.assign(size_t(cols * cols), 0.0);
}

void HessianAccumulator::add(const float* x, int64_t tokens, int64_t cols) {
  ORIGAMI_CHECK(cols == cols_, "HessianAccumulator::add: inputs have ", cols,
                " columns, the layer has ", cols_);
  ORIGAMI_CHECK(tokens >= 0, "HessianAccumulator::add: negative token count ", tokens);
  const int64_t n = cols_;
  constexpr int64_t kTile = 64;  // tokens per tile, transposed to [n, kTile] doubles
  std::vector<double> xt(size_t(n * kTile));
  for (int64_t t0 = 0; t0 < tokens; t0 += kTile) {
    const int64_t nt = std::min(kTile, tokens - t0);
    std::fill(xt.begin(), xt.end(), 0.0);
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t i = 0; i < n; ++i) xt[size_t(i * kTile + t)] = x[(t0 + t) * n + i];
#pragma omp parallel for schedule(dynamic, 4) if (n * n * kTile / 2 >= kParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const double* xi = &xt[size_t(i * kTile)];
      double* row = &sum_[size_t(i * n)];
      for (int64_t j = i; j < n; ++j) row[j] += dot(xi, &xt[size_t(j * kTile)], kTile);
    }
  }
  tokens_ += tokens;
}

std::vector<double> HessianAccumulator::hessian() const {
  const int64_t n = cols_;
  std::vector<double> h(size_t(n * n), 0.0);
  if (tokens_ == 0) return h;
  const double f = 2.0 / double(tokens_);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      const double v = f * sum_[size_t(i * n + j)];
      h[size_t(i * n + j)] = v;
      h[size_t(j * n + i)] = v;
    }
  return h;
}

// ---- quantization
// ----------------------------------------------------------------------------------

std::vector<float> QuantizedLinear::dequantize() const {
  std::vector<float> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t p = size_t(int64_t(g_idx[size_t(c)]) * rows + r);
      w[size_t(r * cols + c)] = scales[p] * float(q[size_t(r * cols + c)] - zeros[p]);
    }
  return w;
}

QuantizedLinear rtn_quantize(const float* w, int64_t rows, int64_t cols,
                             const QuantConfig& config) {
  check_config(config, rows, cols, "rtn_quantize");
  QuantizedLinear out = empty_result(rows, cols, config);
  const int maxq = (1 << config.bits) - 1;
  const int64_t g = config.group_size == -1 ? cols : config.group_size;
  const int64_t groups = out.groups();
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> row(w + r * cols, w + (r + 1) * cols);
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t c0 = gi * g, c1 = std::min(cols, c0 + g);
      const GroupParams p = find_params(&row[size_t(c0)], c1 - c0, maxq, config.sym);
      store_params(out, gi, r, p);
      for (int64_t c = c0; c < c1; ++c)
        out.q[size_t(r * cols + c)] = quantize_level(row[size_t(c)], p, maxq);
    }
  }
  for (int64_t c = 0; c < cols; ++c) out.g_idx[size_t(c)] = int32_t(c / g);
  return out;
}

QuantizedLinear gptq_quantize(const float* w, int64_t rows, int64_t cols,
                              const HessianAccumulator& hessian, const QuantConfig& config) {
  check_config(config, rows, cols, "gptq_quantize");
  ORIGAMI_CHECK(hessian.cols() == cols, "gptq_quantize: the Hessian is for ", hessian.cols(),
                " input columns, the weight has ", cols);
  ORIGAMI_CHECK(hessian.tokens() > 0, "gptq_quantize: the Hessian has no calibration tokens");
  QuantizedLinear out = empty_result(rows, cols, config);
  const int maxq = (1 << config.bits) - 1;
  const bool grouped = config.group_size != -1;
  const int64_t g = grouped ? config.group_size : cols;
  const int64_t n = cols;

  std::vector<double> h = hessian.hessian();
  std::vector<double> wd(w, w + rows * cols);
  std::vector<GroupParams> params(static_cast<size_t>(rows));
  if (!grouped) {
    // One group: parameters from the original weights (before dead columns are zeroed).
    for (int64_t r = 0; r < rows; ++r) {
      params[size_t(r)] = find_params(&wd[size_t(r * n)], n, maxq, config.sym);
      store_params(out, 0, r, params[size_t(r)]);
    }
  }
  for (int64_t i = 0; i < n; ++i)
    if (h[size_t(i * n + i)] == 0.0) {
      h[size_t(i * n + i)] = 1.0;
      for (int64_t r = 0; r < rows; ++r) wd[size_t(r * n + i)] = 0.0;
    }

  // Column order: perm[k] is the original column at position k.
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  if (config.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return h[size_t(a * n + a)] > h[size_t(b * n + b)];
    });
    std::vector<double> hp(size_t(n * n)), wp(size_t(rows * n));
    for (int64_t a = 0; a < n; ++a)
      for (int64_t b = 0; b < n; ++b) hp[size_t(a * n + b)] = h[size_t(perm[a] * n + perm[b])];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < n; ++k) wp[size_t(r * n + k)] = wd[size_t(r * n + perm[k])];
    h.swap(hp);
    wd.swap(wp);
  }

  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) mean_diag += h[size_t(i * n + i)];
  mean_diag /= double(n);
  const double damp = config.percdamp * mean_diag;
  for (int64_t i = 0; i < n; ++i) h[size_t(i * n + i)] += damp;
  const std::vector<double> u = inverse_upper_cholesky(h, n);
  h.clear();
  h.shrink_to_fit();

  std::vector<int32_t> qp(size_t(rows * n));
  const int64_t bs = config.block_size;
  std::vector<double> err(size_t(rows * bs));
  for (int64_t i1 = 0; i1 < n; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, n), count = i2 - i1;
    // Within the block, row by row: quantize, and spread each column's error over the block.
#pragma omp parallel for schedule(static) if (rows * count * count / 2 >= kParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      double* wr = &wd[size_t(r * n)];
      double* er = &err[size_t(r * bs)];
      std::vector<double> w1(wr + i1, wr + i2);
      GroupParams& p = params[size_t(r)];
      for (int64_t i = 0; i < count; ++i) {
        const int64_t col = i1 + i;
        if (grouped && col % g == 0) {
          // From wd: updated by the earlier blocks, not by this block's earlier columns.
          p = find_params(wr + col, std::min(g, n - col), maxq, config.sym);
          store_params(out, col / g, r, p);
        }
        const int32_t q = quantize_level(w1[size_t(i)], p, maxq);
        qp[size_t(r * n + col)] = q;
        const double* ui = &u[size_t(col * n)];
        const double e = (w1[size_t(i)] - dequantize_level(q, p)) / ui[col];
        for (int64_t j = i + 1; j < count; ++j) w1[size_t(j)] -= e * ui[i1 + j];
        er[i] = e;
      }
    }
    // Lazy batch update of the later columns: W[:, i2:] -= E U[i1:i2, i2:], by column chunks.
    constexpr int64_t kChunk = 256;
    const int64_t chunks = (n - i2 + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (rows * count * (n - i2) >= kParallelWork)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t j0 = i2 + ch * kChunk, j1 = std::min(n, j0 + kChunk);
      for (int64_t r = 0; r < rows; ++r) {
        double* wr = &wd[size_t(r * n)];
        for (int64_t k = 0; k < count; ++k) {
          const double e = err[size_t(r * bs + k)];
          const double* uk = &u[size_t((i1 + k) * n)];
          for (int64_t j = j0; j < j1; ++j) wr[j] -= e * uk[j];
        }
      }
    }
  }

  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) out.q[size_t(r * n + perm[k])] = qp[size_t(r * n + k)];
  for (int64_t k = 0; k < n; ++k) out.g_idx[size_t(perm[k])] = grouped ? int32_t(k / g) : 0;
  return out;
}

// ---- Hugging Face GPTQ packing ----------------------------------------------------------------

namespace {

void check_pack_bits(int bits, const std::string& what) {
  ORIGAMI_CHECK(bits == 2 || bits == 4 || bits == 8, what,
                ": GPTQ packing supports 2, 4 and 8 bits, got ", bits,
                bits == 3 ? " (3-bit packing crosses int32 words and is not supported)" : "");
}

// A CPU, contiguous copy of t as int64 values, after checking dtype and shape.
std::vector<int64_t> int_values(const Tensor& t, const std::string& tensor_name,
                                const Shape& shape) {
  ORIGAMI_CHECK(t.defined(), tensor_name, ": missing");
  ORIGAMI_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, tensor_name,
                ": expected int32, got ", dtype_name(t.dtype()));
  ORIGAMI_CHECK(t.shape() == shape, tensor_name, ": expected shape ", shape_str(shape), ", got ",
                shape_str(t.shape()));
  const Tensor c = t.to(Device::cpu()).contiguous();
  std::vector<int64_t> v(size_t(c.numel()));
  if (c.dtype() == DType::i32) {
    const int32_t* p = c.data_as<int32_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
  } else {
    const int64_t* p = c.data_as<int64_t>();
    std::copy(p, p + v.size(), v.begin());
  }
  return v;
}

}  // namespace

GptqTensors pack_gptq(const QuantizedLinear& lin, bool v2) {
  check_pack_bits(lin.bits, "pack_gptq");
  const int bits = lin.bits;
  const int64_t per = 32 / bits, in = lin.cols, out = lin.rows, groups = lin.groups();
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(in % per == 0, "pack_gptq: in_features ", in, " must be a multiple of ", per,
                " for ", bits, "-bit qweight");
  ORIGAMI_CHECK(out % per == 0, "pack_gptq: out_features ", out, " must be a multiple of ", per,
                " for ", bits, "-bit qzeros");
  ORIGAMI_CHECK(int64_t(lin.q.size()) == in * out && int64_t(lin.g_idx.size()) == in &&
                    int64_t(lin.zeros.size()) == groups * out &&
                    int64_t(lin.scales.size()) == groups * out,
                "pack_gptq: inconsistent QuantizedLinear sizes");
  GptqTensors t;
  t.qweight = Tensor::zeros({in / per, out}, DType::i32);
  t.qzeros = Tensor::zeros({groups, out / per}, DType::i32);
  t.scales = Tensor::empty({groups, out}, DType::f16);
  t.g_idx = Tensor::empty({in}, DType::i32);
  uint32_t* qw = t.qweight.data_as<uint32_t>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) {
      const int32_t q = lin.q[size_t(o * in + c)];
      ORIGAMI_CHECK(q >= 0 && uint32_t(q) <= mask, "pack_gptq: level ", q, " at [", o, ",", c,
                    "] outside 0..", mask);
      qw[(c / per) * out + o] |= uint32_t(q) << (bits * (c % per));
    }
  uint32_t* qz = t.qzeros.data_as<uint32_t>();
  uint16_t* sc = t.scales.data_as<uint16_t>();
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t o = 0; o < out; ++o) {
      const int32_t z = lin.zeros[size_t(gi * out + o)];
      ORIGAMI_CHECK(z >= 0 && uint32_t(z) <= mask, "pack_gptq: zero point ", z, " of group ", gi,
                    " row ", o, " outside 0..", mask);
      const uint32_t stored = (v2 ? uint32_t(z) : uint32_t(z) - 1u) & mask;
      qz[gi * (out / per) + o / per] |= stored << (bits * (o % per));
      sc[gi * out + o] = f32_to_f16(lin.scales[size_t(gi * out + o)]);
    }
  std::copy(lin.g_idx.begin(), lin.g_idx.end(), t.g_idx.data_as<int32_t>());
  return t;
}

QuantizedLinear unpack_gptq(const Tensor& qweight, const Tensor& qzeros, const Tensor& scales,
                            const Tensor& g_idx, int bits, int64_t group_size, bool v2,
                            const std::string& name) {
  check_pack_bits(bits, "unpack_gptq " + name);
  const int64_t per = 32 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  ORIGAMI_CHECK(qweight.defined() && qweight.dim() == 2, name, ".qweight: expected 2 dims [in*",
                bits, "/32, out], got ", qweight.defined() ? shape_str(qweight.shape()) : "none");
  ORIGAMI_CHECK(scales.defined() && scales.dim() == 2, name, ".scales: expected 2 dims [groups, ",
                "out], got ", scales.defined() ? shape_str(scales.shape()) : "none");
  ORIGAMI_CHECK(is_floating(scales.dtype()), name, ".scales: expected float16, got ",
                dtype_name(scales.dtype()));
  const int64_t in = qweight.size(0) * per, out = qweight.size(1), groups = scales.size(0);
  ORIGAMI_CHECK(scales.size(1) == out, name, ".scales: expected ", out, " columns (out of ", name,
                ".qweight), got ", shape_str(scales.shape()));
  ORIGAMI_CHECK(group_size == -1 || group_size > 0, name,
                ": group_size must be -1 or positive, got ", group_size);
  const int64_t expect_groups = group_size == -1 ? 1 : (in + group_size - 1) / group_size;
  ORIGAMI_CHECK(groups == expect_groups, name, ".scales: expected ", expect_groups,
                " groups (in_features ", in, ", group_size ", group_size, "), got ",
                shape_str(scales.shape()));
  ORIGAMI_CHECK(out % per == 0, name, ".qzeros: out_features ", out, " is not a multiple of ", per);
  const std::vector<int64_t> qw = int_values(qweight, name + ".qweight", qweight.shape());
  const std::vector<int64_t> qz = int_values(qzeros, name + ".qzeros", {groups, out / per});

  QuantizedLinear lin;
  lin.rows = out;
  lin.cols = in;
  lin.bits = bits;
  lin.group_size = group_size;
  lin.q.resize(size_t(out * in));
  for (int64_t c = 0; c < in; ++c)
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t word = uint32_t(qw[size_t((c / per) * out + o)]);
      lin.q[size_t(o * in + c)] = int32_t((word >> (bits * (c % per))) & mask);
    }
  lin.zeros.resize(size_t(groups * out));
  for (int64_t gi = 0; gi < groups; ++gi)
    for (int64_t o = 0; o < out; ++o) {
      const uint32_t word = uint32_t(qz[size_t(gi * (out / per) + o / per)]);
      const uint32_t stored = (word >> (bits * (o % per))) & mask;
      lin.zeros[size_t(gi * out + o)] = int32_t(v2 ? stored : (stored + 1u) & mask);
    }
  lin.scales = scales.to_float_vector();
  lin.g_idx.resize(size_t(in));
  if (g_idx.defined()) {
    const std::vector<int64_t> gv = int_values(g_idx, name + ".g_idx", {in});
    for (int64_t c = 0; c < in; ++c) {
      ORIGAMI_CHECK(gv[size_t(c)] >= 0 && gv[size_t(c)] < groups, name, ".g_idx: entry ", c, " is ",
                    gv[size_t(c)], ", outside 0..", groups - 1);
      lin.g_idx[size_t(c)] = int32_t(gv[size_t(c)]);
    }
  } else {
    const int64_t g = group_size == -1 ? in : group_size;
    for (int64_t c = 0; c < in; ++c) lin.g_idx[size_t(c)] = int32_t(c / g);
  }
  return lin;
}

// ---- quantization_config
// -------------------------------------------------------------------------

GptqFormat gptq_format_from_config_text(const std::string& text, const std::string& label) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ORIGAMI_FAIL(label, ": not valid JSON: ", e.what());
  }
  ORIGAMI_CHECK(
      j.is_object() && j.contains("quantization_config") && j["quantization_config"].is_object(),
      label, ": no quantization_config object");
  const json& q = j["quantization_config"];
  const std::string where = label + ": quantization_config.";
  ORIGAMI_CHECK(q.contains("quant_method") && q["quant_method"].is_string() &&
                    q["quant_method"].get<std::string>() == "gptq",
                where, "quant_method: expected \"gptq\", got ",
                q.contains("quant_method") ? q["quant_method"].dump() : "none");
  auto integer = [&](const char* key) -> int64_t {
    ORIGAMI_CHECK(q.contains(key) && q[key].is_number_integer(), where, key,
                  ": expected an integer, got ", q.contains(key) ? q[key].dump() : "none");
    return q[key].get<int64_t>();
  };
  auto boolean = [&](const char* key, bool fallback) {
    if (!q.contains(key) || q[key].is_null()) return fallback;
    ORIGAMI_CHECK(q[key].is_boolean(), where, key, ": expected true or false, got ", q[key].dump());
    return q[key].get<bool>();
  };
  GptqFormat f;
  const int64_t bits = integer("bits");
  ORIGAMI_CHECK(bits >= 2 && bits <= 8, where, "bits: expected 2..8, got ", bits);
  f.bits = int(bits);
  f.group_size = integer("group_size");
  ORIGAMI_CHECK(f.group_size == -1 || f.group_size > 0, where,
                "group_size: expected -1 or positive, got ", f.group_size);
  f.desc_act = boolean("desc_act", false);
  f.sym = boolean("sym", true);
  if (q.contains("checkpoint_format") && !q["checkpoint_format"].is_null()) {
    const json& cf = q["checkpoint_format"];
    const std::string v = cf.is_string() ? cf.get<std::string>() : cf.dump();
    ORIGAMI_CHECK(v == "gptq" || v == "gptq_v2", where,
                  "checkpoint_format: expected \"gptq\" or \"gptq_v2\", got ", cf.dump());
    f.v2 = v == "gptq_v2";
  }
  return f;
}

std::string gptq_quantization_config_json(const GptqFormat& f, double percdamp) {
  nlohmann::ordered_json q;
  q["quant_method"] = "gptq";
  q["bits"] = f.bits;
  q["group_size"] = f.group_size;
  q["desc_act"] = f.desc_act;
  q["sym"] = f.sym;
  q["damp_percent"] = percdamp;
  q["true_sequential"] = true;
  q["checkpoint_format"] = f.v2 ? "gptq_v2" : "gptq";
  return q.dump();
}

}  // namespace origami::models
