// Compiles a kernel section once per instruction set: AVX-512, AVX2 (x86-64 with GCC) and a
// baseline build. Used by the CPU attention kernels (ops/cpu/attention.cpp,
// ops/cpu/paged_attention.cpp), which pick a variant at run time from what the CPU supports, so no
// -march flag is needed at build time. In the including file:
//
//   #ifndef ORIGAMI_ATTENTION_ISA
//   ... shared declarations ...
//   #define ORIGAMI_ISA_KERNEL_FILE "ops/cpu/this_file.cpp"
//   #include "ops/cpu/isa_variants.h"
//   ... dispatch, which names the variants' namespaces ...
//   #else
//   namespace ...::ORIGAMI_ATTENTION_ISA { the kernels (ORIGAMI_ATTENTION_LANES floats a vector) }
//   #endif
//
// The file includes itself once per variant under `#pragma GCC target`, with ORIGAMI_ATTENTION_ISA
// set to avx512, avx2 or generic. ORIGAMI_ATTENTION_HAS_X86_VARIANTS says whether the first two
// exist. (No include guard: a file includes this once.)
//
// A file that also wants the AVX-512 BF16 and VNNI instructions (vdpbf16ps, vpdpbusd) defines
// ORIGAMI_ISA_WITH_BF16_VNNI before the include: a fourth variant, avx512_bf16_vnni, is then
// compiled first. Inside every variant ORIGAMI_ISA_AVX512 (the AVX-512 intrinsics may be used) and
// ORIGAMI_ISA_BF16_VNNI (so may BF16 and VNNI) are 0 or 1: GCC's target pragma does not define
// __AVX512F__ and friends, so the kernels test these instead.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ORIGAMI_ATTENTION_HAS_X86_VARIANTS 1
#define ORIGAMI_ISA_AVX512 1
#ifdef ORIGAMI_ISA_WITH_BF16_VNNI
#define ORIGAMI_ATTENTION_ISA avx512_bf16_vnni
#define ORIGAMI_ATTENTION_LANES 16
#define ORIGAMI_ISA_BF16_VNNI 1
#pragma GCC push_options
#pragma GCC target( \
    "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c,bmi,bmi2")
#include ORIGAMI_ISA_KERNEL_FILE
#pragma GCC pop_options
#undef ORIGAMI_ATTENTION_ISA
#undef ORIGAMI_ATTENTION_LANES
#undef ORIGAMI_ISA_BF16_VNNI
#endif
#define ORIGAMI_ISA_BF16_VNNI 0
#define ORIGAMI_ATTENTION_ISA avx512
#define ORIGAMI_ATTENTION_LANES 16
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2")
#include ORIGAMI_ISA_KERNEL_FILE
#pragma GCC pop_options
#undef ORIGAMI_ATTENTION_ISA
#undef ORIGAMI_ATTENTION_LANES
#undef ORIGAMI_ISA_AVX512
#define ORIGAMI_ISA_AVX512 0
#define ORIGAMI_ATTENTION_ISA avx2
#define ORIGAMI_ATTENTION_LANES 8
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#include ORIGAMI_ISA_KERNEL_FILE
#pragma GCC pop_options
#undef ORIGAMI_ATTENTION_ISA
#undef ORIGAMI_ATTENTION_LANES
#else
#define ORIGAMI_ATTENTION_HAS_X86_VARIANTS 0
#define ORIGAMI_ISA_AVX512 0
#define ORIGAMI_ISA_BF16_VNNI 0
#endif
#define ORIGAMI_ATTENTION_ISA generic
#define ORIGAMI_ATTENTION_LANES 4
#include ORIGAMI_ISA_KERNEL_FILE
#undef ORIGAMI_ATTENTION_ISA
#undef ORIGAMI_ATTENTION_LANES
#undef ORIGAMI_ISA_AVX512
#undef ORIGAMI_ISA_BF16_VNNI
#undef ORIGAMI_ISA_KERNEL_FILE
