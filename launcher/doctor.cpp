// origami doctor: what this machine (and, under a launcher, every rank) offers origami: ranks,
// hosts, local ranks, devices, library versions, a short all-reduce and a GEMM check, and advice
// for whatever is missing or does not match.
#include <dlfcn.h>
#include <mpi.h>
#include <omp.h>
#include <unistd.h>

#include <google/protobuf/stubs/common.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <dnnl.hpp>
#include <nlohmann/json.hpp>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "ops/gemm.h"
#include "parallel/communicator.h"
#include "parallel/world.h"
#include "runtime/device.h"
#include "runtime/tensor.h"

#if __has_include(<ucp/api/ucp_version.h>)
#include <ucp/api/ucp_version.h>
#define ORIGAMI_UCX_HEADER 1
#else
#define ORIGAMI_UCX_HEADER 0
#endif

#if ORIGAMI_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace origami::cli {

namespace {

using json = nlohmann::json;

std::string version_text(int major, int minor, int patch) {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

// Everything one rank knows about itself; rank 0 prints them all.
json probe_rank(const World& w) {
  json j;
  j["rank"] = w.rank;
  j["host"] = w.hostname;
  j["local_rank"] = w.local_rank;
  j["local_size"] = w.local_size;
  j["node"] = w.node;
  j["device"] = w.device.str();
  j["launcher"] = w.launcher;
  j["pid"] = int64_t(getpid());
  j["omp_threads"] = omp_get_max_threads();
  j["cores"] = int(std::max(1u, std::thread::hardware_concurrency()));

  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  std::string mpi_text(mpi, size_t(len));
  if (size_t nl = mpi_text.find('\n'); nl != std::string::npos) mpi_text.resize(nl);
  while (!mpi_text.empty() && (mpi_text.back() == '\0' || mpi_text.back() == ' '))
    mpi_text.pop_back();
  j["mpi"] = mpi_text;
  j["mpi_standard"] = std::to_string(MPI_VERSION) + "." + std::to_string(MPI_SUBVERSION);

  const dnnl_version_t* v = dnnl_version();
  j["onednn"] = version_text(v->major, v->minor, v->patch);
  j["onednn_header"] = version_text(DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR, DNNL_VERSION_PATCH);
  j["onednn_runtime"] = v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other";
  j["protobuf"] = google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION);

  // UCX is loaded only to ask its version (origami uses it for bulk point-to-point transfers).
#if ORIGAMI_UCX_HEADER
  j["ucx_header"] = std::to_string(UCP_API_MAJOR) + "." + std::to_string(UCP_API_MINOR);
#endif
  if (void* lib = dlopen("libucp.so.0", RTLD_LAZY | RTLD_LOCAL)) {
    using Fn = const char* (*)();
    if (auto fn = reinterpret_cast<Fn>(dlsym(lib, "ucp_get_version_string"))) j["ucx"] = fn();
  }

#if ORIGAMI_CUDA
  int rt = 0, drv = 0, nccl = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  ncclGetVersion(&nccl);
  j["cuda_runtime"] = rt;
  j["cuda_driver"] = drv;
  j["nccl_header"] = NCCL_VERSION_CODE;
  j["nccl"] = nccl;
  json devices = json::array();
  for (int i = 0; i < cuda_device_count(); ++i) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, i);
    char buf[640];  // the device name is up to 256 characters
    std::snprintf(buf, sizeof buf, "cuda:%d %s, %.1f GiB, sm_%d%d", i, p.name,
                  double(p.totalGlobalMem) / 1073741824.0, p.major, p.minor);
    devices.push_back(buf);
  }
  j["cuda_devices"] = devices;
#endif
  if (const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES")) j["cuda_visible_devices"] = cvd;
  return j;
}

// "12.4" for 12040.
std::string cuda_version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

// "2.21.5" for 22105 (NCCL >= 2.9 codes) or 2708 (older).
std::string nccl_version(int v) {
  if (v >= 10000) return version_text(v / 10000, v / 100 % 100, v % 100);
  return version_text(v / 1000, v / 100 % 10, v % 100);
}

// Prints the report from every rank's probe (on rank 0); returns the advice lines.
std::vector<std::string> print_report(const std::vector<json>& ranks) {
  std::vector<std::string> advice;
  const json& r0 = ranks[0];
  const int n = int(ranks.size());
  std::set<std::string> hosts;
  std::map<std::string, int> per_host;
  for (const json& r : ranks) {
    hosts.insert(r["host"].get<std::string>());
    ++per_host[r["host"].get<std::string>()];
  }
  std::printf("origami %s\n", ORIGAMI_VERSION);
  const std::string launcher = r0["launcher"].get<std::string>();
  std::printf("ranks: %d on %zu host(s), started by %s\n", n, hosts.size(),
              launcher == "torchrun" ? "origami launch / torchrun (RANK, WORLD_SIZE, ...)"
              : launcher == "single" ? "nobody (one process, no launcher)"
                                     : launcher.c_str());
  for (const json& r : ranks)
    std::printf(
        "  rank %d: host %s, local rank %d/%d, node %d, device %s, pid %lld, %d OpenMP "
        "thread(s) of %d cores\n",
        r["rank"].get<int>(), r["host"].get<std::string>().c_str(), r["local_rank"].get<int>(),
        r["local_size"].get<int>(), r["node"].get<int>(), r["device"].get<std::string>().c_str(),
        static_cast<long long>(r["pid"].get<int64_t>()), r["omp_threads"].get<int>(),
        r["cores"].get<int>());

  std::printf("libraries (rank 0):\n");
  std::printf("  MPI: %s (MPI standard %s)\n", r0["mpi"].get<std::string>().c_str(),
              r0["mpi_standard"].get<std::string>().c_str());
  std::printf("  oneDNN: %s (header %s, %s runtime)\n", r0["onednn"].get<std::string>().c_str(),
              r0["onednn_header"].get<std::string>().c_str(),
              r0["onednn_runtime"].get<std::string>().c_str());
  std::printf("  Protobuf: %s (header; the library checks it matches at start-up)\n",
              r0["protobuf"].get<std::string>().c_str());
  const std::string ucx = r0.value("ucx", std::string());
  const std::string ucx_header = r0.value("ucx_header", std::string());
  std::printf("  UCX: %s%s\n", ucx.empty() ? "library not found (libucp.so.0)" : ucx.c_str(),
              ucx_header.empty() ? " (no headers)" : (" (header " + ucx_header + ")").c_str());
  if (ucx.empty())
    advice.push_back(
        "UCX is missing: install it (Debian: apt install libucx0 libucx-dev) for the "
        "point-to-point transfers between heterogeneous ranks (attention offload, KV migration)");
  if (r0.contains("cuda_runtime")) {
    const int rt = r0["cuda_runtime"].get<int>(), drv = r0["cuda_driver"].get<int>();
    std::printf("  CUDA: runtime %s, driver %s\n", cuda_version(rt).c_str(),
                drv ? cuda_version(drv).c_str() : "none (no NVIDIA driver loaded)");
    const int nh = r0["nccl_header"].get<int>(), nl = r0["nccl"].get<int>();
    std::printf("  NCCL: header %s, library %s\n", nccl_version(nh).c_str(),
                nccl_version(nl).c_str());
    if (drv && drv < rt)
      advice.push_back("the NVIDIA driver supports CUDA " + cuda_version(drv) +
                       " but origami was built with runtime " + cuda_version(rt) +
                       ": update the driver, or build with an older CUDA toolkit");
    if (nccl_version(nh).substr(0, nccl_version(nh).rfind('.')) !=
        nccl_version(nl).substr(0, nccl_version(nl).rfind('.')))
      advice.push_back("NCCL header " + nccl_version(nh) + " and library " + nccl_version(nl) +
                       " differ: point LD_LIBRARY_PATH at the NCCL origami was built with, or "
                       "rebuild against the installed one");
  } else {
    std::printf("  CUDA: not built (ORIGAMI_CUDA=OFF): every op runs on the CPU\n");
    std::printf("  NCCL: not built (host collectives go through MPI)\n");
  }

  std::printf("devices:\n");
  for (const std::string& host : hosts) {
    const json* first = nullptr;
    for (const json& r : ranks)
      if (r["host"] == host) {
        first = &r;
        break;
      }
    const json devs = first->value("cuda_devices", json::array());
    std::printf(
        "  %s: %zu CUDA device(s)%s\n", host.c_str(), devs.size(),
        first->contains("cuda_visible_devices")
            ? (", CUDA_VISIBLE_DEVICES=" + first->at("cuda_visible_devices").get<std::string>())
                  .c_str()
            : "");
    for (const json& d : devs) std::printf("    %s\n", d.get<std::string>().c_str());
    if (first->contains("cuda_runtime") && devs.empty())
      advice.push_back(host +
                       ": no usable GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES); ops run on "
                       "the CPU");
    if (!devs.empty() && per_host[host] > int(devs.size()))
      advice.push_back(host + ": " + std::to_string(per_host[host]) + " ranks share " +
                       std::to_string(devs.size()) +
                       " GPU(s) (device = local rank mod GPUs): use one rank per GPU");
  }

  // Things that must match between ranks.
  for (const char* key :
       {"mpi", "onednn", "protobuf", "ucx", "cuda_runtime", "cuda_driver", "nccl"}) {
    std::set<std::string> seen;
    for (const json& r : ranks) seen.insert(r.contains(key) ? r[key].dump() : "none");
    if (seen.size() > 1) {
      std::string list;
      for (const std::string& s : seen) list += (list.empty() ? "" : " / ") + s;
      advice.push_back(std::string("ranks run different ") + key + " versions (" + list +
                       "): install the same software on every host");
    }
  }
  for (const auto& [host, count] : per_host) {
    for (const json& r : ranks) {
      if (r["host"] != host) continue;
      const int threads = r["omp_threads"].get<int>(), cores = r["cores"].get<int>();
      if (threads > 1 && threads * count > cores)
        advice.push_back(
            host + ": " + std::to_string(count) + " rank(s) x " + std::to_string(threads) +
            " OpenMP threads > " + std::to_string(cores) + " cores: set OMP_NUM_THREADS=" +
            std::to_string(std::max(1, cores / count)) + " (origami launch does this for you)");
      else if (count > cores)
        advice.push_back(host + ": " + std::to_string(count) + " ranks on " +
                         std::to_string(cores) +
                         " cores: fine for tests, slow for real work (one rank per GPU or socket)");
      break;
    }
  }
  if (n == 1)
    advice.push_back(
        "one rank: run 'origami launch -n 2 -- doctor' (or 'mpirun -np 2 origami doctor') to "
        "check the ranks and time an all-reduce");
  return advice;
}

}  // namespace

int doctor(int argc, char** argv) {
  Flags flags("doctor", "[options]",
              "Prints ranks, hosts, devices and library versions (CUDA, NCCL, MPI, UCX, oneDNN,\n"
              "Protobuf), times an all-reduce over the ranks and a GEMM on the CPU, and gives\n"
              "advice on what is missing or does not match. Run it under a launcher to check\n"
              "every rank: origami launch -n 4 -- doctor, or mpirun -np 4 origami doctor.");
  flags.add("gemm-size", "1024", "size N of the N x N x N fp32 GEMM check (0 skips it)");
  flags.add("allreduce-mb", "4", "MiB of fp32 all-reduced over the ranks (0 skips it)");
  flags.add("allreduce-reps", "5", "timed all-reduces (after one warm-up)");
  if (!flags.parse(argc, argv)) return 0;
  ORIGAMI_CHECK(flags.positional().empty(), "origami doctor takes no arguments, got '",
                flags.positional()[0], "'");

  // Several ranks when a launcher says so; then MPI gives the world and the all-reduce.
  const LaunchEnvironment env = read_launch_environment(current_environment());
  const bool multi = env.world_size.value_or(1) > 1;
  std::optional<MpiSession> mpi;
  if (multi) mpi.emplace(&argc, &argv);
  World w = multi ? world_from_mpi()
                  : world_from_environment(current_environment(), {}, cuda_device_count());

  // Every rank's probe, gathered on rank 0 as JSON text.
  const std::string mine = probe_rank(w).dump();
  std::vector<json> ranks;
  if (multi) {
    int len = int(mine.size());
    std::vector<int> lens(size_t(w.world_size)), offs(size_t(w.world_size));
    MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
    int total = 0;
    for (int r = 0; r < w.world_size; ++r) {
      offs[size_t(r)] = total;
      total += lens[size_t(r)];
    }
    std::string all(size_t(std::max(total, 1)), '\0');
    MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), offs.data(), MPI_CHAR, 0,
                MPI_COMM_WORLD);
    if (w.rank == 0)
      for (int r = 0; r < w.world_size; ++r)
        ranks.push_back(json::parse(all.substr(size_t(offs[size_t(r)]), size_t(lens[size_t(r)]))));
  } else {
    ranks.push_back(json::parse(mine));
  }
  std::vector<std::string> advice;
  if (w.rank == 0) advice = print_report(ranks);

  // A short all-reduce over the world, the way training runs it (origami's MPI communicator).
  const int64_t mb = flags.get_int("allreduce-mb");
  const int reps = int(std::max<int64_t>(1, flags.get_int("allreduce-reps")));
  if (multi && mb > 0) {
    std::unique_ptr<Communicator> world = mpi_world_communicator(std::chrono::seconds(60));
    const int64_t n = mb * (int64_t(1) << 20) / 4;
    Tensor t = Tensor::zeros({n}, DType::f32);
    for (int64_t i = 0; i < n; i += 4096) t.data_as<float>()[i] = 1.0f;
    world->all_reduce(t);  // warm-up
    const bool correct = t.data_as<float>()[0] == float(w.world_size);
    world->barrier();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) world->all_reduce(t);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    int ok = correct ? 1 : 0, all_ok = 0;
    MPI_Reduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, 0, MPI_COMM_WORLD);
    if (w.rank == 0) {
      const double bytes = double(n) * 4, p = double(w.world_size);
      std::printf(
          "all-reduce over %d ranks (mpi, f32, %lld MiB, %d reps): %.2f ms, algbw %.2f "
          "GB/s, busbw %.2f GB/s%s\n",
          w.world_size, static_cast<long long>(mb), reps, s * 1e3, bytes / s / 1e9,
          bytes / s / 1e9 * 2.0 * (p - 1) / p, all_ok ? "" : " -- WRONG RESULT");
      if (!all_ok)
        advice.push_back(
            "the all-reduce gave a wrong sum: check the MPI transports "
            "(OMPI_MCA_btl / OMPI_MCA_pml)");
    }
  }

  // Quick GEMM check: N^3 fp32 on the CPU, on rank 0.
  const int64_t n = flags.get_int("gemm-size");
  if (n > 0 && w.rank == 0) {
    Tensor a = Tensor::zeros({n, n}, DType::f32), b = Tensor::zeros({n, n}, DType::f32),
           c = Tensor::empty({n, n}, DType::f32);
    ops::gemm(a, b, c);
    auto t0 = std::chrono::steady_clock::now();
    const int gemm_reps = 5;
    for (int i = 0; i < gemm_reps; ++i) ops::gemm(a, b, c);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("cpu gemm %lld^3 f32 (%d threads): %.1f GFLOP/s\n", static_cast<long long>(n),
                omp_get_max_threads(), 2.0 * double(n * n * n) * gemm_reps / s / 1e9);
  }
  if (w.rank == 0) {
    if (advice.empty()) {
      std::printf("advice: none, everything found\n");
    } else {
      std::printf("advice:\n");
      for (const std::string& a : advice) std::printf("  - %s\n", a.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace origami::cli
