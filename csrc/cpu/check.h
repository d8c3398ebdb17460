// Argument checks shared by the launchers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "dtype.h"

namespace reward_engine::cpu {

inline void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline void check_dtype(int dtype, const char* op) {
  check(dtype >= 0 && dtype < kNumDTypes,
        std::string(op) + ": dtype code " + std::to_string(dtype) +
            " is not float32 (0), bfloat16 (1) or float16 (2)");
}

inline int64_t element_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

}  // namespace reward_engine::cpu
