// CPU GEMM: every product is one oneDNN matmul primitive on row-major matrices. Transposes are
// expressed through the memory descriptors' strides (no copies), alpha through output scales and
// beta through a sum post-op. Creating a primitive costs from tens of microseconds to a few
// milliseconds (JIT), so primitives are cached per problem (shape, dtypes, transposes, alpha,
// beta) in a bounded, thread-safe LRU map; a repeated call only wraps its pointers and executes.
#include "ops/cpu/gemm.h"

#include <dnnl.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace origami::ops::cpu {
namespace {

using dnnl::memory;
constexpr int64_t kRuntime = DNNL_RUNTIME_DIM_VAL;
constexpr size_t kCacheCapacity = 1024;

// The rows of a grouped GEMM's groups change from call to call (tokens per expert). Those
// products use primitives whose varying dimension is a run-time value, so one primitive serves
// every row count instead of one being created per distinct count. oneDNN 2.6 runs them with its
// gemm:jit kernels rather than brgemm; measured with new row counts on every call (4096 rows over
// 8 groups, K 512, N 1536, 2 threads) they were 5-10% faster than a cached primitive per row
// count, whose creation (about 0.3 ms each) outweighs brgemm's edge.
enum class Varying { none, m, k };

// out [batch?, m, n] = alpha * op(a) [m, k] @ op(b) [k, n] + beta * out, every matrix stored
// contiguously row-major (a as [k, m] when trans_a, b as [n, k] when trans_b). batch 0: 2-D.
// As a cache key, m or k may be kRuntime.
struct Problem {
  int64_t batch = 0, m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  DType in = DType::f32, out = DType::f32;
  float alpha = 1.0f, beta = 0.0f;
  bool operator==(const Problem&) const = default;
};

struct ProblemHash {
  size_t operator()(const Problem& p) const {
    size_t h = 0;
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    for (int64_t v : {p.batch, p.m, p.n, p.k}) mix(std::hash<int64_t>{}(v));
    mix(size_t(p.trans_a) | size_t(p.trans_b) << 1 | size_t(p.in) << 2 | size_t(p.out) << 10);
    mix(std::hash<float>{}(p.alpha));
    mix(std::hash<float>{}(p.beta));
    return h;
  }
};

memory::data_type dnnl_type(DType t) {
  return t == DType::bf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

int64_t mul(int64_t a, int64_t b) {
  return a == kRuntime || b == kRuntime ? kRuntime : a * b;
}

// Logical [rows, cols] view of a matrix stored row-major as [rows, cols], or as [cols, rows] when
// `trans` (then the strides swap). Batched: a leading dimension of whole matrices.
memory::desc matrix_desc(int64_t batch, int64_t rows, int64_t cols, bool trans, DType dt) {
  const int64_t row_stride = trans ? 1 : cols, col_stride = trans ? rows : 1;
  if (batch == 0) return memory::desc({rows, cols}, dnnl_type(dt), {row_stride, col_stride});
  return memory::desc({batch, rows, cols}, dnnl_type(dt),
                      {mul(rows, cols), row_stride, col_stride});
}

struct Descs {
  memory::desc a, b, c;
};
Descs descs_of(const Problem& p) {
  return {matrix_desc(p.batch, p.m, p.k, p.trans_a, p.in),
          matrix_desc(p.batch, p.k, p.n, p.trans_b, p.in),
          matrix_desc(p.batch, p.m, p.n, false, p.out)};
}

std::string problem_str(const Problem& p) {
  auto dim = [](int64_t v) { return v == kRuntime ? std::string("?") : std::to_string(v); };
  return detail::concat(p.batch ? std::to_string(p.batch) + "x" : "", "[", dim(p.m), ",", dim(p.k),
                        "]", p.trans_a ? "^T" : "", " @ [", dim(p.k), ",", dim(p.n), "]",
                        p.trans_b ? "^T" : "", " ", dtype_name(p.in), " -> ", dtype_name(p.out),
                        " alpha ", p.alpha, " beta ", p.beta);
}

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// CPU streams are cheap and execution on them is synchronous; one per thread keeps concurrent
// callers apart; a primitive runs for one caller at a time (see matmul()).
dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

struct Entry {
  dnnl::matmul primitive;
  Descs descs;  // the memory descriptors when the problem has no run-time dimension
  // Without run-time dimensions: memory objects (and the argument map holding them) that a call
  // points at its tensors and reuses, which costs less than creating them (a few microseconds).
  // args_mu also serialises executions of the primitive.
  std::mutex args_mu;
  std::unordered_map<int, memory> args;
};

class PrimitiveCache {
 public:
  std::shared_ptr<Entry> get(const char* op, const Problem& key) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = index_.find(key); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
    auto entry = std::make_shared<Entry>();
    entry->descs = descs_of(key);
    try {
      dnnl::primitive_attr attr;
      if (key.alpha != 1.0f) attr.set_output_scales(0, {key.alpha});
      if (key.beta != 0.0f) {
        dnnl::post_ops po;
        po.append_sum(key.beta);
        attr.set_post_ops(po);
      }
      dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(entry->descs.a, entry->descs.b, entry->descs.c), attr, engine());
      entry->primitive = dnnl::matmul(pd);
      if (key.m != kRuntime && key.k != kRuntime)
        entry->args = {{DNNL_ARG_SRC, memory(entry->descs.a, engine(), nullptr)},
                       {DNNL_ARG_WEIGHTS, memory(entry->descs.b, engine(), nullptr)},
                       {DNNL_ARG_DST, memory(entry->descs.c, engine(), nullptr)}};
    } catch (const dnnl::error& e) {
      ORIGAMI_FAIL(op, ": oneDNN cannot create a matmul for ", problem_str(key), ": ", e.what());
    }
    ++created_;
    lru_.emplace_front(key, entry);
    index_[key] = lru_.begin();
    if (lru_.size() > kCacheCapacity) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    return entry;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return lru_.size();
  }
  uint64_t created() {
    std::lock_guard<std::mutex> lock(mu_);
    return created_;
  }

 private:
  using List = std::list<std::pair<Problem, std::shared_ptr<Entry>>>;
  std::mutex mu_;
  List lru_;  // most recently used first
  std::unordered_map<Problem, List::iterator, ProblemHash> index_;
  uint64_t created_ = 0;
};

PrimitiveCache& cache() {
  static PrimitiveCache c;
  return c;
}

// out = beta * out: the whole product when the inner dimension is empty.
void scale_output(void* c, int64_t count, DType dt, float beta) {
  if (dt == DType::f32) {
    float* p = static_cast<float*>(c);
    for (int64_t i = 0; i < count; ++i) p[i] = beta == 0.0f ? 0.0f : beta * p[i];
  } else {
    uint16_t* p = static_cast<uint16_t*>(c);
    for (int64_t i = 0; i < count; ++i)
      p[i] = beta == 0.0f ? uint16_t(0) : f32_to_bf16(beta * bf16_to_f32(p[i]));
  }
}

// Runs problem `p` on pointers to element 0 of a, b and out.
void matmul(const char* op, const Problem& p, Varying varying, const void* a, const void* b,
            void* c) {
  const int64_t batches = p.batch ? p.batch : 1;
  if (batches == 0 || p.m == 0 || p.n == 0) return;
  if (p.k == 0) return scale_output(c, batches * p.m * p.n, p.out, p.beta);
  Problem key = p;
  if (varying == Varying::m) key.m = kRuntime;
  if (varying == Varying::k) key.k = kRuntime;
  std::shared_ptr<Entry> entry = cache().get(op, key);
  dnnl::stream& s = stream();
  // One execution of a primitive at a time: this oneDNN build keeps a primitive's scratchpad with
  // the primitive, so two threads running the same one at once would share it.
  std::lock_guard<std::mutex> lock(entry->args_mu);
  if (varying == Varying::none) {
    entry->args[DNNL_ARG_SRC].set_data_handle(const_cast<void*>(a));
    entry->args[DNNL_ARG_WEIGHTS].set_data_handle(const_cast<void*>(b));
    entry->args[DNNL_ARG_DST].set_data_handle(c);
    entry->primitive.execute(s, entry->args);
    s.wait();
    return;
  }
  // Run-time dimensions: memory descriptors with this call's actual sizes.
  const Descs d = descs_of(p);
  memory ma(d.a, engine(), const_cast<void*>(a)), mb(d.b, engine(), const_cast<void*>(b)),
      mc(d.c, engine(), c);
  entry->primitive.execute(s, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
  s.wait();
}

const char* bytes(const Tensor& t) {
  return static_cast<const char*>(t.data());
}
char* bytes(Tensor& t) {
  return static_cast<char*>(t.data());
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt) {
  const bool batched = a.dim() == 3;
  Problem p;
  p.batch = batched ? a.size(0) : 0;
  p.m = out.size(-2);
  p.n = out.size(-1);
  p.k = opt.trans_a ? a.size(-2) : a.size(-1);
  p.trans_a = opt.trans_a;
  p.trans_b = opt.trans_b;
  p.in = a.dtype();
  p.out = out.dtype();
  p.alpha = opt.alpha;
  p.beta = opt.beta;
  matmul(batched ? "batched_gemm" : "gemm", p, Varying::none, a.data(), b.data(), out.data());
}

// With fixed_rows, a group's rows run in chunks of exactly kFixedRows rows (the last one padded
// with zero rows in scratch) through one fixed-size primitive: every row is then computed by the
// same kernel whatever its group's size or its place in the group.
constexpr int64_t kFixedRows = 8;

void grouped_gemm(const Tensor& x, const Tensor& w, std::span<const int64_t> group_rows,
                  Tensor& out, bool trans_w, float alpha, float beta, bool fixed_rows) {
  const int64_t k = x.size(1), n = out.size(1);
  const size_t xs = dtype_size(x.dtype()), ws = xs, os = dtype_size(out.dtype());
  thread_local std::vector<char> xpad, opad;
  int64_t row = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    const int64_t rows = group_rows[g];
    if (rows == 0) continue;
    Problem p{.m = fixed_rows ? kFixedRows : rows,
              .n = n,
              .k = k,
              .trans_b = trans_w,
              .in = x.dtype(),
              .out = out.dtype(),
              .alpha = alpha,
              .beta = beta};
    const char* wg = bytes(w) + int64_t(g) * k * n * ws;
    if (!fixed_rows) {
      matmul("grouped_gemm", p, Varying::m, bytes(x) + row * k * xs, wg, bytes(out) + row * n * os);
      row += rows;
      continue;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += kFixedRows) {
      const int64_t r = std::min(kFixedRows, rows - r0);
      const char* xr = bytes(x) + (row + r0) * k * xs;
      char* orow = bytes(out) + (row + r0) * n * os;
      if (r == kFixedRows) {
        matmul("grouped_gemm", p, Varying::none, xr, wg, orow);
        continue;
      }
      xpad.assign(size_t(kFixedRows * k) * xs, 0);
      opad.assign(size_t(kFixedRows * n) * os, 0);
      std::memcpy(xpad.data(), xr, size_t(r * k) * xs);
      std::memcpy(opad.data(), orow, size_t(r * n) * os);  // beta reads the output
      matmul("grouped_gemm", p, Varying::none, xpad.data(), wg, opad.data());
      std::memcpy(orow, opad.data(), size_t(r * n) * os);
    }
    row += rows;
  }
}

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& dout,
                           std::span<const int64_t> group_rows, Tensor& dx, Tensor& dw,
                           bool trans_w, bool accumulate_dx) {
  const int64_t k = x.size(1), n = dout.size(1);
  const size_t es = dtype_size(x.dtype());
  int64_t row = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    const int64_t rows = group_rows[g];
    if (rows == 0) continue;
    const char* x_g = bytes(x) + row * k * es;             // [rows, k]
    const char* dout_g = bytes(dout) + row * n * es;       // [rows, n]
    const char* w_g = bytes(w) + int64_t(g) * k * n * es;  // [k, n] or [n, k]
    if (dx.defined()) {
      // dx_g [rows, k] = dout_g [rows, n] @ op(w_g)^T [n, k]
      Problem p{.m = rows,
                .n = k,
                .k = n,
                .trans_b = !trans_w,
                .in = x.dtype(),
                .out = dx.dtype(),
                .beta = accumulate_dx ? 1.0f : 0.0f};
      matmul("grouped_gemm_backward", p, Varying::m, dout_g, w_g,
             bytes(dx) + row * k * dtype_size(dx.dtype()));
    }
    if (dw.defined()) {
      // dw_g [k, n] += x_g^T @ dout_g, or with trans_w dw_g [n, k] += dout_g^T @ x_g; the rows
      // are the inner dimension here.
      char* dw_g = bytes(dw) + int64_t(g) * k * n * dtype_size(dw.dtype());
      Problem p{.m = trans_w ? n : k,
                .n = trans_w ? k : n,
                .k = rows,
                .trans_a = true,
                .in = x.dtype(),
                .out = dw.dtype(),
                .beta = 1.0f};
      matmul("grouped_gemm_backward", p, Varying::k, trans_w ? dout_g : x_g, trans_w ? x_g : dout_g,
             dw_g);
    }
    row += rows;
  }
}

size_t cached_primitives() {
  return cache().size();
}
uint64_t primitives_created() {
  return cache().created();
}

}  // namespace origami::ops::cpu
