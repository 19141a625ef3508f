// Bus bandwidth of the host collectives through origami's Communicator next to the raw MPI calls,
// measured in the same run (method below). Run under MPI:
//
//   mpirun --allow-run-as-root -np 2 build/bin/bench_comm [--max-mib 64] [--samples 41]
//                                                   [--sample-ms 2]
//
// Bus bandwidth follows the nccl-tests convention, so that figures compare across rank counts:
//   all_reduce      S / t * 2(n-1)/n     (S: the buffer)
//   all_gather      S / t * (n-1)/n      (S: the gathered output)
//   reduce_scatter  S / t * (n-1)/n      (S: the input)
//   all_to_all      S / t * (n-1)/n      (S: the buffer sent by each rank)
// Columns: raw blocking MPI (MPI_Allreduce, ...), raw non-blocking MPI (MPI_Iallreduce + MPI_Wait,
// the calls the Communicator is built on), and the Communicator (checks, arrival record, polling
// against the deadline). "ratio" is Communicator bandwidth / raw blocking bandwidth.
//
// Method, for shared and noisy machines: many short samples (a batch of calls lasting about
// --sample-ms), the three variants alternating sample by sample with the order flipped every
// round, so background load falls on all of them alike. The bandwidth columns are from each
// variant's best sample (the one least disturbed by other processes); the two ratios compare the
// best samples and the median samples.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/world.h"

using namespace origami;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of `fn`, the slowest rank's, over `iters` calls.
double time_calls(const std::function<void()>& fn, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = now_s();
  for (int i = 0; i < iters; ++i) fn();
  double local = (now_s() - start) / iters, worst = 0;
  MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

void wait(MPI_Request& r) {
  MPI_Wait(&r, MPI_STATUS_IGNORE);
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  int64_t max_bytes = int64_t(64) << 20;
  int samples = 41;
  double sample_s = 0.002;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-mib") && i + 1 < argc) max_bytes = std::atoll(argv[++i]) << 20;
    if (!std::strcmp(argv[i], "--samples") && i + 1 < argc) samples = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--sample-ms") && i + 1 < argc) sample_s = std::atof(argv[++i]) / 1e3;
  }
  auto world = mpi_world_communicator();
  const int n = world->size(), me = world->rank();
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  if (me == 0) {
    std::printf(
        "bench_comm: %d ranks, f32, %d alternating samples, bus bandwidth GB/s of the best\n", n,
        samples);
    std::printf("%-15s %10s %10s %12s %12s %8s %8s %10s\n", "op", "bytes", "mpi", "mpi-nonblk",
                "communicator", "ratio", "ratio-md", "comm us");
  }
  struct Op {
    const char* name;
    double factor;  // bus bandwidth factor
  };
  const Op ops[] = {{"all_reduce", 2.0 * (n - 1) / n},
                    {"all_gather", double(n - 1) / n},
                    {"reduce_scatter", double(n - 1) / n},
                    {"all_to_all", double(n - 1) / n}};
  for (const Op& op : ops) {
    for (int64_t bytes = 1024; bytes <= max_bytes; bytes *= 4) {
      const int64_t total = bytes / 4 / n * n;  // elements, divisible by n
      const int64_t piece = total / n;
      const int count = int(total), pc = int(piece);
      Tensor a = Tensor::zeros({total}, DType::f32), b = Tensor::zeros({total}, DType::f32);
      Tensor small = a.narrow(0, 0, piece), small_b = b.narrow(0, 0, piece);
      float* ap = a.data_as<float>();
      float* bp = b.data_as<float>();
      const std::string name = op.name;
      std::function<void()> blocking, nonblocking, ours;
      if (name == "all_reduce") {
        blocking = [&] { MPI_Allreduce(MPI_IN_PLACE, ap, count, MPI_FLOAT, MPI_SUM, raw); };
        nonblocking = [&] {
          MPI_Request r;
          MPI_Iallreduce(MPI_IN_PLACE, ap, count, MPI_FLOAT, MPI_SUM, raw, &r);
          wait(r);
        };
        ours = [&] { world->all_reduce(a); };
      } else if (name == "all_gather") {
        blocking = [&] { MPI_Allgather(ap, pc, MPI_FLOAT, bp, pc, MPI_FLOAT, raw); };
        nonblocking = [&] {
          MPI_Request r;
          MPI_Iallgather(ap, pc, MPI_FLOAT, bp, pc, MPI_FLOAT, raw, &r);
          wait(r);
        };
        ours = [&] { world->all_gather(small, b); };
      } else if (name == "reduce_scatter") {
        blocking = [&] { MPI_Reduce_scatter_block(ap, bp, pc, MPI_FLOAT, MPI_SUM, raw); };
        nonblocking = [&] {
          MPI_Request r;
          MPI_Ireduce_scatter_block(ap, bp, pc, MPI_FLOAT, MPI_SUM, raw, &r);
          wait(r);
        };
        ours = [&] { world->reduce_scatter(a, small_b); };
      } else {
        blocking = [&] { MPI_Alltoall(ap, pc, MPI_FLOAT, bp, pc, MPI_FLOAT, raw); };
        nonblocking = [&] {
          MPI_Request r;
          MPI_Ialltoall(ap, pc, MPI_FLOAT, bp, pc, MPI_FLOAT, raw, &r);
          wait(r);
        };
        ours = [&] { world->all_to_all(a, b); };
      }
      // Calls per sample from one warm-up call of each, so a sample lasts about sample_s.
      blocking();
      nonblocking();
      ours();
      const double probe = time_calls(blocking, 2);
      const int batch = int(std::clamp(sample_s / std::max(probe, 1e-7), 1.0, 1000.0));
      const std::function<void()>* variants[3] = {&blocking, &nonblocking, &ours};
      std::vector<double> times[3];
      for (int s = 0; s < samples; ++s) {
        for (int k = 0; k < 3; ++k) {
          const int v = s % 2 ? 2 - k : k;
          times[v].push_back(time_calls(*variants[v], batch));
        }
      }
      double best[3], median[3];
      for (int v = 0; v < 3; ++v) {
        std::sort(times[v].begin(), times[v].end());
        best[v] = times[v].front();
        median[v] = times[v][times[v].size() / 2];
      }
      const double size = double(total) * 4;
      const auto busbw = [&](double t) { return size / t * op.factor / 1e9; };
      if (me == 0)
        std::printf("%-15s %10.0f %10.3f %12.3f %12.3f %8.3f %8.3f %10.1f\n", op.name, size,
                    busbw(best[0]), busbw(best[1]), busbw(best[2]), best[0] / best[2],
                    median[0] / median[2], best[2] * 1e6);
      std::fflush(stdout);
    }
  }
  MPI_Comm_free(&raw);
  world.reset();
  return 0;
}
