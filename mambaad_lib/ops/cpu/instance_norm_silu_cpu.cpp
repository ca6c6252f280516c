// InstanceNorm (no affine, biased variance) followed by SiLU, on channels-last CPU maps.
//
// The map is (b, P, C) in memory (an NCHW tensor with channels-last strides, P = H*W). One
// task normalises one (batch, block of kLanes channels): its statistics are sums over P in a
// fixed order, so results are bit-identical for any thread count. Keeping the map channels-last
// lets the depthwise convolutions around it use oneDNN's direct kernels (in NCHW its backward
// weights primitive is a per-group GEMM that collapses when the machine is busy).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "vector_math.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;

using mambaad::sigmoid;

struct Shape {
  int64_t batch, pixels, channels;
  double eps;
};

Shape check(const torch::Tensor& x, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "instance_norm_silu_cpu: x must be a (B, C, H, W) CPU tensor");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
              "instance_norm_silu_cpu: x must be float32 or float64");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "instance_norm_silu_cpu: x must be channels-last");
  return {x.size(0), x.size(2) * x.size(3), x.size(1), eps};
}

// Runs fn(b, c0, c1) for every (batch, channel block) on torch's intra-op threads.
template <typename Fn>
void for_each_block(const Shape& s, Fn&& fn) {
  const int64_t blocks = (s.channels + kLanes - 1) / kLanes;
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * kLanes;
      fn(b, c0, std::min(c0 + kLanes, s.channels));
    }
  });
}

// Normalises one (b, channels c0..c1) block: statistics into mean / rstd, silu(normed) into y.
template <typename T>
void forward_block(const Shape& s, const T* x, T* y, T* mean, T* rstd, int64_t b, int64_t c0, int64_t c1) {
  const int64_t width = c1 - c0, offset = b * s.pixels * s.channels + c0;
  T sum[kLanes] = {}, sq[kLanes] = {}, m[kLanes], r[kLanes];
  for (int64_t p = 0; p < s.pixels; ++p) {
    const T* row = x + offset + p * s.channels;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) sum[j] += row[j];
  }
  for (int64_t j = 0; j < width; ++j) m[j] = sum[j] / T(s.pixels);
  for (int64_t p = 0; p < s.pixels; ++p) {  // two passes: the variance of centred values
    const T* row = x + offset + p * s.channels;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const T centred = row[j] - m[j];
      sq[j] += centred * centred;
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    r[j] = T(1) / std::sqrt(sq[j] / T(s.pixels) + T(s.eps));
    mean[b * s.channels + c0 + j] = m[j];
    rstd[b * s.channels + c0 + j] = r[j];
  }
  for (int64_t p = 0; p < s.pixels; ++p) {
    const T* row = x + offset + p * s.channels;
    T* dst = y + offset + p * s.channels;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const T normed = (row[j] - m[j]) * r[j];
      dst[j] = normed * sigmoid(normed);
    }
  }
}

// dLoss/dx of one block: with gn = grad * silu'(normed),
// dLoss/dx = rstd * (gn - mean_p(gn) - normed * mean_p(gn * normed)). gx holds gn between the passes.
template <typename T>
void backward_block(const Shape& s, const T* grad, const T* x, const T* mean, const T* rstd, T* gx, int64_t b,
                    int64_t c0, int64_t c1) {
  const int64_t width = c1 - c0, offset = b * s.pixels * s.channels + c0;
  T m[kLanes], r[kLanes], sum_g[kLanes] = {}, sum_gn[kLanes] = {};
  for (int64_t j = 0; j < width; ++j) {
    m[j] = mean[b * s.channels + c0 + j];
    r[j] = rstd[b * s.channels + c0 + j];
  }
  for (int64_t p = 0; p < s.pixels; ++p) {
    const T* row = x + offset + p * s.channels;
    const T* g = grad + offset + p * s.channels;
    T* gn_row = gx + offset + p * s.channels;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const T normed = (row[j] - m[j]) * r[j];
      const T sig = sigmoid(normed);
      const T gn = g[j] * sig * (T(1) + normed * (T(1) - sig));
      gn_row[j] = gn;
      sum_g[j] += gn;
      sum_gn[j] += gn * normed;
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    sum_g[j] /= T(s.pixels);
    sum_gn[j] /= T(s.pixels);
  }
  for (int64_t p = 0; p < s.pixels; ++p) {
    const T* row = x + offset + p * s.channels;
    T* dst = gx + offset + p * s.channels;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) {
      const T normed = (row[j] - m[j]) * r[j];
      dst[j] = r[j] * (dst[j] - sum_g[j] - normed * sum_gn[j]);
    }
  }
}

}  // namespace

std::vector<torch::Tensor> instance_norm_silu_forward(const torch::Tensor& x, double eps) {
  const Shape s = check(x, eps);
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mean = torch::empty({s.batch, s.channels}, x.options());
  auto rstd = torch::empty({s.batch, s.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_silu_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t *yp = y.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(), *rp = rstd.data_ptr<scalar_t>();
    for_each_block(s, [&](int64_t b, int64_t c0, int64_t c1) { forward_block(s, xp, yp, mp, rp, b, c0, c1); });
  });
  return {y, mean, rstd};
}

torch::Tensor instance_norm_silu_backward(const torch::Tensor& grad, const torch::Tensor& x,
                                          const torch::Tensor& mean, const torch::Tensor& rstd) {
  const Shape s = check(x, 0.0);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() &&
                  grad.is_contiguous(at::MemoryFormat::ChannelsLast),
              "instance_norm_silu_cpu: grad must be a channels-last tensor like x");
  TORCH_CHECK(mean.sizes() == rstd.sizes() && mean.numel() == s.batch * s.channels && mean.is_contiguous() &&
                  rstd.is_contiguous() && mean.scalar_type() == x.scalar_type(),
              "instance_norm_silu_cpu: mean and rstd must be the forward's (b, C) statistics");
  auto gx = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "instance_norm_silu_backward", [&] {
    const scalar_t *gp = grad.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    const scalar_t *mp = mean.data_ptr<scalar_t>(), *rp = rstd.data_ptr<scalar_t>();
    scalar_t* op = gx.data_ptr<scalar_t>();
    for_each_block(s, [&](int64_t b, int64_t c0, int64_t c1) { backward_block(s, gp, xp, mp, rp, op, b, c0, c1); });
  });
  return gx;
}
