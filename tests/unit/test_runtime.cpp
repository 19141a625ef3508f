// Runtime core: dtype conversions, tensor views and copies, arenas and the memory plan.
#include <cmath>
#include <cstring>
#include <sstream>

#include "runtime/arena.h"
#include "runtime/stream.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::i64), 8u);
  EXPECT_EQ(dtype_from_name("bfloat16"), DType::bf16);
  EXPECT_THROW(dtype_from_name("f128"), Error);
}

// bf16 rounding against an independent bit-level reference: round-to-nearest-even of the top 16
// bits, computed here with integer arithmetic on the exact value.
TEST(DType, Bf16RoundsToNearestEven) {
  for (uint32_t hi = 0; hi < 0x7f80; hi += 37) {
    for (uint32_t lo : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      uint32_t u = hi << 16 | lo;
      float f;
      std::memcpy(&f, &u, 4);
      uint32_t expect = hi;
      if (lo > 0x8000u || (lo == 0x8000u && (hi & 1))) expect += 1;
      EXPECT_EQ(f32_to_bf16(f), expect) << std::hex << u;
      EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), round_bf16(f));
    }
  }
}

TEST(DType, F16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;  // inf / NaN
    const float f = f16_to_f32(uint16_t(h));
    EXPECT_EQ(f32_to_f16(f), uint16_t(h)) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor col = t.narrow(1, 1, 2);  // [[1,2],[4,5]]
  EXPECT_FALSE(col.is_contiguous());
  EXPECT_EQ(col.shape(), (Shape{2, 2}));
  Tensor c = col.contiguous();
  EXPECT_EQ(c.to_float_vector(), (std::vector<float>{1, 2, 4, 5}));
  Tensor tr = t.transpose(0, 1).contiguous();
  EXPECT_EQ(tr.to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  Tensor row = t.select(0, 1);
  EXPECT_EQ(row.to_float_vector(), (std::vector<float>{3, 4, 5}));
  row.fill_(9);
  EXPECT_EQ(t.to_float_vector(), (std::vector<float>{0, 1, 2, 9, 9, 9}));
  EXPECT_EQ(t.view({3, -1}).shape(), (Shape{3, 2}));
  EXPECT_THROW(col.view({4}), Error);
  EXPECT_THROW(t.view({4, 2}), Error);
  EXPECT_THROW(t.narrow(0, 1, 2), Error);
}

TEST(Tensor, DtypeConversions) {
  Tensor t = Tensor::from_vector({1.0f, -2.5f, 3.14159f}, {3});
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  auto back = b.to_float_vector();
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(back[2], round_bf16(3.14159f));
  Tensor i = Tensor::from_vector_i64({(int64_t(1) << 40) + 3, -7}, {2});
  EXPECT_EQ(i.clone().data_as<int64_t>()[0], (int64_t(1) << 40) + 3);
  EXPECT_EQ(i.to(DType::i32).data_as<int32_t>()[1], -7);
}

TEST(Tensor, ErrorsNameTheProblem) {
  Tensor a = Tensor::empty({2, 3}, DType::f32);
  Tensor b = Tensor::empty({3, 2}, DType::f32);
  try {
    a.copy_from(b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2,3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3,2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tensor::empty({-1}, DType::f32), Error);
}

TEST(Device, CudaCountIsZeroOrUsable) {
  const int n = cuda_device_count();
  EXPECT_GE(n, 0);
  if (n == 0) {
    EXPECT_THROW(Tensor::empty({4}, DType::f32, Device::cuda(0)), Error);
  }
  Tensor p = Tensor::empty_pinned({16}, DType::f32);
  p.fill_(2.0);
  EXPECT_EQ(p.to_float_vector()[15], 2.0f);
}

TEST(Device, CopiesRoundTripThroughTheTestDevice) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor t = test::random_tensor({5, 7}, DType::f32, 1);
  Tensor d = test::on_test_device(t);
  Tensor dt = d.transpose(0, 1).contiguous().to(DType::bf16);
  Tensor back = dt.to(Device::cpu());
  Tensor ref = t.transpose(0, 1).contiguous().to(DType::bf16);
  EXPECT_EQ(back.to_float_vector(), ref.to_float_vector());
}

TEST(Arena, BumpAllocatesAndRefusesOverflow) {
  MemoryPlan plan;
  plan.add("activations", "x", {10, 10}, DType::f32);
  plan.add("activations", "y", {3}, DType::bf16);
  plan.add("parameters", "w", {5}, DType::f32);
  EXPECT_EQ(plan.arena_bytes("activations"), 512u);  // 400 -> 448, 6 -> 64 (64-byte aligned)
  EXPECT_EQ(plan.arena_bytes("parameters"), 64u);
  std::ostringstream os;
  plan.print(os);
  EXPECT_NE(os.str().find("activations"), std::string::npos);
  Arena arena("activations", plan.arena_bytes("activations"));
  Tensor x = arena.allocate({10, 10}, DType::f32);
  Tensor y = arena.allocate({3}, DType::bf16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data()) % kAlignment, 0u);
  EXPECT_EQ(static_cast<char*>(y.data()) - static_cast<char*>(x.data()), 448);
  EXPECT_THROW(arena.allocate({1}, DType::f32), Error);
  arena.reset();
  EXPECT_EQ(arena.allocate({1}, DType::f32).data(), x.data());
  EXPECT_EQ(arena.high_water(), 512u);
}

TEST(Stream, CpuEventsMeasureTime) {
  Event a(Device::cpu()), b(Device::cpu());
  a.record();
  b.record();
  EXPECT_GE(b.elapsed_ms(a), 0.0f);
}

}  // namespace
}  // namespace origami
