// GPTQ and RTN weight quantization (see gptq.h).
#include "models/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

}  // namespace origami::models
