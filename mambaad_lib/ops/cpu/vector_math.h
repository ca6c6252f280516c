// Scalar math that the compiler vectorises (inline, no libm calls), shared by the CPU kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mambaad {

#define MAMBAAD_INLINE inline __attribute__((always_inline))

// exp for float that the compiler vectorises: Cody-Waite range reduction and a degree-6
// polynomial (about 1 ulp on the reduced range). Arguments below -87.3 give exactly 0, as exp
// underflows; arguments above 88.7 are clamped (finite).
MAMBAAD_INLINE float scan_exp(float x) {
  const float clamped = std::min(std::max(x, -87.3f), 88.7f);
  const float k = std::floor(clamped * 1.44269504088896341f + 0.5f);  // round(x / ln 2)
  const float r = (clamped - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float scale;
  std::memcpy(&scale, &exponent, sizeof(float));
  return x < -87.3f ? 0.0f : p * scale;
}

MAMBAAD_INLINE double scan_exp(double x) { return std::exp(x); }

// log1p for w in [0, 1] that the compiler vectorises: log1p(w) = 2 atanh(w / (2 + w)), an
// odd series in s = w / (2 + w) <= 1/3 (truncation below 1e-9 relative). It never forms
// 1 + w, so tiny w keep their relative accuracy.
MAMBAAD_INLINE float scan_log1p_unit(float w) {
  const float s = w / (2.0f + w);
  const float s2 = s * s;
  float series = 1.0f / 15.0f;
  series = series * s2 + 1.0f / 13.0f;
  series = series * s2 + 1.0f / 11.0f;
  series = series * s2 + 1.0f / 9.0f;
  series = series * s2 + 1.0f / 7.0f;
  series = series * s2 + 1.0f / 5.0f;
  series = series * s2 + 1.0f / 3.0f;
  series = series * s2 + 1.0f;
  return 2.0f * s * series;
}

MAMBAAD_INLINE double scan_log1p_unit(double w) { return std::log1p(w); }

// torch's softplus (threshold 20) as max(v, 0) + log1p(exp(-|v|)), and its derivative, the
// sigmoid; the _given forms take w = exp(-|v|), for a caller that needs both.
template <typename T>
MAMBAAD_INLINE T softplus_given(T v, T w) {
  return v > T(20) ? v : std::max(v, T(0)) + scan_log1p_unit(w);
}

template <typename T>
MAMBAAD_INLINE T sigmoid_given(T v, T w) {
  return (v >= T(0) ? T(1) : w) / (T(1) + w);
}

template <typename T>
MAMBAAD_INLINE T softplus(T v) {
  return softplus_given(v, scan_exp(-std::abs(v)));
}

template <typename T>
MAMBAAD_INLINE T sigmoid(T v) {
  return sigmoid_given(v, scan_exp(-std::abs(v)));
}

}  // namespace mambaad
