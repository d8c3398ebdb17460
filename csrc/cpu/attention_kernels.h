// Paged prefill attention, written once over a vector type V and element type T.
//
// One work unit = one sequence, one KV head, a block of that sequence's new tokens.
// All q heads that share the KV head (the GQA group) are processed together, so
// each K/V row is converted and loaded once per unit for the whole group. The
// unit's M = tokens x group query rows live in the vector lanes ("rows in lanes"):
//   Qt[d][m]  queries, transposed and pre-scaled, packed once per unit
//   St[n][m]  scores of key n for every row: St[n] += K[n][d] * Qt[d] (broadcast K)
//   Ot[d][m]  output accumulator:            Ot[d] += V[n][d] * P[n]  (broadcast V)
// so the online-softmax max/sum over keys are plain lane-wise vector ops and
// neither K nor V needs a transpose. Keys are visited in chunks of kKeyChunk
// in order from key 0, so every row sees its first valid key in the first chunk.
//
// Numerics: fp32 throughout (inputs converted exactly), online softmax
// (running max m, running sum l, rescale by exp(m_old - m_new)), output O / l
// rounded once to T. The cache element type C is T, or e4m3 for a quantized
// cache: its codes are decoded exactly and the scales folded in, k_scale into
// the query pre-scale (scale * k_scale) and v_scale into the output
// (O * v_scale / l); both are 1 for a T cache, which leaves those products exact.
#pragma once

#include <stdlib.h>

#include <cstdint>

#include "dtype.h"
#include "kernel_args.h"

namespace reward_engine::cpu {
namespace {  // internal linkage: see dtype.h

constexpr int kKeyChunk = 64;
constexpr float kMaskedScore = -1e30f;  // finite, so max/exp never see inf - inf

// Per-thread scratch that only grows. Plain malloc/free and no destructor: no
// C++ library code is instantiated in an ISA-specific translation unit.
struct Scratch {
  float* data;
  int64_t size;
};
thread_local Scratch t_scratch = {nullptr, 0};

inline float* scratch(int64_t floats) {
  if (t_scratch.size < floats) {
    free(t_scratch.data);
    t_scratch.data = static_cast<float*>(aligned_alloc(64, size_t((floats + 15) / 16 * 64)));
    t_scratch.size = t_scratch.data ? floats : 0;
  }
  return t_scratch.data;
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <class V, class T>
inline void row_to_float(const T* src, float* dst, int64_t n, int64_t n_padded) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(dst + i, V::load(src + i));
  if (i < n) V::store(dst + i, V::load(src + i, int(n - i)), int(n - i));
  for (i = n; i < n_padded; ++i) dst[i] = 0.0f;
}

// Per-row state of one unit, shared by every attention kernel: running max and
// sum, the rescale factor of the last chunk, and each row's absolute position
// (padded rows get an "infinite" position: never masked, output discarded).
struct RowState {
  float* max;
  float* sum;
  float* alpha;
  float* pos;
};

inline void init_rows(const RowState& r, const AttentionUnit& unit, int64_t group, int64_t rows,
                      int64_t Mp) {
  for (int64_t m = 0; m < Mp; ++m) {
    r.max[m] = kMaskedScore;
    r.sum[m] = 0.0f;
    r.pos[m] = m < rows ? float(unit.first_pos + m / group) : 3e38f;
  }
}

// Scores St[n][m] of keys c0 + n: mask keys after the row's position and the
// padding keys n >= nk. Only chunks that reach past the unit's first position
// can hold a masked key.
template <class V>
inline void mask_scores(float* st, const RowState& r, int64_t c0, int64_t nk, int64_t nkp,
                        int64_t first_pos, int64_t Mp) {
  using F = typename V::F;
  if (c0 + nkp - 1 <= first_pos) return;
  const F masked = V::set1(kMaskedScore);
  for (int64_t n = 0; n < nkp; ++n) {
    const F key_pos = V::set1(n < nk ? float(c0 + n) : __builtin_inff());
    float* s = st + n * Mp;
    for (int64_t m = 0; m < Mp; m += V::W) {
      V::store(s + m, V::select_gt(key_pos, V::load(r.pos + m), masked, V::load(s + m)));
    }
  }
}

// Online softmax over one chunk of scores, lane-wise over rows: St becomes
// P = exp(S - new max); max, sum and alpha = exp(old max - new max) are updated.
// A masked key gets P = 0 exactly (V::exp never returns 0: it clamps its argument
// at -87), so a key past a row's position adds nothing to its sum or output: the
// row's result is the same whichever other rows (and so keys) share its unit,
// which batch-invariant scoring relies on.
template <class V>
inline void softmax_chunk(float* st, const RowState& r, int64_t nkp, int64_t Mp) {
  using F = typename V::F;
  const F unmasked = V::set1(0.5f * kMaskedScore);
  for (int64_t m = 0; m < Mp; m += V::W) {
    F mx = V::load(r.max + m);
    const F old_max = mx;
    for (int64_t n = 0; n < nkp; ++n) mx = V::max(mx, V::load(st + n * Mp + m));
    const F scale_old = V::exp(V::sub(old_max, mx));
    F sum = V::mul(V::load(r.sum + m), scale_old);
    for (int64_t n = 0; n < nkp; ++n) {
      const F score = V::load(st + n * Mp + m);
      const F p = V::select_gt(score, unmasked, V::exp(V::sub(score, mx)), V::zero());
      V::store(st + n * Mp + m, p);
      sum = V::add(sum, p);
    }
    V::store(r.max + m, mx);
    V::store(r.sum + m, sum);
    V::store(r.alpha + m, scale_old);
  }
}

// out[t, h, d] = Ot[d][m] * (v_scale / l[m]), rounded once to T.
template <class T>
inline void store_output(const AttentionArgs& a, const AttentionUnit& unit, const float* ot,
                         const RowState& r, int64_t group, int64_t rows, int64_t Mp) {
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t t = unit.token_begin + m / group;
    const int64_t h = unit.kv_head * group + m % group;
    T* o = static_cast<T*>(a.out) + t * a.out_token_stride + h * a.out_head_stride;
    const float inv = a.v_scale / r.sum[m];
    for (int64_t d = 0; d < a.head_dim; ++d) store_float(o + d, ot[d * Mp + m] * inv);
  }
}

// Query q[token, head] of row m of a unit.
template <class T>
inline const T* query_row(const AttentionArgs& a, const AttentionUnit& unit, int64_t group,
                          int64_t m) {
  const int64_t t = unit.token_begin + m / group;
  const int64_t h = unit.kv_head * group + m % group;
  return static_cast<const T*>(a.q) + t * a.q_token_stride + h * a.q_head_stride;
}

// Element offset of key j of a unit's sequence (and KV head) in the caches.
inline int64_t kv_offset(const AttentionArgs& a, const int32_t* table, int64_t kv_head,
                         int64_t j) {
  const int64_t slot = int64_t(table[j / a.block_size]) * a.block_size + j % a.block_size;
  return (slot * a.num_kv_heads + kv_head) * a.head_dim;
}

// T: the element type of q and out; C: the caches' (T, or e4m3).
template <class V, class T, class C = T>
void paged_attention_units(const AttentionArgs& a, const AttentionUnit* units, int64_t begin,
                           int64_t end) {
  using F = typename V::F;
  constexpr int MB = V::W >= 16 ? 4 : 2;  // row vectors per register tile
  constexpr int NB = 4;                   // keys (QK) or head dims (PV) per register tile
  const int64_t D = a.head_dim, group = a.num_q_heads / a.num_kv_heads;
  const int64_t Dp = round_up(D, NB);
  const int64_t max_rows = a.tokens_per_unit * group;
  const int64_t Mp = round_up(max_rows, int64_t(MB) * V::W);

  float* qt = scratch(2 * Dp * Mp + kKeyChunk * Mp + 2 * kKeyChunk * Dp + 4 * Mp);
  float* ot = qt + Dp * Mp;
  float* st = ot + Dp * Mp;
  float* kf = st + kKeyChunk * Mp;
  float* vf = kf + kKeyChunk * Dp;
  const RowState rs{vf + kKeyChunk * Dp, vf + kKeyChunk * Dp + Mp, vf + kKeyChunk * Dp + 2 * Mp,
                    vf + kKeyChunk * Dp + 3 * Mp};

  const C* key_cache = static_cast<const C*>(a.key_cache);
  const C* value_cache = static_cast<const C*>(a.value_cache);
  const float q_scale = a.scale * a.k_scale;

  for (int64_t u = begin; u < end; ++u) {
    const AttentionUnit& unit = units[u];
    const int64_t tokens = unit.token_end - unit.token_begin;
    const int64_t rows = tokens * group;
    const int32_t* table = a.block_tables + unit.seq * a.block_table_stride;

    // Pack queries, transposed and pre-scaled: row m = token * group + head-in-group;
    // padded rows get zero queries.
    init_rows(rs, unit, group, rows, Mp);
    for (int64_t i = 0; i < Dp * Mp; ++i) qt[i] = ot[i] = 0.0f;
    for (int64_t m = 0; m < rows; ++m) {
      const T* q = query_row<T>(a, unit, group, m);
      for (int64_t d = 0; d < D; ++d) qt[d * Mp + m] = to_float(q[d]) * q_scale;
    }

    const int64_t num_keys = unit.first_pos + tokens;  // causal limit of the last row
    for (int64_t c0 = 0; c0 < num_keys; c0 += kKeyChunk) {
      const int64_t nk = num_keys - c0 < kKeyChunk ? num_keys - c0 : kKeyChunk;
      const int64_t nkp = round_up(nk, NB);
      for (int64_t n = 0; n < nkp; ++n) {
        if (n < nk) {
          const int64_t offset = kv_offset(a, table, unit.kv_head, c0 + n);
          row_to_float<V, C>(key_cache + offset, kf + n * Dp, D, Dp);
          row_to_float<V, C>(value_cache + offset, vf + n * Dp, D, Dp);
        } else {
          for (int64_t d = 0; d < Dp; ++d) kf[n * Dp + d] = vf[n * Dp + d] = 0.0f;
        }
      }

      // St[n][m] = sum_d K[n][d] * Qt[d][m]
      for (int64_t m0 = 0; m0 < Mp; m0 += MB * V::W) {
        for (int64_t n0 = 0; n0 < nkp; n0 += NB) {
          F acc[NB][MB];
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j) acc[i][j] = V::zero();
          for (int64_t d = 0; d < D; ++d) {
            F qv[MB];
            for (int j = 0; j < MB; ++j) qv[j] = V::load(qt + d * Mp + m0 + j * V::W);
            for (int i = 0; i < NB; ++i) {
              const F kb = V::set1(kf[(n0 + i) * Dp + d]);
              for (int j = 0; j < MB; ++j) acc[i][j] = V::fmadd(kb, qv[j], acc[i][j]);
            }
          }
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j) V::store(st + (n0 + i) * Mp + m0 + j * V::W, acc[i][j]);
        }
      }

      mask_scores<V>(st, rs, c0, nk, nkp, unit.first_pos, Mp);
      softmax_chunk<V>(st, rs, nkp, Mp);

      // Ot[d][m] = Ot[d][m] * alpha[m] + sum_n V[n][d] * P[n][m]
      for (int64_t m0 = 0; m0 < Mp; m0 += MB * V::W) {
        F al[MB];
        for (int j = 0; j < MB; ++j) al[j] = V::load(rs.alpha + m0 + j * V::W);
        for (int64_t d0 = 0; d0 < Dp; d0 += NB) {
          F acc[NB][MB];
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j)
              acc[i][j] = V::mul(V::load(ot + (d0 + i) * Mp + m0 + j * V::W), al[j]);
          for (int64_t n = 0; n < nkp; ++n) {
            F pv[MB];
            for (int j = 0; j < MB; ++j) pv[j] = V::load(st + n * Mp + m0 + j * V::W);
            for (int i = 0; i < NB; ++i) {
              const F vb = V::set1(vf[n * Dp + d0 + i]);
              for (int j = 0; j < MB; ++j) acc[i][j] = V::fmadd(vb, pv[j], acc[i][j]);
            }
          }
          for (int i = 0; i < NB; ++i)
            for (int j = 0; j < MB; ++j) V::store(ot + (d0 + i) * Mp + m0 + j * V::W, acc[i][j]);
        }
      }
    }
    store_output<T>(a, unit, ot, rs, group, rows, Mp);
  }
}

}  // namespace
}  // namespace reward_engine::cpu
