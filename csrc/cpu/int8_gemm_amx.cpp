// int8_gemm on AMX-INT8 (compiled with the AVX-512 flags plus -mamx-tile
// -mamx-int8). TDPBSSD multiplies a 16 x 64 tile of signed bytes of A by a
// 64 x 16 tile of signed bytes of B (stored as 16 rows of 16 columns x 4 k:
// exactly one packed group's 64 k) into a 16 x 16 int32 tile, exactly.
//
// Tiles: C in tmm0-3 (a 32 x 32 block), A in tmm4-5 (two 16-row tiles), B in
// tmm6-7 (two groups). The A rows of a block of the output (int8_rows_per_block)
// stay in L2 while the groups stream past; each pair of B tiles is used by
// every 32 rows of the block. Rows past m come from a zero-padded copy of the
// last partial block of 32 rows.
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

// One 32-row x (16 * G)-column block, G = 1 or 2 groups; A rows a (stride lda).
template <int G>
void block(const Int8GemmArgs& g, const int8_t* a, int64_t lda, int64_t m, int64_t rows,
           int64_t grp, int32_t* c) {
  const int64_t kb = g.k_pad / kInt8PackK;
  const int8_t* b0 = g.b + int8_packed_offset(grp, 0, g.k_pad);
  const int8_t* b1 = G == 2 ? g.b + int8_packed_offset(grp + 1, 0, g.k_pad) : nullptr;
  _tile_zero(0);
  _tile_zero(1);
  if (G == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kk = 0; kk < kb; ++kk) {
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
  // c: [32 rows][32 columns] int32
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16 * 32, 128);
  if (G == 2) {
    _tile_stored(2, c + 16, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
  const int64_t n0 = grp * kInt8PackN;
  int64_t count = g.n - n0;
  count = count < 16 * G ? count : 16 * G;
  int8_store_tile(g, c, 32, m, rows, n0, count);
}

}  // namespace

bool amx_request_permission() {
  static const bool granted =
      syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
}

void int8_gemm_amx(const Int8GemmArgs& g, int64_t m0, int64_t m1, int64_t g0, int64_t g1) {
  configure_tiles();
  alignas(64) int32_t c[32 * 32];
  std::vector<int8_t> tail;  // the last partial 32 rows, zero padded
  const int64_t rows_per_block = int8_rows_per_block(g.k_pad);
  for (int64_t mb = m0; mb < m1; mb += rows_per_block) {
    const int64_t me = mb + rows_per_block < m1 ? mb + rows_per_block : m1;
    for (int64_t grp = g0; grp < g1; grp += 2) {
      const bool two = grp + 1 < g1;
      for (int64_t m = mb; m < me; m += 32) {
        const int64_t rows = me - m < 32 ? me - m : 32;
        const int8_t* a = g.a + m * g.a_stride;
        int64_t lda = g.a_stride;
        if (rows < 32) {
          if (tail.empty()) {
            tail.assign(size_t(32 * g.k_pad), 0);
            for (int64_t i = 0; i < rows; ++i) std::memcpy(&tail[i * g.k_pad], a + i * lda, g.k);
          }
          a = tail.data();
          lda = g.k_pad;
        }
        if (two) {
          block<2>(g, a, lda, m, rows, grp, c);
        } else {
          block<1>(g, a, lda, m, rows, grp, c);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace reward_engine::cpu
