// Fused selective scan (Mamba S6) for CPU tensors: forward and backward, float32 and float64.
//
// Layout: token-major. A call scans K "directions"; direction k reads its sequence position t
// from token l = order[k][t] (identity without an order), so the permutation of SS2D's scan
// directions happens in this kernel's loads and stores instead of in gathered copies:
//
//   u      (b, L, d) shared by every direction, or (b, L, K, d) one per direction
//   delta  (b, L, K, d)        B, C (b, L, K, n)        (any strides, unit stride last)
//   A      (K*d, n)            D, delta_bias (K*d)      row k*d + c = direction k, channel c
//   out    (b, L, d) = sum over directions (summed), or (b, L, K, d) one per direction
//
// With dt_weight (K, d, r), delta holds low-rank factors (b, L, K, r) and the step sizes are
// delta_full[b, l, k, c] = sum_j dt_weight[k, c, j] delta[b, l, k, j] (SS2D's dt_proj), formed
// here per block: the (b, L, K, d) step sizes and their gradient are never stored.
//
// Vectorisation runs over channels: a block of kLanes consecutive channels of one direction is
// scanned together, one SIMD lane per channel. A block's inputs are first gathered into
// cache-resident scratch in sequence order (tokens read in memory order, so DRAM sees
// sequential streams); the recurrences then run over contiguous memory, and results go back to
// token order the same way. On AVX-512 machines float scans with n % 4 == 0 run hand-vectorised
// recurrences (namespace avx512); everything else runs the generic loops.
//
// The backward recomputes the states chunk by chunk (kChunk steps), keeping each chunk's states
// and decays in cache for the adjoint recurrence. It starts each chunk from a checkpoint: the
// state entering the chunk, saved by a training forward (save_checkpoints; memory: 1/kChunk of
// the states) or recomputed by a first sweep.
//
// Tasks and reproducibility: with at least two batch elements per thread, a task is one batch
// element, walking the directions in order (each direction's rows gathered once) and within
// each its channel blocks; with fewer, the forward's task is (batch, channel block) over the
// directions in order and the backward's (batch, direction). Either way every output and every
// gradient of a shared u adds the directions in order k = 0, 1, ..., and a direction's dB / dC
// add its channel blocks in order; the backward's partial sums over tasks (du per direction when
// tasks are (batch, direction); dA, dD, ddelta_bias and dt_weight per batch element) are reduced
// afterwards in a fixed order. So results are bit-identical run to run and for any
// torch.set_num_threads value; tasks are handed out dynamically, which only changes who runs them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "vector_math.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// Channels per block and SIMD lanes per step: fixed, so no summation order depends on threads.
constexpr int kLanes = 16;
// Steps per checkpoint and backward recompute chunk (whose states and decays are kept in cache).
constexpr int64_t kChunk = 64;

using mambaad::scan_exp;
using mambaad::softplus;

// A (b, L, K, inner) operand with unit stride along inner; stride k is 0 for a shared operand.
template <typename T>
struct Operand {
  T* data;
  int64_t sb, sl, sk;
  MAMBAAD_INLINE T* at(int64_t b, int64_t l, int64_t k) const { return data + b * sb + l * sl + k * sk; }
};

template <typename T>
Operand<T> operand(const torch::Tensor& x) {
  // 3-D (b, L, inner) tensors are shared by every direction: stride 0 along k.
  if (x.dim() == 3) return {x.data_ptr<T>(), x.stride(0), x.stride(1), 0};
  return {x.data_ptr<T>(), x.stride(0), x.stride(1), x.stride(2)};
}

// Raw pointers and sizes of one call; optional tensors are null pointers.
template <typename T>
struct ScanArgs {
  Operand<T> u, delta, B, C;
  const T* dt_weight;       // (K, d, r) or null (delta holds the step sizes themselves)
  int64_t rank;             // r, or 0
  const T* A;               // (K*d, n)
  const T* D;               // (K*d) or null
  const T* bias;            // (K*d) or null
  const int64_t* order;     // (K, L) or null (identity)
  bool softplus, summed;    // summed: out is (b, L, d), the sum over directions
  bool shared_u;            // u is (b, L, d): du sums over directions
  int64_t batch, length, dirs, channels, state;

  MAMBAAD_INLINE int64_t token(int64_t k, int64_t t) const { return order ? order[k * length + t] : t; }
  int64_t blocks() const { return (channels + kLanes - 1) / kLanes; }
  // Offset of (b, l, k, c) in a dense (b, L, d) or (b, L, K, d) tensor.
  MAMBAAD_INLINE int64_t dense(bool per_direction, int64_t b, int64_t l, int64_t k, int64_t c) const {
    return per_direction ? ((b * length + l) * dirs + k) * channels + c : (b * length + l) * channels + c;
  }
};

// Per-thread buffers, reused across tasks and calls: every entry a task reads, it has written
// first. Rows are in sequence order (row t = step t of the current direction).
template <typename T>
struct Scratch {
  std::vector<int64_t> step;                        // step[l]: the step at which the direction visits token l
  std::vector<T> dt, u, dtu;                        // (L, kLanes)
  std::vector<T> ys;                                // forward: outputs, (L, kLanes)
  std::vector<T> Bs, Cs;                            // (L, n)
  std::vector<T> Ds, dDs;                           // low-rank step sizes and their gradient, (L, r)
  std::vector<T> ddt, gy, hB, qA;                   // backward: (L, kLanes)
  std::vector<T> dB_rows, dC_rows;                  // backward: (L, n), sums over the direction's channels
  std::vector<T> checkpoints, states, decays;       // backward chunking
  // One task per batch element: its (L, d) maps with each block's rows contiguous, (blocks, L,
  // kLanes) (see to_blocks): u, the outputs (forward) or their gradient (backward), du.
  std::vector<T> u_blocks, y_blocks, du_blocks;

  // Sizes the buffers for a call. Shrinking keeps a vector's memory, so after the largest call a
  // thread allocates (and the OS maps) nothing more: fresh pages cost about a microsecond each
  // on a virtual machine, a few percent of a training step.
  void resize(int64_t length, int64_t state, int64_t rank, bool backward) {
    step.resize(length);
    for (auto* v : {&dt, &u, &dtu}) v->resize(length * kLanes);
    for (auto* v : {&Bs, &Cs}) v->resize(length * state);
    Ds.resize(length * rank);
    if (!backward) {
      ys.resize(length * kLanes);
      return;
    }
    dDs.resize(length * rank);
    for (auto* v : {&ddt, &gy, &hB, &qA}) v->resize(length * kLanes);
    for (auto* v : {&dB_rows, &dC_rows}) v->resize(length * state);
    checkpoints.resize((length + kChunk - 1) / kChunk * state * kLanes);
    states.resize((kChunk + 1) * state * kLanes);
    decays.resize(kChunk * state * kLanes);
  }
};

// This thread's scratch, sized for a call.
template <typename T>
Scratch<T>& thread_scratch(int64_t length, int64_t state, int64_t rank, bool backward) {
  thread_local Scratch<T> scratch;
  scratch.resize(length, state, rank, backward);
  return scratch;
}

// One direction's constants for a block of lanes; lanes past the last channel hold zeros, which
// keep their states, adjoints and every contribution of theirs exactly zero.
template <typename T, int NS>
struct BlockConstants {
  T A[NS > 0 ? NS : 1][kLanes];
  std::vector<T> A_heap;
  std::vector<T> W;  // (r, kLanes): dt_weight of the block's channels, transposed
  T D[kLanes], bias[kLanes];
  T* A_row(int64_t s) { return NS > 0 ? A[s] : A_heap.data() + s * kLanes; }

  BlockConstants(const ScanArgs<T>& a, int64_t k, int64_t c0, int valid)
      : A_heap(NS > 0 ? 0 : a.state * kLanes), W(a.rank * kLanes) {
    const int64_t n = NS > 0 ? NS : a.state;
    for (int64_t s = 0; s < n; ++s)
      for (int j = 0; j < kLanes; ++j) A_row(s)[j] = j < valid ? a.A[(k * a.channels + c0 + j) * n + s] : T(0);
    for (int64_t r = 0; r < a.rank; ++r)
      for (int j = 0; j < kLanes; ++j)
        W[r * kLanes + j] = j < valid ? a.dt_weight[(k * a.channels + c0 + j) * a.rank + r] : T(0);
    for (int j = 0; j < kLanes; ++j) {
      const int64_t row = k * a.channels + c0 + j;
      D[j] = (j < valid && a.D) ? a.D[row] : T(0);
      bias[j] = (j < valid && a.bias) ? a.bias[row] : T(0);
    }
  }
};

// Copies `valid` values of src (plus offset) to dst and zeroes the rest of its kLanes.
template <typename T>
MAMBAAD_INLINE void copy_lanes(const T* src, const T* offset, int valid, T* dst) {
  if (valid == kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) dst[j] = src[j] + (offset ? offset[j] : T(0));
  } else {
    for (int j = 0; j < kLanes; ++j) dst[j] = j < valid ? src[j] + (offset ? offset[j] : T(0)) : T(0);
  }
}

// dst[0..valid) = (or, adding, +=) src[0..valid).
template <typename T>
MAMBAAD_INLINE void store_lanes(const T* src, int valid, bool add, T* dst) {
  if (valid == kLanes && add) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) dst[j] += src[j];
  } else if (valid == kLanes) {
    std::memcpy(dst, src, kLanes * sizeof(T));
  } else {
    for (int j = 0; j < valid; ++j) dst[j] = add ? dst[j] + src[j] : src[j];
  }
}

// In place over m values: x -> dt = softplus(x) (or x), and ddt = d dt / dx when ddt is not null.
// Flat loops over contiguous memory, so that the compiler vectorises exp and log1p.
template <typename T>
void step_sizes(T* x, bool softplus_dt, int64_t m, T* ddt) {
  if (!softplus_dt) {
    if (ddt) std::fill(ddt, ddt + m, T(1));
    return;
  }
  if (!ddt) {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) x[i] = softplus(x[i]);
    return;
  }
  // softplus and its slope, the sigmoid, from one exp(-|v|); above the threshold softplus is the
  // identity, slope 1.
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) {
    const T v = x[i];
    const T w = scan_exp(-std::abs(v));
    ddt[i] = v > T(20) ? T(1) : mambaad::sigmoid_given(v, w);
    x[i] = mambaad::softplus_given(v, w);
  }
}

// s.step = the inverse of direction k's order, and its B, C rows in sequence order. Tokens are
// read in memory order (sequential streams for the prefetcher) and written to their step's row.
template <typename T>
void gather_direction(const ScanArgs<T>& a, int64_t b, int64_t k, Scratch<T>& s) {
  const int64_t n = a.state;
  int64_t* step = s.step.data();
  for (int64_t t = 0; t < a.length; ++t) step[a.token(k, t)] = t;
  for (int64_t l = 0; l < a.length; ++l) {
    const T* B = a.B.at(b, l, k);
    const T* C = a.C.at(b, l, k);
    T* B_row = s.Bs.data() + step[l] * n;
    T* C_row = s.Cs.data() + step[l] * n;
    for (int64_t st = 0; st < n; ++st) {  // a loop, not memcpy: rows are short
      B_row[st] = B[st];
      C_row[st] = C[st];
    }
    if (a.rank) {
      const T* factors = a.delta.at(b, l, k);
      T* D_row = s.Ds.data() + step[l] * a.rank;
      for (int64_t r = 0; r < a.rank; ++r) D_row[r] = factors[r];
    }
  }
}

// dt[t] = bias + sum_j W[j] factors[t, j] over a block's lanes: W (r, kLanes), factors (L, r).
template <typename T>
void low_rank_steps(int64_t rank, int64_t L, const T* W, const T* bias, const T* factors, T* dt) {
  for (int64_t t = 0; t < L; ++t) {
    T v[kLanes];
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) v[j] = bias[j];
    for (int64_t r = 0; r < rank; ++r) {
      const T f = factors[t * rank + r];
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) v[j] += W[r * kLanes + j] * f;
    }
    std::memcpy(dt + t * kLanes, v, kLanes * sizeof(T));
  }
}

// Runs `body(N)` with N = size as a compile-time constant when it is a common state size or
// step-size rank (else N = 0: the size is read at run time).
template <typename Body>
void dispatch_size(int64_t size, Body&& body) {
  switch (size) {
    case 4: body(std::integral_constant<int, 4>()); break;
    case 8: body(std::integral_constant<int, 8>()); break;
    case 16: body(std::integral_constant<int, 16>()); break;
    case 32: body(std::integral_constant<int, 32>()); break;
    default: body(std::integral_constant<int, 0>()); break;
  }
}

// The backward of low_rank_steps for one block, steps in sequence order: dd (L, kLanes) =
// dLoss/d(delta + bias), factors (L, r). d_factors (L, r) = dd W^T (added to what it holds when
// accumulate) and dW (r, kLanes) += sum over steps of factors^T dd. Each lane's contribution is
// one multiply-add across the r factors (W transposed here), not a sum across lanes per factor.
// R: r at compile time (0: read rank), so that a step's r sums stay in registers.
template <typename T, int R>
void low_rank_backward(int64_t rank, int64_t L, const T* W, const T* __restrict__ dd, const T* __restrict__ factors,
                       bool accumulate, T* __restrict__ d_factors, T* dW) {
  const int64_t r_count = R > 0 ? R : rank;
  // Four partial sums over the lanes (lanes j, j + 4, ...), so that a step's sums are not one
  // chain of sixteen dependent multiply-adds; added in a fixed order.
  constexpr int kParts = 4;
  std::vector<T> heap(R > 0 ? 0 : (kLanes + kParts + kLanes) * r_count);
  T Wt_fixed[R > 0 ? kLanes * R : 1], sums_fixed[R > 0 ? kParts * R : 1], dW_fixed[R > 0 ? R * kLanes : 1];
  T* Wt = R > 0 ? Wt_fixed : heap.data();                                // (kLanes, r)
  T* sums = R > 0 ? sums_fixed : heap.data() + kLanes * r_count;          // (kParts, r)
  T* dW_sum = R > 0 ? dW_fixed : heap.data() + (kLanes + kParts) * r_count;  // (r, kLanes)
  for (int64_t r = 0; r < r_count; ++r)
    for (int j = 0; j < kLanes; ++j) Wt[j * r_count + r] = W[r * kLanes + j];
  std::fill(dW_sum, dW_sum + r_count * kLanes, T(0));
  for (int64_t t = 0; t < L; ++t) {
    const T* dd_t = dd + t * kLanes;
    T* out = d_factors + t * r_count;
    std::fill(sums, sums + kParts * r_count, T(0));
    for (int j = 0; j < kLanes; ++j) {
      const T v = dd_t[j];
      const T* Wt_j = Wt + j * r_count;
      T* part = sums + (j % kParts) * r_count;
#pragma omp simd
      for (int64_t r = 0; r < r_count; ++r) part[r] += v * Wt_j[r];
    }
#pragma omp simd
    for (int64_t r = 0; r < r_count; ++r) {
      const T total = (sums[r] + sums[r_count + r]) + (sums[2 * r_count + r] + sums[3 * r_count + r]);
      out[r] = accumulate ? out[r] + total : total;
    }
    const T* f = factors + t * r_count;
    for (int64_t r = 0; r < r_count; ++r) {
      const T fr = f[r];
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) dW_sum[r * kLanes + j] += dd_t[j] * fr;
    }
  }
  for (int64_t i = 0; i < r_count * kLanes; ++i) dW[i] += dW_sum[i];
}

// Rows of one block of lanes in a per-token map: token l's lanes at first + l * stride.
template <typename T>
struct LaneRows {
  T* first;
  int64_t stride;
  MAMBAAD_INLINE T* at(int64_t l) const { return first + l * stride; }
};

// Block `block`'s rows of u: the task's blocked copy (one task per batch element and a shared u)
// or u itself.
template <typename T>
LaneRows<const T> u_rows(const ScanArgs<T>& a, const Scratch<T>& s, int64_t b, int64_t k, int64_t block,
                         bool blocked) {
  if (blocked && a.shared_u) return {s.u_blocks.data() + block * a.length * kLanes, kLanes};
  return {a.u.at(b, 0, k) + block * kLanes, a.u.sl};
}

// Block `block`'s rows of an output-shaped map (the output or its gradient, dense): `copy`, the
// task's blocked copy (one task per batch element, outputs summed), or the map itself.
template <typename T, typename P>
LaneRows<P> output_rows(const ScanArgs<T>& a, P* map, P* copy, int64_t b, int64_t k, int64_t block, bool blocked) {
  if (blocked && a.summed) return {copy + block * a.length * kLanes, kLanes};
  return {map + a.dense(!a.summed, b, 0, k, block * kLanes), a.summed ? a.channels : a.dirs * a.channels};
}

// (L, d) rows (row stride `stride`) -> (blocks, L, kLanes), lanes past the last channel zero:
// the copy that makes one block's rows contiguous.
template <typename T>
void to_blocks(const T* rows, int64_t stride, int64_t L, int64_t channels, T* blocked) {
  const int64_t blocks = (channels + kLanes - 1) / kLanes;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t block = 0; block < blocks; ++block) {
      const int valid = static_cast<int>(std::min<int64_t>(kLanes, channels - block * kLanes));
      copy_lanes(rows + l * stride + block * kLanes, static_cast<const T*>(nullptr), valid,
                 blocked + (block * L + l) * kLanes);
    }
}

// (blocks, L, kLanes) -> (L, d) rows: to_blocks undone.
template <typename T>
void from_blocks(const T* blocked, int64_t L, int64_t channels, T* rows, int64_t stride) {
  const int64_t blocks = (channels + kLanes - 1) / kLanes;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t block = 0; block < blocks; ++block) {
      const int valid = static_cast<int>(std::min<int64_t>(kLanes, channels - block * kLanes));
      store_lanes(blocked + (block * L + l) * kLanes, valid, false, rows + l * stride + block * kLanes);
    }
}

// One block's lanes in sequence order (after gather_direction): dt = softplus(delta + bias) (or
// delta + bias), u, dt * u, and in the backward (gy.first not null) ddt = d dt / d(delta + bias)
// and the output gradient gy. Low-rank step sizes are formed here from the gathered factors.
template <typename T, int NS>
void gather_lanes(const ScanArgs<T>& a, const BlockConstants<T, NS>& K, int64_t b, int64_t k, int64_t c0, int valid,
                  Scratch<T>& s, LaneRows<const T> u, LaneRows<const T> gy) {
  const int64_t L = a.length;
  const int64_t* step = s.step.data();
  const bool backward = gy.first != nullptr;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t row = step[l] * kLanes;
    if (!a.rank) copy_lanes(a.delta.at(b, l, k) + c0, K.bias, valid, s.dt.data() + row);
    copy_lanes(u.at(l), static_cast<const T*>(nullptr), valid, s.u.data() + row);
    if (backward) copy_lanes(gy.at(l), static_cast<const T*>(nullptr), valid, s.gy.data() + row);
  }
  T* dt = s.dt.data();
  if (a.rank) low_rank_steps(a.rank, L, K.W.data(), K.bias, s.Ds.data(), dt);
  step_sizes(dt, a.softplus, L * kLanes, backward ? s.ddt.data() : nullptr);
  if (valid < kLanes) {
    // Lanes past the last channel get dt = 0: decay 1 and no input, their states stay 0.
    for (int64_t t = 0; t < L; ++t) std::fill(dt + t * kLanes + valid, dt + (t + 1) * kLanes, T(0));
  }
  const T* u_seq = s.u.data();
  T* dtu = s.dtu.data();
#pragma omp simd
  for (int64_t i = 0; i < L * kLanes; ++i) dtu[i] = dt[i] * u_seq[i];
}

// x_t = exp(dt_t A) x_{t-1} + dt_t u_t B_t for one block, steps [t0, t1), states in x (n, kLanes).
// With decays / states not null, stores exp(dt A) per step and x_t at row t - t0 + 1.
template <typename T, int NS>
MAMBAAD_INLINE void advance(int64_t n, BlockConstants<T, NS>& K, const Scratch<T>& s, int64_t t0, int64_t t1, T* x,
                            T* decays, T* states) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* Bt = s.Bs.data() + t * n;
    const T* dt = s.dt.data() + t * kLanes;
    const T* dtu = s.dtu.data() + t * kLanes;
    for (int64_t st = 0; st < n; ++st) {
      const T Bs = Bt[st];
      const T* A = K.A_row(st);
      T* xs = x + st * kLanes;
      T* dec = decays ? decays + ((t - t0) * n + st) * kLanes : nullptr;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        const T decay = scan_exp(dt[j] * A[j]);
        xs[j] = decay * xs[j] + dtu[j] * Bs;
        if (dec) dec[j] = decay;
      }
    }
    if (states) std::memcpy(states + (t - t0 + 1) * n * kLanes, x, n * kLanes * sizeof(T));
  }
}

// Writes (or, when accumulate, adds) a block's rows in sequence order (L, kLanes), to their
// tokens' rows of out, walking the tokens in memory order: sequential stores, out-of-order reads.
template <typename T>
void store_in_token_order(int64_t L, int valid, bool accumulate, const Scratch<T>& s, const T* rows,
                          LaneRows<T> out) {
  for (int64_t l = 0; l < L; ++l) store_lanes(rows + s.step[l] * kLanes, valid, accumulate, out.at(l));
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define MAMBAAD_AVX512 1
// Hand-vectorised recurrences for float with 16 lanes and a state size that is a multiple of 4
// (n = 16 in every MambaAD model), used where the compiler's code is exp- and store-bound:
// - exp(dt A) from a 16-entry table and a cubic (exp2_16: 5 of its 13 instructions multiply-add);
// - states are walked 4 at a time, so their recurrences, adjoints and accumulators live in
//   registers; the per-step sums over states go to memory once per 4 states;
// - the backward's sums over lanes (dB, dC) of 4 states use one shuffle tree for 8 rows.
// Every sum has a fixed order, so results do not depend on threads.
namespace avx512 {

constexpr int kBlock = 4;  // states per register block

// 2^(y16 / 16) (y16: the exponent in sixteenths). 2^(y16/16) = 2^m 2^(j/16) 2^(r/16) with
// floor(y16) = 16 m + j and r = y16 - floor(y16) in [0, 1): a 16-entry table for 2^(j/16) (one
// vpermps), a degree-3 polynomial for 2^(r/16), and m added to the exponent bits. Relative error
// below 2e-7; five of its thirteen instructions use the multiply-add ports that the recurrences
// are bound by (a polynomial over a whole octave needs eight). Below 2^-125.95 (exp below
// e^-87.3) the result is exactly 0, as in scan_exp; NaN stays NaN.
MAMBAAD_INLINE __m512 exp2_16(__m512 y16) {
  const __m512 table = _mm512_set_ps(1.915206552e+00f, 1.834008098e+00f, 1.756252170e+00f, 1.681792855e+00f,
                                     1.610490322e+00f, 1.542210817e+00f, 1.476826191e+00f, 1.414213538e+00f,
                                     1.354255557e+00f, 1.296839595e+00f, 1.241857767e+00f, 1.189207077e+00f,
                                     1.138788581e+00f, 1.090507746e+00f, 1.044273734e+00f, 1.0f);
  const __mmask16 keep = _mm512_cmp_ps_mask(y16, _mm512_set1_ps(-125.95f * 16), _CMP_NLT_UQ);
  const __m512 clamped = _mm512_min_ps(_mm512_set1_ps(127.0f * 16), y16);
  const __m512i k = _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_reduce_ps(clamped, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 q = _mm512_set1_ps(1.3847206901e-05f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(9.3819940230e-04f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.3321736157e-02f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  const __m512 p = _mm512_mul_ps(q, _mm512_permutexvar_ps(k, table));  // in [1, 2)
  const __m512i m = _mm512_slli_epi32(_mm512_srai_epi32(k, 4), 23);
  // A NaN y16 gives a NaN p and m = 0 (k is the integer indefinite 0x80000000), so it stays NaN.
  return _mm512_castsi512_ps(_mm512_maskz_add_epi32(keep, _mm512_castps_si512(p), m));
}

MAMBAAD_INLINE __m512 load(const float* p) { return _mm512_loadu_ps(p); }
MAMBAAD_INLINE __m512 splat(float v) { return _mm512_set1_ps(v); }

// A block's 4 (natural) A rows and their log2 e multiples.
struct StateBlock {
  __m512 A[kBlock], A2[kBlock];  // A2 = A log2(e) 16: dt A2 is exp(dt A)'s exponent for exp2_16
  StateBlock(const float* A_rows, int64_t s0) {
    for (int i = 0; i < kBlock; ++i) {
      A[i] = load(A_rows + (s0 + i) * 16);
      A2[i] = _mm512_mul_ps(A[i], splat(1.44269504088896341f * 16));
    }
  }
};

// y[t] (16 lanes, holding D u on entry) += sum over states of x_t C_t, for one block of lanes.
// A_rows (n, 16); dt, dtu (L, 16); Bs, Cs (L, n). When checkpoints is not null, the state
// entering every chunk goes there, (L / kChunk, n, 16).
inline void forward(int64_t n, int64_t L, const float* A_rows, const float* dt, const float* dtu, const float* Bs,
                    const float* Cs, float* y, float* checkpoints) {
  for (int64_t s0 = 0; s0 < n; s0 += kBlock) {
    const StateBlock S(A_rows, s0);
    __m512 x[kBlock];
    for (auto& v : x) v = _mm512_setzero_ps();
    for (int64_t t = 0; t < L; ++t) {
      if (checkpoints && t % kChunk == 0)
        for (int i = 0; i < kBlock; ++i) _mm512_storeu_ps(checkpoints + ((t / kChunk) * n + s0 + i) * 16, x[i]);
      const __m512 d = load(dt + t * 16), du = load(dtu + t * 16);
      const float* B = Bs + t * n + s0;
      const float* C = Cs + t * n + s0;
      __m512 acc = load(y + t * 16);
      for (int i = 0; i < kBlock; ++i) {
        x[i] = _mm512_fmadd_ps(exp2_16(_mm512_mul_ps(d, S.A2[i])), x[i], _mm512_mul_ps(du, splat(B[i])));
        acc = _mm512_fmadd_ps(x[i], splat(C[i]), acc);
      }
      _mm512_storeu_ps(y + t * 16, acc);
    }
  }
}

// The 8 sums over lanes of rows r[0..7]: rows 0-3 to lo[0..3], rows 4-7 to hi[0..3] (added to
// what they hold when accumulate). Within 128-bit lanes first (vshufps: no crossing), then across
// them (three vshuff32x4): cross-lane permutes of whole registers cost more on AMD's Zen 4.
MAMBAAD_INLINE void sum_lanes8(const __m512 r[8], float* lo, float* hi, bool accumulate) {
  __m512 pairs[4], quads[2];
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: row 2i's two pair sums, then row 2i+1's
    pairs[i] = _mm512_add_ps(_mm512_shuffle_ps(r[2 * i], r[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(r[2 * i], r[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)  // per 128-bit lane: rows 4i .. 4i+3, each summed over its 4 lanes
    quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // 128-bit lanes: rows 0-3 (lanes 0 + 2), rows 0-3 (1 + 3), rows 4-7 (0 + 2), rows 4-7 (1 + 3)
  const __m512 halves = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 sums = _mm512_add_ps(halves, _mm512_shuffle_f32x4(halves, halves, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 first = _mm512_castps512_ps128(sums), second = _mm512_extractf32x4_ps(sums, 2);
  if (accumulate) {
    first = _mm_add_ps(_mm_loadu_ps(lo), first);
    second = _mm_add_ps(_mm_loadu_ps(hi), second);
  }
  _mm_storeu_ps(lo, first);
  _mm_storeu_ps(hi, second);
}

// Backward of one block of lanes over one direction. In: A_rows (n, 16); dt, dtu, gy (L, 16);
// Bs, Cs (L, n). Out: hB[t] = sum_s h_t B_t and qA[t] = sum_s q_t A (L, 16); dA (n, 16), the
// sums over time; dB_rows / dC_rows (L, n), the sums over the block's lanes (added to what the
// rows hold when accumulate). checkpoints (L / kChunk, n, 16): the states entering the chunks,
// computed here unless saved (a first sweep). Buffers for one chunk: states x_{t0-1} .. x_{t1-1},
// ((kChunk + 1) * 4, 16), and decays, (kChunk * 4, 16). on_chunk(t0, t1) runs when steps
// [t0, t1) have their final hB and qA (after the last state block's pass over them), while they
// are in cache.
template <typename OnChunk>
inline void backward(int64_t n, int64_t L, const float* A_rows, const float* dt, const float* dtu, const float* gy,
                     const float* Bs, const float* Cs, bool accumulate, float* hB, float* qA, float* dA,
                     float* dB_rows, float* dC_rows, float* checkpoints, bool saved, float* states, float* decays,
                     OnChunk&& on_chunk) {
  const int64_t chunks = (L + kChunk - 1) / kChunk;
  for (int64_t s0 = 0; s0 < n; s0 += kBlock) {
    const StateBlock S(A_rows, s0);
    const bool first = s0 == 0;
    __m512 x[kBlock];
    if (!saved) {  // sweep 1: the states entering every chunk
      for (auto& v : x) v = _mm512_setzero_ps();
      for (int64_t t = 0; t < L; ++t) {
        if (t % kChunk == 0)
          for (int i = 0; i < kBlock; ++i) _mm512_storeu_ps(checkpoints + ((t / kChunk) * n + s0 + i) * 16, x[i]);
        const __m512 d = load(dt + t * 16), du = load(dtu + t * 16);
        for (int i = 0; i < kBlock; ++i)
          x[i] = _mm512_fmadd_ps(exp2_16(_mm512_mul_ps(d, S.A2[i])), x[i], _mm512_mul_ps(du, splat(Bs[t * n + s0 + i])));
      }
    }
    // Sweep 2, chunks last to first: recompute the chunk's states and decays, then the adjoint.
    __m512 carry[kBlock], dA_acc[kBlock];
    for (int i = 0; i < kBlock; ++i) carry[i] = dA_acc[i] = _mm512_setzero_ps();
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
      for (int i = 0; i < kBlock; ++i) {
        x[i] = load(checkpoints + (c * n + s0 + i) * 16);
        _mm512_storeu_ps(states + i * 16, x[i]);
      }
      for (int64_t t = t0; t < t1; ++t) {
        const __m512 d = load(dt + t * 16), du = load(dtu + t * 16);
        const int64_t row = (t - t0) * kBlock;
        for (int i = 0; i < kBlock; ++i) {
          const __m512 decay = exp2_16(_mm512_mul_ps(d, S.A2[i]));
          x[i] = _mm512_fmadd_ps(decay, x[i], _mm512_mul_ps(du, splat(Bs[t * n + s0 + i])));
          _mm512_storeu_ps(decays + (row + i) * 16, decay);
          _mm512_storeu_ps(states + (row + kBlock + i) * 16, x[i]);
        }
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const __m512 g = load(gy + t * 16), d = load(dt + t * 16), du = load(dtu + t * 16);
        const int64_t row = (t - t0) * kBlock;
        const float* B = Bs + t * n + s0;
        const float* C = Cs + t * n + s0;
        __m512 sums[8];  // dC terms of the 4 states, then their dB terms
        __m512 hB_t = _mm512_setzero_ps(), qA_t = _mm512_setzero_ps();
        for (int i = 0; i < kBlock; ++i) {
          const __m512 h = _mm512_fmadd_ps(g, splat(C[i]), carry[i]);
          const __m512 decay = load(decays + (row + i) * 16);
          const __m512 cur = load(states + (row + kBlock + i) * 16);
          const __m512 prev = load(states + (row + i) * 16);
          sums[i] = _mm512_mul_ps(g, cur);
          sums[kBlock + i] = _mm512_mul_ps(h, du);
          hB_t = _mm512_fmadd_ps(h, splat(B[i]), hB_t);
          carry[i] = _mm512_mul_ps(decay, h);
          const __m512 q = _mm512_mul_ps(carry[i], prev);  // dLoss/d(dt A) = h decay x_{t-1}
          dA_acc[i] = _mm512_fmadd_ps(q, d, dA_acc[i]);
          qA_t = _mm512_fmadd_ps(q, S.A[i], qA_t);
        }
        if (!first) {
          hB_t = _mm512_add_ps(load(hB + t * 16), hB_t);
          qA_t = _mm512_add_ps(load(qA + t * 16), qA_t);
        }
        _mm512_storeu_ps(hB + t * 16, hB_t);
        _mm512_storeu_ps(qA + t * 16, qA_t);
        sum_lanes8(sums, dC_rows + t * n + s0, dB_rows + t * n + s0, accumulate);
      }
      if (s0 + kBlock >= n) on_chunk(t0, t1);
    }
    for (int i = 0; i < kBlock; ++i) _mm512_storeu_ps(dA + (s0 + i) * 16, dA_acc[i]);
  }
}

}  // namespace avx512
#endif

// Where the checkpoints of (b, direction k, channel block) live in a (b, K, blocks, L / kChunk, n,
// kLanes) tensor.
template <typename T>
MAMBAAD_INLINE int64_t checkpoint_offset(const ScanArgs<T>& a, int64_t b, int64_t k, int64_t block) {
  return ((b * a.dirs + k) * a.blocks() + block) * ((a.length + kChunk - 1) / kChunk) * a.state * kLanes;
}

// Forward of one channel block over direction k (after gather_direction(b, k)): writes its
// outputs, or adds them for k > 0 when summed; with checkpoints not null, also the states
// entering every chunk.
template <typename T, int NS>
void forward_block(const ScanArgs<T>& a, int64_t b, int64_t k, int64_t block, T* out, T* checkpoints,
                   Scratch<T>& s, bool blocked) {
  const int64_t n = NS > 0 ? NS : a.state;
  const int64_t c0 = block * kLanes;
  const int valid = static_cast<int>(std::min<int64_t>(kLanes, a.channels - c0));
  T x_fixed[NS > 0 ? NS * kLanes : 1];
  std::vector<T> x_heap(NS > 0 ? 0 : n * kLanes);
  T* x = NS > 0 ? x_fixed : x_heap.data();
  BlockConstants<T, NS> K(a, k, c0, valid);
  gather_lanes<T, NS>(a, K, b, k, c0, valid, s, u_rows(a, s, b, k, block, blocked), LaneRows<const T>{nullptr, 0});
  T* y = s.ys.data();
  T* cp = checkpoints ? checkpoints + checkpoint_offset(a, b, k, block) : nullptr;
  bool vectorised = false;
#ifdef MAMBAAD_AVX512
  if constexpr (std::is_same_v<T, float>) {
    if (n % avx512::kBlock == 0) {
      const T* u = s.u.data();
      for (int64_t t = 0; t < a.length; ++t)
        for (int j = 0; j < kLanes; ++j) y[t * kLanes + j] = K.D[j] * u[t * kLanes + j];
      avx512::forward(n, a.length, K.A_row(0), s.dt.data(), s.dtu.data(), s.Bs.data(), s.Cs.data(), y, cp);
      vectorised = true;
    }
  }
#endif
  if (!vectorised) {
    std::fill(x, x + n * kLanes, T(0));
    for (int64_t t = 0; t < a.length; ++t) {
      if (cp && t % kChunk == 0) std::memcpy(cp + (t / kChunk) * n * kLanes, x, n * kLanes * sizeof(T));
      const T* Bt = s.Bs.data() + t * n;
      const T* Ct = s.Cs.data() + t * n;
      const T* dt = s.dt.data() + t * kLanes;
      const T* dtu = s.dtu.data() + t * kLanes;
      const T* u = s.u.data() + t * kLanes;
      T* yt = y + t * kLanes;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) yt[j] = K.D[j] * u[j];
      for (int64_t st = 0; st < n; ++st) {
        const T Bs = Bt[st], Cs = Ct[st];
        const T* A = K.A_row(st);
        T* xs = x + st * kLanes;
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const T xv = scan_exp(dt[j] * A[j]) * xs[j] + dtu[j] * Bs;
          xs[j] = xv;
          yt[j] += xv * Cs;
        }
      }
    }
  }
  store_in_token_order(a.length, valid, a.summed && k > 0, s, s.ys.data(),
                       output_rows(a, out, s.y_blocks.data(), b, k, block, blocked));
}

// out[st] (+)= sum over lanes of rows[st][0..kLanes), for st < n.
template <typename T>
MAMBAAD_INLINE void sum_lanes(const T* rows, int64_t n, T* out, bool accumulate) {
  for (int64_t st = 0; st < n; ++st) {
    T acc = T(0);
    for (int j = 0; j < kLanes; ++j) acc += rows[st * kLanes + j];
    out[st] = accumulate ? out[st] + acc : acc;
  }
}

// Gradient buffers of one backward call.
template <typename T>
struct GradArgs {
  const T* dout;      // like out, dense
  Operand<T> du;      // like u (its strides when u is dense); per direction for a shared u
                      // without per_batch
  Operand<T> ddelta;  // like delta (its strides when delta is dense)
  T* dW_part;         // (b, K*d, r): per-channel sums over time of the low-rank weight's gradient
  T* dA_part;         // (b, K*d, n): per-channel sums over time
  T* dD_part;         // (b, K*d)
  T* dbias_part;      // (b, K*d)
  T* dB;              // (b, L, K, n)
  T* dC;              // (b, L, K, n)
  T* checkpoints;     // the forward's, or null
  bool per_batch;     // one task per batch element (shared u): u, the output gradient (summed) and
                      // du go through the task's blocked copies (Scratch::u_blocks, ...), and
                      // directions k > 0 add their part of du
};

// The generic backward recurrences of one block over direction k (any dtype and state size):
// dA (n, kLanes) sums over time, the block's dB / dC rows (added when accumulate), and per step
// hB = sum_s h B and qA = sum_s q A (avx512::backward's outputs), into the scratch; on_chunk as
// in avx512::backward.
template <typename T, int NS, typename OnChunk>
void backward_sweeps(int64_t n, int64_t L, BlockConstants<T, NS>& K, Scratch<T>& s, bool accumulate, T* dA,
                     T* checkpoints, bool saved, OnChunk&& on_chunk) {
  const int64_t chunks = (L + kChunk - 1) / kChunk;
  std::vector<T> heap(NS > 0 ? 0 : 4 * n * kLanes);
  T x_fixed[NS > 0 ? NS * kLanes : 1], carry_fixed[NS > 0 ? NS * kLanes : 1];
  T pB_fixed[NS > 0 ? NS * kLanes : 1], pC_fixed[NS > 0 ? NS * kLanes : 1];
  T* x = NS > 0 ? x_fixed : heap.data();
  T* carry = NS > 0 ? carry_fixed : heap.data() + n * kLanes;
  T* pB = NS > 0 ? pB_fixed : heap.data() + 2 * n * kLanes;
  T* pC = NS > 0 ? pC_fixed : heap.data() + 3 * n * kLanes;
  if (!saved) {  // sweep 1: the state entering every chunk
    std::fill(x, x + n * kLanes, T(0));
    for (int64_t c = 0; c < chunks; ++c) {
      std::memcpy(checkpoints + c * n * kLanes, x, n * kLanes * sizeof(T));
      if (c + 1 < chunks) advance<T, NS>(n, K, s, c * kChunk, (c + 1) * kChunk, x, nullptr, nullptr);
    }
  }
  // Sweep 2, chunks last to first: recompute the chunk's states and decays, then run the adjoint
  // h_t = gy_t C_t + exp(dt_{t+1} A) h_{t+1} backwards through it; carry holds the second term.
  std::fill(carry, carry + n * kLanes, T(0));
  std::fill(dA, dA + n * kLanes, T(0));
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
    T* states = s.states.data();
    std::memcpy(states, checkpoints + c * n * kLanes, n * kLanes * sizeof(T));
    std::memcpy(x, states, n * kLanes * sizeof(T));
    advance<T, NS>(n, K, s, t0, t1, x, s.decays.data(), states);
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const T* Bt = s.Bs.data() + t * n;
      const T* Ct = s.Cs.data() + t * n;
      const T* dt = s.dt.data() + t * kLanes;
      const T* dtu = s.dtu.data() + t * kLanes;
      const T* gy = s.gy.data() + t * kLanes;
      const T* prev = states + (t - t0) * n * kLanes;
      const T* cur = prev + n * kLanes;
      const T* dec = s.decays.data() + (t - t0) * n * kLanes;
      T* hB = s.hB.data() + t * kLanes;
      T* qA = s.qA.data() + t * kLanes;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) { hB[j] = T(0); qA[j] = T(0); }
      for (int64_t st = 0; st < n; ++st) {
        const T Bs = Bt[st], Cs = Ct[st];
        const T* A = K.A_row(st);
        const int64_t o = st * kLanes;
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const T h = carry[o + j] + gy[j] * Cs;
          pC[o + j] = gy[j] * cur[o + j];
          pB[o + j] = h * dtu[j];
          hB[j] += h * Bs;
          const T q = h * prev[o + j] * dec[o + j];  // dLoss/d(dt_t A)
          dA[o + j] += q * dt[j];
          qA[j] += q * A[j];
          carry[o + j] = dec[o + j] * h;
        }
      }
      sum_lanes(pC, n, s.dC_rows.data() + t * n, accumulate);
      sum_lanes(pB, n, s.dB_rows.data() + t * n, accumulate);
    }
    on_chunk(t0, t1);
  }
}

// Backward of one (b, direction k) task over every channel block: its blocks add their dB / dC
// in order into the task's rows, so no partial sums leave the task.
template <typename T, int NS>
void backward_task(const ScanArgs<T>& a, const GradArgs<T>& g, int64_t b, int64_t k, Scratch<T>& s) {
  const bool saved = g.checkpoints != nullptr;
  const int64_t n = NS > 0 ? NS : a.state;
  const int64_t L = a.length;
  T dA_fixed[NS > 0 ? NS * kLanes : 1];
  std::vector<T> dA_heap(NS > 0 ? 0 : n * kLanes);
  T* dA = NS > 0 ? dA_fixed : dA_heap.data();
  gather_direction(a, b, k, s);
  for (int64_t block = 0; block < a.blocks(); ++block) {
    const int64_t c0 = block * kLanes;
    const int valid = static_cast<int>(std::min<int64_t>(kLanes, a.channels - c0));
    BlockConstants<T, NS> K(a, k, c0, valid);
    const LaneRows<T> du_rows = g.per_batch ? LaneRows<T>{s.du_blocks.data() + block * L * kLanes, kLanes}
                                            : LaneRows<T>{g.du.at(b, 0, k) + c0, g.du.sl};
    gather_lanes<T, NS>(a, K, b, k, c0, valid, s, u_rows(a, s, b, k, block, g.per_batch),
                        output_rows(a, g.dout, static_cast<const T*>(s.y_blocks.data()), b, k, block, g.per_batch));
    const bool accumulate = block > 0;
    T* checkpoints = saved ? g.checkpoints + checkpoint_offset(a, b, k, block) : s.checkpoints.data();
    // Chain to u, delta and the skip term, chunk by chunk as the recurrences finish them (steps
    // in a fixed order: the per-channel sums are reproducible): dLoss/d dt_t = qA + hB u,
    // dLoss/d(delta + bias) = that times ddt (into ddt), dLoss/du_t = hB dt + gy D (into hB's
    // row, which is spent; to du in token order once the block is done).
    T dD_acc[kLanes] = {}, dbias_acc[kLanes] = {};
    const bool add_du = g.per_batch && k > 0;
    auto chain = [&](int64_t t0, int64_t t1) {
      // Locals, so that the sums and D stay in registers (no aliasing with the rows written).
      T dD_sum[kLanes], dbias_sum[kLanes], D[kLanes];
      std::memcpy(dD_sum, dD_acc, sizeof(dD_sum));
      std::memcpy(dbias_sum, dbias_acc, sizeof(dbias_sum));
      std::memcpy(D, K.D, sizeof(D));
      T* __restrict__ ddt = s.ddt.data();
      T* __restrict__ hB = s.hB.data();
      const T* __restrict__ qA = s.qA.data();
      const T* __restrict__ dt = s.dt.data();
      const T* __restrict__ gy = s.gy.data();
      const T* __restrict__ u = s.u.data();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t row = t * kLanes;
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const int64_t i = row + j;
          const T dd = (qA[i] + hB[i] * u[i]) * ddt[i];
          hB[i] = hB[i] * dt[i] + gy[i] * D[j];
          ddt[i] = dd;
          dD_sum[j] += gy[i] * u[i];
          dbias_sum[j] += dd;
        }
        if (!a.rank) store_lanes(ddt + row, valid, false, g.ddelta.at(b, a.token(k, t), k) + c0);
      }
      std::memcpy(dD_acc, dD_sum, sizeof(dD_sum));
      std::memcpy(dbias_acc, dbias_sum, sizeof(dbias_sum));
    };
    bool vectorised = false;
#ifdef MAMBAAD_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (n % avx512::kBlock == 0) {
        avx512::backward(n, L, K.A_row(0), s.dt.data(), s.dtu.data(), s.gy.data(), s.Bs.data(), s.Cs.data(),
                         accumulate, s.hB.data(), s.qA.data(), dA, s.dB_rows.data(), s.dC_rows.data(), checkpoints,
                         saved, s.states.data(), s.decays.data(), chain);
        vectorised = true;
      }
    }
#endif
    if (!vectorised) backward_sweeps<T, NS>(n, L, K, s, accumulate, dA, checkpoints, saved, chain);
    // du in token order, after the block. (Scattering each step's row as the chain makes it, inside
    // the recurrence, evicted the recurrence's chunk buffers from the cache: 6% of the backward.)
    store_in_token_order(L, valid, add_du, s, s.hB.data(), du_rows);

    std::vector<T> dW(a.rank * kLanes, T(0));
    if (a.rank)
      dispatch_size(a.rank, [&](auto rank) {
        low_rank_backward<T, decltype(rank)::value>(a.rank, L, K.W.data(), s.ddt.data(), s.Ds.data(), block > 0,
                                                    s.dDs.data(), dW.data());
      });
    for (int j = 0; j < valid; ++j) {
      const int64_t row = (b * a.dirs + k) * a.channels + c0 + j;
      for (int64_t st = 0; st < n; ++st) g.dA_part[row * n + st] = dA[st * kLanes + j];
      g.dD_part[row] = dD_acc[j];
      g.dbias_part[row] = dbias_acc[j];
      for (int64_t r = 0; r < a.rank; ++r) g.dW_part[row * a.rank + r] = dW[r * kLanes + j];
    }
  }
  // The direction's dB / dC (and low-rank factor) rows back to token order.
  // (NS: a compile-time row length for the common state sizes, so the copies are inlined.)
  for (int64_t l = 0; l < L; ++l) {
    const int64_t at = ((b * L + l) * a.dirs + k) * n;
    std::memcpy(g.dB + at, s.dB_rows.data() + s.step[l] * n, (NS > 0 ? NS : n) * sizeof(T));
    std::memcpy(g.dC + at, s.dC_rows.data() + s.step[l] * n, (NS > 0 ? NS : n) * sizeof(T));
    if (a.rank) std::memcpy(g.ddelta.at(b, l, k), s.dDs.data() + s.step[l] * a.rank, a.rank * sizeof(T));
  }
}

// Runs fn(task, scratch) for every task in [0, tasks) on torch's intra-op threads. Workers take
// the next task from a shared counter, so a thread that the OS deschedules (another job on the
// machine) holds up one task, not a fixed share of them. Results do not depend on which worker
// runs which task.
template <typename T, typename Fn>
void for_each_task(int64_t tasks, int64_t length, int64_t state, int64_t rank, bool backward, Fn&& fn) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch<T>& scratch = thread_scratch<T>(length, state, rank, backward);
    for (int64_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) fn(task, scratch);
  });
}


void check_operand(const torch::Tensor& x, const char* name, torch::ScalarType dtype, bool allow_shared,
                   int64_t batch, int64_t length, int64_t dirs, int64_t inner) {
  TORCH_CHECK(x.device().is_cpu(), "selective_scan_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == dtype, "selective_scan_cpu: ", name, " must have u's dtype");
  const bool shared = allow_shared && x.dim() == 3;
  TORCH_CHECK(shared || x.dim() == 4, "selective_scan_cpu: ", name, " must be (b, L, K, inner)",
              allow_shared ? " or (b, L, inner)" : "");
  const std::vector<int64_t> expected = shared ? std::vector<int64_t>{batch, length, inner}
                                               : std::vector<int64_t>{batch, length, dirs, inner};
  TORCH_CHECK(x.sizes().vec() == expected, "selective_scan_cpu: ", name, " has shape ", x.sizes(),
              ", expected ", c10::IntArrayRef(expected));
  TORCH_CHECK(x.stride(-1) == 1 || inner == 1, "selective_scan_cpu: ", name, " needs unit stride in its last dim");
}

void check_vector(const c10::optional<torch::Tensor>& x, const char* name, torch::ScalarType dtype, int64_t size) {
  if (!x.has_value()) return;
  TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == dtype && x->is_contiguous() && x->dim() == 1 &&
                  x->size(0) == size,
              "selective_scan_cpu: ", name, " must be a contiguous (K*d,) CPU tensor of u's dtype");
}

// Shapes (b, L, K, d, n) of a call, after checking every input.
// Shapes (b, L, K, d, n, r) of a call (r = 0 without dt_weight), after checking every input.
std::vector<int64_t> check_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                  const torch::Tensor& B, const torch::Tensor& C,
                                  const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& bias,
                                  const c10::optional<torch::Tensor>& dt_weight,
                                  const c10::optional<torch::Tensor>& order) {
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64,
              "selective_scan_cpu: u must be float32 or float64, got ", dtype);
  TORCH_CHECK(delta.dim() == 4, "selective_scan_cpu: delta must be (b, L, K, d) or, with dt_weight, (b, L, K, r)");
  TORCH_CHECK(u.dim() == 3 || u.dim() == 4, "selective_scan_cpu: u must be (b, L, d) or (b, L, K, d)");
  const int64_t batch = delta.size(0), length = delta.size(1), dirs = delta.size(2), channels = u.size(-1);
  const int64_t rank = dt_weight.has_value() ? delta.size(3) : 0;
  if (dt_weight.has_value()) {
    TORCH_CHECK(dt_weight->dim() == 3 && dt_weight->size(0) == dirs && dt_weight->size(1) == channels &&
                    dt_weight->size(2) == rank && dt_weight->is_contiguous() && dt_weight->scalar_type() == dtype &&
                    dt_weight->device().is_cpu(),
                "selective_scan_cpu: dt_weight must be a contiguous (K, d, r) CPU tensor of u's dtype");
  }
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dirs * channels && A.is_contiguous() && A.scalar_type() == dtype,
              "selective_scan_cpu: A must be a contiguous (K*d, n) tensor of u's dtype");
  const int64_t state = A.size(1);
  check_operand(u, "u", dtype, true, batch, length, dirs, channels);
  check_operand(delta, "delta", dtype, false, batch, length, dirs, rank ? rank : channels);
  check_operand(B, "B", dtype, false, batch, length, dirs, state);
  check_operand(C, "C", dtype, false, batch, length, dirs, state);
  check_vector(D, "D", dtype, dirs * channels);
  check_vector(bias, "delta_bias", dtype, dirs * channels);
  if (order.has_value()) {
    TORCH_CHECK(order->scalar_type() == torch::kInt64 && order->is_contiguous() && order->dim() == 2 &&
                    order->size(0) == dirs && order->size(1) == length,
                "selective_scan_cpu: order must be a contiguous int64 (K, L) tensor");
    // Every direction must visit every token once: outputs and dB / dC rows are written, not summed.
    const int64_t* index = order->data_ptr<int64_t>();
    std::vector<char> seen(length);
    for (int64_t k = 0; k < dirs; ++k) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t t = 0; t < length; ++t) {
        const int64_t l = index[k * length + t];
        TORCH_CHECK(l >= 0 && l < length && !seen[l], "selective_scan_cpu: order row ", k,
                    " is not a permutation of 0..L-1");
        seen[l] = 1;
      }
    }
  }
  return {batch, length, dirs, channels, state, rank};
}

template <typename T>
ScanArgs<T> make_args(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                      const torch::Tensor& B, const torch::Tensor& C, const c10::optional<torch::Tensor>& D,
                      const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& dt_weight,
                      const c10::optional<torch::Tensor>& order, bool softplus, bool summed,
                      const std::vector<int64_t>& shape) {
  ScanArgs<T> a;
  a.u = operand<T>(u);
  a.delta = operand<T>(delta);
  a.dt_weight = dt_weight.has_value() ? dt_weight->data_ptr<T>() : nullptr;
  a.rank = shape[5];
  a.B = operand<T>(B);
  a.C = operand<T>(C);
  a.A = A.data_ptr<T>();
  a.D = D.has_value() ? D->data_ptr<T>() : nullptr;
  a.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  a.order = order.has_value() ? order->data_ptr<int64_t>() : nullptr;
  a.softplus = softplus;
  a.summed = summed;
  a.shared_u = u.dim() == 3;
  a.batch = shape[0];
  a.length = shape[1];
  a.dirs = shape[2];
  a.channels = shape[3];
  a.state = shape[4];
  return a;
}

// du[b, l, :] = sum over k of parts[b, k, l, :], k in order.
template <typename T>
void sum_directions(const T* parts, const Operand<T>& du, int64_t batch, int64_t length, int64_t dirs,
                    int64_t channels) {
  at::parallel_for(0, batch * length, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bl = begin; bl < end; ++bl) {
      const int64_t b = bl / length, l = bl % length;
      T* row = du.at(b, l, 0);
      const T* part = parts + (b * dirs * length + l) * channels;
      std::memcpy(row, part, channels * sizeof(T));
      for (int64_t k = 1; k < dirs; ++k) {
        const T* part_k = part + k * length * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) row[c] += part_k[c];
      }
    }
  });
}

// out[i] = sum over b of parts[b, i], b in order (the batch's per-sample partial sums).
template <typename T>
void sum_batch(const T* parts, int64_t batch, int64_t m, T* out) {
  at::parallel_for(0, m, 4096, [&](int64_t begin, int64_t end) {
    std::memcpy(out + begin, parts + begin, (end - begin) * sizeof(T));
    for (int64_t b = 1; b < batch; ++b) {
      const T* part = parts + b * m;
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] += part[i];
    }
  });
}

// Returns out and, with save_checkpoints, the states entering every chunk for the backward
// ((b, K, blocks, L / kChunk, n, kLanes); an empty tensor otherwise).
std::vector<torch::Tensor> scan_forward(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                        const torch::Tensor& B, const torch::Tensor& C,
                                        const c10::optional<torch::Tensor>& D, const c10::optional<torch::Tensor>& bias,
                                        const c10::optional<torch::Tensor>& dt_weight,
                                        const c10::optional<torch::Tensor>& order, bool softplus, bool summed,
                                        bool save_checkpoints) {
  const auto shape = check_inputs(u, delta, A, B, C, D, bias, dt_weight, order);
  const int64_t batch = shape[0], length = shape[1], dirs = shape[2], channels = shape[3], state = shape[4];
  auto out = summed ? torch::empty({batch, length, channels}, u.options())
                    : torch::empty({batch, length, dirs, channels}, u.options());
  const int64_t blocks = (channels + kLanes - 1) / kLanes, chunks = (length + kChunk - 1) / kChunk;
  // Tasks: one per batch element (directions outer, so each direction's rows are gathered once)
  // when there are enough to keep the threads busy, else one per (batch element, channel block).
  // Either way every output adds the directions in order k = 0, 1, ...: bit-identical results.
  const bool per_batch = batch >= 2 * at::get_num_threads();
  auto checkpoints = save_checkpoints ? torch::empty({batch, dirs, blocks, chunks, state, kLanes}, u.options())
                                      : torch::empty({0}, u.options());
  if (out.numel() == 0 || state == 0) return {out.zero_(), checkpoints.zero_()};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    const auto args = make_args<scalar_t>(u, delta, A, B, C, D, bias, dt_weight, order, softplus, summed, shape);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    scalar_t* cp = save_checkpoints ? checkpoints.data_ptr<scalar_t>() : nullptr;
    dispatch_size(args.state, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      if (per_batch) {
        // Each block's rows of u and of the (summed) output made contiguous once per batch element
        // (to_blocks): the directions' passes gather from and add to a compact region.
        for_each_task<scalar_t>(batch, length, args.state, args.rank, false, [&](int64_t b, Scratch<scalar_t>& s) {
          for (auto* v : {&s.u_blocks, &s.y_blocks}) v->resize(blocks * length * kLanes);
          if (args.shared_u) to_blocks(args.u.at(b, 0, 0), args.u.sl, length, channels, s.u_blocks.data());
          for (int64_t k = 0; k < dirs; ++k) {
            gather_direction(args, b, k, s);
            for (int64_t block = 0; block < blocks; ++block)
              forward_block<scalar_t, NS>(args, b, k, block, out_ptr, cp, s, true);
          }
          if (summed) from_blocks(s.y_blocks.data(), length, channels, out_ptr + b * length * channels, channels);
        });
      } else {
        for_each_task<scalar_t>(batch * blocks, length, args.state, args.rank, false,
                                [&](int64_t task, Scratch<scalar_t>& s) {
          const int64_t b = task / blocks, block = task % blocks;
          for (int64_t k = 0; k < dirs; ++k) {
            gather_direction(args, b, k, s);
            forward_block<scalar_t, NS>(args, b, k, block, out_ptr, cp, s, false);
          }
        });
      }
    });
  });
  return {out, checkpoints};
}

// Returns du (like u), ddelta (like delta), dA, dB (b, L, K, n), dC, dD, ddelta_bias, ddt_weight;
// the optional ones are undefined tensors when their input is absent.
std::vector<torch::Tensor> scan_backward(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                                         const torch::Tensor& B, const torch::Tensor& C,
                                         const c10::optional<torch::Tensor>& D,
                                         const c10::optional<torch::Tensor>& bias,
                                         const c10::optional<torch::Tensor>& dt_weight,
                                         const c10::optional<torch::Tensor>& order, bool softplus, bool summed,
                                         const c10::optional<torch::Tensor>& checkpoints, const torch::Tensor& dout) {
  const auto shape = check_inputs(u, delta, A, B, C, D, bias, dt_weight, order);
  const int64_t batch = shape[0], length = shape[1], dirs = shape[2], channels = shape[3], state = shape[4];
  const int64_t rank = shape[5];
  const int64_t blocks = (channels + kLanes - 1) / kLanes, chunks = (length + kChunk - 1) / kChunk;
  const bool saved = checkpoints.has_value() && checkpoints->numel() > 0;
  TORCH_CHECK(!saved || (checkpoints->sizes().vec() == std::vector<int64_t>{batch, dirs, blocks, chunks, state, kLanes} &&
                         checkpoints->is_contiguous() && checkpoints->scalar_type() == u.scalar_type()),
              "selective_scan_cpu: checkpoints must be the forward's");
  const std::vector<int64_t> out_shape = summed ? std::vector<int64_t>{batch, length, channels}
                                                : std::vector<int64_t>{batch, length, dirs, channels};
  TORCH_CHECK(dout.sizes().vec() == out_shape && dout.scalar_type() == u.scalar_type() && dout.is_contiguous(),
              "selective_scan_cpu: dout must be a contiguous tensor shaped like the output");
  auto options = u.options();
  // Gradients keep their inputs' strides where those are dense (e.g. delta from an einsum), so that
  // the ops that consume them need no copy.
  auto du = u.is_non_overlapping_and_dense() ? torch::empty_like(u) : torch::empty(u.sizes(), options);
  auto ddelta = delta.is_non_overlapping_and_dense() ? torch::empty_like(delta) : torch::empty(delta.sizes(), options);
  // A shared u's gradient sums the directions' parts in order k = 0, 1, ...: with enough batch
  // elements to keep the threads busy, one task per batch element adds them into du as it goes;
  // else every (batch, direction) task writes its part to du_parts, (b, K, L, d), summed below.
  // Both add the same numbers in the same order (bit-identical results).
  const bool shared_u = u.dim() == 3;
  const bool per_batch = shared_u && batch >= 2 * at::get_num_threads();
  auto du_parts = shared_u && !per_batch ? torch::empty({batch, dirs, length, channels}, options) : du;
  auto dA_part = torch::empty({batch, dirs * channels, state}, options);
  auto dD_part = torch::empty({batch, dirs * channels}, options);
  auto dbias_part = torch::empty({batch, dirs * channels}, options);
  auto dA = torch::empty_like(A);
  auto dB = torch::empty({batch, length, dirs, state}, options);
  auto dC = torch::empty({batch, length, dirs, state}, options);
  auto dD = torch::empty({dirs * channels}, options);
  auto dbias = torch::empty({dirs * channels}, options);
  auto dW_part = torch::empty({batch, dirs * channels, rank}, options);
  auto dW = torch::empty({dirs, channels, rank}, options);
  if (du.numel() == 0 || state == 0) {
    for (auto* t : {&du, &ddelta, &dA, &dB, &dC, &dD, &dbias, &dW}) t->zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
      using T = scalar_t;
      const auto args = make_args<T>(u, delta, A, B, C, D, bias, dt_weight, order, softplus, summed, shape);
      // du_parts (b, K, L, d) read as (b, L, K, d) strides.
      const Operand<T> du_op = shared_u && !per_batch
                                   ? Operand<T>{du_parts.data_ptr<T>(), dirs * length * channels, channels,
                                                length * channels}
                                   : operand<T>(du);
      GradArgs<T> grads{dout.data_ptr<T>(), du_op, operand<T>(ddelta), dW_part.data_ptr<T>(),
                        dA_part.data_ptr<T>(), dD_part.data_ptr<T>(), dbias_part.data_ptr<T>(), dB.data_ptr<T>(),
                        dC.data_ptr<T>(), saved ? checkpoints->data_ptr<T>() : nullptr, per_batch};
      dispatch_size(state, [&](auto ns) {
        constexpr int NS = decltype(ns)::value;
        if (per_batch) {
          // Each block's rows of u, the output gradient and du made contiguous once per batch
          // element: the directions' passes then gather from and scatter to a compact region.
          const int64_t blocked_size = blocks * length * kLanes;
          for_each_task<T>(batch, length, state, rank, true, [&](int64_t b, Scratch<T>& s) {
            for (auto* v : {&s.u_blocks, &s.y_blocks, &s.du_blocks}) v->resize(blocked_size);
            to_blocks(args.u.at(b, 0, 0), args.u.sl, length, channels, s.u_blocks.data());
            if (summed) to_blocks(grads.dout + b * length * channels, channels, length, channels, s.y_blocks.data());
            for (int64_t k = 0; k < dirs; ++k) backward_task<T, NS>(args, grads, b, k, s);
            from_blocks(s.du_blocks.data(), length, channels, grads.du.at(b, 0, 0), grads.du.sl);
          });
        } else {
          for_each_task<T>(batch * dirs, length, state, rank, true, [&](int64_t task, Scratch<T>& s) {
            backward_task<T, NS>(args, grads, task / dirs, task % dirs, s);
          });
        }
      });
      // Fixed-order reductions: directions for a shared u (unless added per batch element), the
      // batch for dA / dD / ddelta_bias.
      if (shared_u && !per_batch) sum_directions(du_parts.data_ptr<T>(), operand<T>(du), batch, length, dirs, channels);
      const int64_t rows = dirs * channels;
      sum_batch(grads.dA_part, batch, rows * state, dA.data_ptr<T>());
      sum_batch(grads.dW_part, batch, rows * rank, dW.data_ptr<T>());
      sum_batch(grads.dD_part, batch, rows, dD.data_ptr<T>());
      sum_batch(grads.dbias_part, batch, rows, dbias.data_ptr<T>());
    });
  }
  return {du, ddelta, dA, dB, dC, D.has_value() ? dD : torch::Tensor(), bias.has_value() ? dbias : torch::Tensor(),
          dt_weight.has_value() ? dW : torch::Tensor()};
}

}  // namespace

// instance_norm_silu_cpu.cpp: silu(instance_norm(x)) on a channels-last (b, C, H, W) map; the
// forward returns y, mean (b, C), rstd (b, C), the backward dLoss/dx.
std::vector<torch::Tensor> instance_norm_silu_forward(const torch::Tensor& x, double eps);
torch::Tensor instance_norm_silu_backward(const torch::Tensor& grad, const torch::Tensor& x,
                                          const torch::Tensor& mean, const torch::Tensor& rstd);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "MambaAD's CPU kernels: the fused selective scan (token-major, optional scan orders) and "
            "InstanceNorm + SiLU on channels-last maps";
  m.def("forward", &scan_forward,
        "selective scan forward: u, delta, A, B, C, D, delta_bias, dt_weight, order, softplus, summed, "
        "save_checkpoints -> out, checkpoints");
  m.def("backward", &scan_backward,
        "selective scan backward: u, delta, A, B, C, D, delta_bias, dt_weight, order, softplus, summed, "
        "checkpoints, dout");
  m.def("has_avx512", []() {
#ifdef MAMBAAD_AVX512
    return true;
#else
    return false;
#endif
  }, "whether this build has the hand-vectorised AVX-512 recurrences (else the portable loops)");
  m.def("instance_norm_silu_forward", &instance_norm_silu_forward, "silu(instance_norm(x)): x, eps -> y, mean, rstd");
  m.def("instance_norm_silu_backward", &instance_norm_silu_backward, "grad, x, mean, rstd -> dx");
}
