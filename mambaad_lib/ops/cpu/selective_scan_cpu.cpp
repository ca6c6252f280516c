// Fused selective scan (Mamba S6) for CPU tensors: forward and backward, float32 and float64.
//
// One task walks one (batch, channel) sequence with its state of n values kept in registers:
// softplus(delta + bias), exp(delta * A), the recurrence, the C contraction, the D skip and
// the z gate happen in a single pass over memory. B and C are read in a (L, n) layout so
// that the inner loop over the state dimension is contiguous and vectorises.
//
// The backward recomputes each sequence's states into a per-task (L + 1) x n buffer and
// runs the adjoint recurrence backwards in time. Everything summed over channels or batch
// (dA, dD, ddelta_bias, grouped dB / dC) is accumulated per task in a fixed order and then
// reduced in a fixed order, with a task split that does not depend on the thread count:
// gradients are bit-identical run to run and for any torch.set_num_threads value.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Channels of one group handled sequentially by one backward task: fixed, so the summation
// order of grouped dB / dC never depends on how many threads run.
constexpr int64_t kBackwardChannelBlock = 32;

#define MAMBAAD_INLINE inline __attribute__((always_inline))

// exp for float that the compiler vectorises over the state dimension: Cody-Waite range
// reduction and a degree-6 polynomial (about 1 ulp on the reduced range). Arguments below
// -87.3 give exactly 0, as exp underflows; arguments above 88.7 are clamped (finite).
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

// out[t] = sigmoid(x[t] + offset), vectorised and without overflow.
template <typename T>
void sigmoids(const T* x, T offset, int64_t length, T* out) {
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) {
    const T v = x[t] + offset;
    const T w = scan_exp(-std::abs(v));
    out[t] = (v >= T(0) ? T(1) : w) / (T(1) + w);
  }
}

// Per-time-step quantities of one sequence, computed in vectorised loops before the
// recurrence so that no scalar exp or log sits on the recurrence's path:
//   dt[t]  = softplus(delta + bias) (or delta + bias)
//   ddt[t] = d dt / d(delta + bias), backward only (null in the forward)
template <typename T>
void step_sizes(const T* delta, T bias, bool softplus, int64_t length, T* dt, T* ddt) {
  if (!softplus) {
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) dt[t] = delta[t] + bias;
    if (ddt) std::fill(ddt, ddt + length, T(1));
    return;
  }
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) {
    // torch's softplus (threshold 20), as max(v, 0) + log1p(exp(-|v|)) to avoid overflow.
    const T v = delta[t] + bias;
    dt[t] = v > T(20) ? v : std::max(v, T(0)) + scan_log1p_unit(scan_exp(-std::abs(v)));
  }
  if (ddt) {
    sigmoids(delta, bias, length, ddt);
    for (int64_t t = 0; t < length; ++t)
      if (delta[t] + bias > T(20)) ddt[t] = T(1);  // the threshold's branch is the identity
  }
}
// Raw pointers and sizes of one call; optional tensors are null pointers.
template <typename T>
struct ScanArgs {
  const T* u;      // (b, d, L)
  const T* delta;  // (b, d, L)
  const T* A;      // (d, n)
  const T* B;      // (b, g, L, n)
  const T* C;      // (b, g, L, n)
  const T* D;      // (d) or null
  const T* z;      // (b, d, L) or null
  const T* bias;   // (d) or null
  bool softplus;
  int64_t batch, channels, length, state, groups;

  int64_t row(int64_t b, int64_t c) const { return (b * channels + c) * length; }
  int64_t bc_offset(int64_t b, int64_t c) const {
    return (b * groups + c / (channels / groups)) * length * state;
  }
  T bias_of(int64_t c) const { return bias ? bias[c] : T(0); }
  T D_of(int64_t c) const { return D ? D[c] : T(0); }
};

// Runs x_t = exp(dt_t A) x_{t-1} + dt_t u_t B_t over one (b, c) sequence from x_{-1} = 0
// and writes y[t] = <x_t, C_t> + D u_t. When states is not null, x_t goes to its row t + 1
// and row 0 is zeroed. NS > 0 fixes the state size at compile time.
template <typename T, int NS>
void recurrence(const ScanArgs<T>& a, int64_t b, int64_t c, const T* dt, T* y, T* states) {
  const int64_t n = NS > 0 ? NS : a.state;
  const T* u = a.u + a.row(b, c);
  const T* A = a.A + c * n;
  const T* B = a.B + a.bc_offset(b, c);
  const T* C = a.C + a.bc_offset(b, c);
  const T Dc = a.D_of(c);
  T x_fixed[NS > 0 ? NS : 1];
  std::vector<T> x_heap(NS > 0 ? 0 : n);
  T* x = NS > 0 ? x_fixed : x_heap.data();
  std::fill(x, x + n, T(0));
  if (states) std::fill(states, states + n, T(0));

  for (int64_t t = 0; t < a.length; ++t) {
    const T step = dt[t];
    const T drive = step * u[t];
    const T* Bt = B + t * n;
    const T* Ct = C + t * n;
    T acc = T(0);
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; ++k) {
      const T xk = scan_exp(step * A[k]) * x[k] + drive * Bt[k];
      x[k] = xk;
      acc += xk * Ct[k];
    }
    if (states) std::memcpy(states + (t + 1) * n, x, n * sizeof(T));
    y[t] = acc + Dc * u[t];
  }
}

// Forward of one (b, c) sequence into out; scratch holds 2 L values.
template <typename T, int NS>
void forward_sequence(const ScanArgs<T>& a, int64_t b, int64_t c, T* out, T* scratch) {
  const int64_t row = a.row(b, c), L = a.length;
  T* dt = scratch;
  step_sizes(a.delta + row, a.bias_of(c), a.softplus, L, dt, static_cast<T*>(nullptr));
  recurrence<T, NS>(a, b, c, dt, out + row, nullptr);
  if (a.z) {
    T* gate = scratch + L;
    const T* z = a.z + row;
    sigmoids(z, T(0), L, gate);
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) out[row + t] *= z[t] * gate[t];
  }
}

// Gradient buffers of one backward call.
template <typename T>
struct GradArgs {
  const T* dout;      // (b, d, L)
  T* du;              // (b, d, L)
  T* ddelta;          // (b, d, L)
  T* dz;              // (b, d, L) or null
  T* dA_part;         // (b, d, n): per-sequence sums over time
  T* dD_part;         // (b, d)
  T* dbias_part;      // (b, d)
  T* dB_part;         // (b, g, blocks, L, n): per channel-block sums
  T* dC_part;         // (b, g, blocks, L, n)
};

// Per-thread scratch of the backward, reused across sequences.
template <typename T>
struct BackwardScratch {
  std::vector<T> states, y, dt, ddt, gate, gy;
  BackwardScratch(int64_t length, int64_t state)
      : states((length + 1) * state), y(length), dt(length), ddt(length), gate(length), gy(length) {}
};

// Backward of one (b, c) sequence; adds its dB / dC contributions to dB_acc / dC_acc (L, n).
template <typename T, int NS>
void backward_sequence(const ScanArgs<T>& a, const GradArgs<T>& g, int64_t b, int64_t c,
                       T* dB_acc, T* dC_acc, BackwardScratch<T>& s) {
  const int64_t n = NS > 0 ? NS : a.state;
  const int64_t row = a.row(b, c), L = a.length;
  const T* u = a.u + row;
  const T* A = a.A + c * n;
  const T* B = a.B + a.bc_offset(b, c);
  const T* C = a.C + a.bc_offset(b, c);
  const T* dout = g.dout + row;
  const T Dc = a.D_of(c);
  T* dt = s.dt.data();
  T* gy = s.gy.data();
  const T* states = s.states.data();

  step_sizes(a.delta + row, a.bias_of(c), a.softplus, L, dt, s.ddt.data());
  recurrence<T, NS>(a, b, c, dt, s.y.data(), s.states.data());
  if (a.z) {  // out = y * silu(z)
    const T* z = a.z + row;
    const T* y = s.y.data();
    T* gate = s.gate.data();
    sigmoids(z, T(0), L, gate);
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      g.dz[row + t] = dout[t] * y[t] * gate[t] * (T(1) + z[t] * (T(1) - gate[t]));
      gy[t] = dout[t] * z[t] * gate[t];
    }
  } else {
    std::memcpy(gy, dout, L * sizeof(T));
  }

  // Adjoint recurrence backwards in time: h_t = dLoss/dx_t = gy_t C_t + exp(dt_{t+1} A) h_{t+1};
  // carry[k] holds the second term.
  T carry_fixed[NS > 0 ? NS : 1], dA_fixed[NS > 0 ? NS : 1];
  std::vector<T> heap(NS > 0 ? 0 : 2 * n);
  T* __restrict__ carry = NS > 0 ? carry_fixed : heap.data();
  T* __restrict__ dA_acc = NS > 0 ? dA_fixed : heap.data() + n;
  std::fill(carry, carry + n, T(0));
  std::fill(dA_acc, dA_acc + n, T(0));
  T* ddelta = g.ddelta + row;
  T* du = g.du + row;
  for (int64_t t = L - 1; t >= 0; --t) {
    const T step = dt[t];
    const T gyt = gy[t];
    const T drive = step * u[t];
    const T* __restrict__ Bt = B + t * n;
    const T* __restrict__ Ct = C + t * n;
    const T* __restrict__ prev = states + t * n;
    const T* __restrict__ cur = states + (t + 1) * n;
    T* __restrict__ dBt = dB_acc + t * n;
    T* __restrict__ dCt = dC_acc + t * n;
    T sum_hB = T(0), sum_decay = T(0);
#pragma omp simd reduction(+ : sum_hB, sum_decay)
    for (int64_t k = 0; k < n; ++k) {
      const T h = carry[k] + gyt * Ct[k];
      dCt[k] += gyt * cur[k];
      dBt[k] += h * drive;
      sum_hB += h * Bt[k];
      const T decay = scan_exp(step * A[k]);
      const T q = h * prev[k] * decay;  // dLoss/d(dt_t A_k)
      dA_acc[k] += q * step;
      sum_decay += q * A[k];
      carry[k] = decay * h;
    }
    ddelta[t] = sum_decay + sum_hB * u[t];  // dLoss/d dt_t; the chain to delta follows
    du[t] = step * sum_hB;
  }
  const T* ddt = s.ddt.data();
  T dD_acc = T(0), dbias_acc = T(0);
  for (int64_t t = 0; t < L; ++t) {  // sequential: these sums must be reproducible
    ddelta[t] *= ddt[t];
    du[t] += gy[t] * Dc;
    dD_acc += gy[t] * u[t];
    dbias_acc += ddelta[t];
  }
  for (int64_t k = 0; k < n; ++k) g.dA_part[(b * a.channels + c) * n + k] = dA_acc[k];
  g.dD_part[b * a.channels + c] = dD_acc;
  g.dbias_part[b * a.channels + c] = dbias_acc;
}

template <typename T>
ScanArgs<T> make_args(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                      const torch::Tensor& B, const torch::Tensor& C,
                      const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                      const c10::optional<torch::Tensor>& bias, bool softplus) {
  ScanArgs<T> a;
  a.u = u.data_ptr<T>();
  a.delta = delta.data_ptr<T>();
  a.A = A.data_ptr<T>();
  a.B = B.data_ptr<T>();
  a.C = C.data_ptr<T>();
  a.D = D.has_value() ? D->data_ptr<T>() : nullptr;
  a.z = z.has_value() ? z->data_ptr<T>() : nullptr;
  a.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  a.softplus = softplus;
  a.batch = u.size(0);
  a.channels = u.size(1);
  a.length = u.size(2);
  a.state = A.size(1);
  a.groups = B.size(1);
  return a;
}

// Runs `body<NS>()` with NS the compile-time state size when it is a common one.
template <typename Body>
void dispatch_state(int64_t n, Body&& body) {
  switch (n) {
    case 4: body(std::integral_constant<int, 4>()); break;
    case 8: body(std::integral_constant<int, 8>()); break;
    case 16: body(std::integral_constant<int, 16>()); break;
    case 32: body(std::integral_constant<int, 32>()); break;
    case 64: body(std::integral_constant<int, 64>()); break;
    default: body(std::integral_constant<int, 0>()); break;
  }
}

void check_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                  const torch::Tensor& B, const torch::Tensor& C,
                  const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                  const c10::optional<torch::Tensor>& bias) {
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64,
              "selective_scan_cpu: u must be float32 or float64, got ", dtype);
  std::vector<torch::Tensor> all = {u, delta, A, B, C};
  for (const auto* opt : {&D, &z, &bias})
    if (opt->has_value()) all.push_back(opt->value());
  for (const auto& tensor : all) {
    TORCH_CHECK(tensor.device().is_cpu(), "selective_scan_cpu: every tensor must be on the CPU");
    TORCH_CHECK(tensor.scalar_type() == dtype, "selective_scan_cpu: every tensor must have u's dtype");
    TORCH_CHECK(tensor.is_contiguous(), "selective_scan_cpu: tensors must be contiguous");
  }
  TORCH_CHECK(B.dim() == 4 && C.dim() == 4 && B.size(2) == u.size(2) && B.size(3) == A.size(1),
              "selective_scan_cpu: B and C must be (b, g, L, n)");
  TORCH_CHECK(u.size(1) % B.size(1) == 0, "selective_scan_cpu: groups must divide channels");
}

torch::Tensor scan_forward(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                           const torch::Tensor& B, const torch::Tensor& C,
                           const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& z,
                           const c10::optional<torch::Tensor>& bias, bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  auto out = torch::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    const auto args = make_args<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    dispatch_state(args.state, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(2 * args.length);
        for (int64_t task = begin; task < end; ++task)
          forward_sequence<scalar_t, NS>(args, task / args.channels, task % args.channels, out_ptr,
                                         scratch.data());
      });
    });
  });
  return out;
}

// Returns du, ddelta, dA, dB (b, g, L, n), dC (b, g, L, n), dD, ddelta_bias, dz; the optional
// ones are undefined tensors when their input is absent.
std::vector<torch::Tensor> scan_backward(
    const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
    const torch::Tensor& B, const torch::Tensor& C, const c10::optional<torch::Tensor>& D,
    const c10::optional<torch::Tensor>& z, const c10::optional<torch::Tensor>& bias, bool softplus,
    const torch::Tensor& dout) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.scalar_type() == u.scalar_type() && dout.is_contiguous(),
              "selective_scan_cpu: dout must be a contiguous tensor like u");
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2);
  const int64_t state = A.size(1), groups = B.size(1);
  const int64_t per_group = channels / groups;
  const int64_t blocks = (per_group + kBackwardChannelBlock - 1) / kBackwardChannelBlock;

  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(u);
  auto dz = z.has_value() ? torch::empty_like(u) : torch::Tensor();
  auto options = u.options();
  auto dA_part = torch::empty({batch, channels, state}, options);
  auto dD_part = torch::empty({batch, channels}, options);
  auto dbias_part = torch::empty({batch, channels}, options);
  auto dB_part = torch::empty({batch, groups, blocks, length, state}, options);
  auto dC_part = torch::empty({batch, groups, blocks, length, state}, options);
  auto dA = torch::empty_like(A);
  auto dB = torch::empty_like(B);
  auto dC = torch::empty_like(C);
  auto dD = torch::empty({channels}, options);
  auto dbias = torch::empty({channels}, options);

  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    using T = scalar_t;
    const auto args = make_args<T>(u, delta, A, B, C, D, z, bias, softplus);
    GradArgs<T> grads{dout.data_ptr<T>(), du.data_ptr<T>(), ddelta.data_ptr<T>(),
                      z.has_value() ? dz.data_ptr<T>() : nullptr, dA_part.data_ptr<T>(),
                      dD_part.data_ptr<T>(), dbias_part.data_ptr<T>(), dB_part.data_ptr<T>(),
                      dC_part.data_ptr<T>()};
    const int64_t plane = length * state;
    dispatch_state(state, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      // One task = (batch, group, block of channels); its dB / dC partial is its own plane.
      at::parallel_for(0, batch * groups * blocks, 1, [&](int64_t begin, int64_t end) {
        BackwardScratch<T> scratch(length, state);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / (groups * blocks);
          const int64_t group = (task / blocks) % groups;
          const int64_t block = task % blocks;
          T* dB_acc = grads.dB_part + task * plane;
          T* dC_acc = grads.dC_part + task * plane;
          std::fill(dB_acc, dB_acc + plane, T(0));
          std::fill(dC_acc, dC_acc + plane, T(0));
          const int64_t first = group * per_group + block * kBackwardChannelBlock;
          const int64_t last = std::min(first + kBackwardChannelBlock, (group + 1) * per_group);
          for (int64_t c = first; c < last; ++c)
            backward_sequence<T, NS>(args, grads, b, c, dB_acc, dC_acc, scratch);
        }
      });
    });

    // Fixed-order reductions: blocks for dB / dC, batch for dA / dD / ddelta_bias.
    T* dB_out = dB.data_ptr<T>();
    T* dC_out = dC.data_ptr<T>();
    at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bg = begin; bg < end; ++bg) {
        for (int64_t i = 0; i < plane; ++i) {
          T sb = T(0), sc = T(0);
          for (int64_t block = 0; block < blocks; ++block) {
            sb += grads.dB_part[(bg * blocks + block) * plane + i];
            sc += grads.dC_part[(bg * blocks + block) * plane + i];
          }
          dB_out[bg * plane + i] = sb;
          dC_out[bg * plane + i] = sc;
        }
      }
    });
    T* dA_out = dA.data_ptr<T>();
    T* dD_out = dD.data_ptr<T>();
    T* dbias_out = dbias.data_ptr<T>();
    for (int64_t i = 0; i < channels * state; ++i) {
      T s = T(0);
      for (int64_t b = 0; b < batch; ++b) s += grads.dA_part[b * channels * state + i];
      dA_out[i] = s;
    }
    for (int64_t c = 0; c < channels; ++c) {
      T sd = T(0), sbias = T(0);
      for (int64_t b = 0; b < batch; ++b) {
        sd += grads.dD_part[b * channels + c];
        sbias += grads.dbias_part[b * channels + c];
      }
      dD_out[c] = sd;
      dbias_out[c] = sbias;
    }
  });
  return {du, ddelta, dA, dB, dC,
          D.has_value() ? dD : torch::Tensor(), bias.has_value() ? dbias : torch::Tensor(), dz};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused selective scan (Mamba S6) for CPU tensors";
  m.def("forward", &scan_forward, "selective scan forward: u, delta, A, B, C, D, z, delta_bias, softplus");
  m.def("backward", &scan_backward,
        "selective scan backward: u, delta, A, B, C, D, z, delta_bias, softplus, dout");
}
