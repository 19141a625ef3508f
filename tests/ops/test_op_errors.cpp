// Bad input to ops: errors that name the op, the shapes and what was expected.
#include "ops/check.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

TEST(OpChecks, MessagesNameOpShapeAndExpectation) {
  Tensor a = Tensor::empty({3, 4, 5}, DType::f32);
  try {
    ops::check_dim("gemm", "a", a, 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "gemm: a must be a 2-D tensor, got f32[3,4,5] cpu");
  }
  try {
    ops::check_dtype("softmax", "x", a, {DType::bf16, DType::f16});
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "softmax: x must be bf16 or f16, got f32[3,4,5] cpu");
  }
  EXPECT_THROW(ops::check_shape("rmsnorm", "w", a, {4}), Error);
  EXPECT_THROW(ops::check_contiguous("rope", "x", a.transpose(0, 1)), Error);
}

}  // namespace
}  // namespace origami
