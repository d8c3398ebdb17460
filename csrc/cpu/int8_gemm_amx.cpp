// int8_gemm on AMX-INT8 (compiled with the AVX-512 flags plus -mamx-tile
// -mamx-int8). TDPBSSD multiplies a 16 x 64 tile of signed bytes of A by a
// 64 x 16 tile of signed bytes of B (stored as 16 rows of 16 columns x 4 k:
// exactly one packed group's 64 k) into a 16 x 16 int32 tile, exactly.
//
// Tiles: C in tmm0-3 (a 32 x 32 block), A in tmm4-5 (two 16-row tiles), B in
// tmm6-7 (two groups). The A rows of a block of the output (int8_rows_per_block)
// stay in L2 while the column groups stream past, and k runs in chunks of 512:
// the chunk of a pair of B tiles (16 KiB) stays in L1 while every 32 rows of the
// block use it, their accumulators parked in memory between chunks. Rows past m
// come from a zero-padded copy of the last partial block of 32 rows.
//
// Linux hands out the tile-data state only on request (arch_prctl
// ARCH_REQ_XCOMP_PERM), once per process; the tile configuration is
// per thread and is loaded at the start of every call.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "int8_gemm.h"
#include "int8_kernels.h"
#include "vec_avx512.h"

namespace reward_engine::cpu {
namespace {

constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void configure_tiles() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

constexpr int64_t kChunkK = 512;  // k per pass: a pair of B tiles' chunk (16 KiB) stays in L1

// Accumulates A[32 rows] x B[groups g, g + 1 (when G == 2)] over k blocks [k0, k1) of 64
// into c (32 x 32 int32, row stride 32), starting from zero when `first`.
template <int G>
void accumulate(const Int8GemmArgs& g, const int8_t* a, int64_t lda, int64_t grp, int64_t k0,
                int64_t k1, bool first, int32_t* c) {
  const int8_t* b0 = g.b + int8_packed_offset(grp, 0, g.k_pad);
  const int8_t* b1 = G == 2 ? g.b + int8_packed_offset(grp + 1, 0, g.k_pad) : nullptr;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    if (G == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
  } else {
    _tile_loadd(0, c, 128);
    _tile_loadd(1, c + 16 * 32, 128);
    if (G == 2) {
      _tile_loadd(2, c + 16, 128);
      _tile_loadd(3, c + 16 * 32 + 16, 128);
    }
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
    _tile_loadd(4, a + kk * kInt8PackK, lda);
    _tile_loadd(5, a + 16 * lda + kk * kInt8PackK, lda);
    _tile_loadd(6, b0 + kk * 1024, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 5, 6);
    if (G == 2) {
      _tile_loadd(7, b1 + kk * 1024, 64);
      _tile_dpbssd(2, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16 * 32, 128);
  if (G == 2) {
    _tile_stored(2, c + 16, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
}

}  // namespace

bool amx_request_permission() {
  static const bool granted =
      syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
}

void int8_gemm_amx(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  configure_tiles();
  const int64_t rows_per_block = int8_rows_per_block(g.k_pad);
  const int64_t kb = g.k_pad / kInt8PackK, chunk = kChunkK / kInt8PackK;
  // accumulators of one block of rows x 32 columns, kept across the k chunks
  std::vector<int32_t> acc(size_t(rows_per_block * 32));
  std::vector<int8_t> tail;  // the last partial 32 rows, zero padded
  for (int64_t mb = m0; mb < m1; mb += rows_per_block) {
    const int64_t me = mb + rows_per_block < m1 ? mb + rows_per_block : m1;
    for (int64_t grp = g0; grp < g1; grp += 2) {
      const bool two = grp + 1 < g1;
      for (int64_t k0 = 0; k0 < kb; k0 += chunk) {
        const int64_t k1 = k0 + chunk < kb ? k0 + chunk : kb;
        for (int64_t m = mb; m < me; m += 32) {
          const int8_t* a = g.a + m * g.a_stride;
          int64_t lda = g.a_stride;
          if (me - m < 32) {
            if (tail.empty()) {
              tail.assign(size_t(32 * g.k_pad), 0);
              for (int64_t i = 0; i < me - m; ++i) {
                std::memcpy(&tail[i * g.k_pad], a + i * lda, size_t(g.k));
              }
            }
            a = tail.data();
            lda = g.k_pad;
          }
          int32_t* c = acc.data() + (m - mb) * 32;
          if (two) {
            accumulate<2>(g, a, lda, grp, k0, k1, k0 == 0, c);
          } else {
            accumulate<1>(g, a, lda, grp, k0, k1, k0 == 0, c);
          }
        }
      }
      const int64_t n0 = grp * kInt8PackN;
      int64_t count = g.n - n0;
      count = count < 32 ? count : 32;
      if (g.stream_out) {
        int8_store_tile<VecAVX512, true>(g, acc.data(), 32, mb, me - mb, n0, count);
      } else {
        int8_store_tile<VecAVX512>(g, acc.data(), 32, mb, me - mb, n0, count);
      }
    }
  }
  if (g.stream_out) _mm_sfence();  // the streamed output is complete before the join
  _tile_release();
}

}  // namespace reward_engine::cpu
