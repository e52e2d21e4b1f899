// Aligned, owning float buffer (RAII). Used for the parameter arenas and plan workspaces.
#pragma once
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace halcdl {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes) { resize(bytes); }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) { std::free(p_); p_ = o.p_; bytes_ = o.bytes_; o.p_ = nullptr; o.bytes_ = 0; }
    return *this;
  }
  // Reallocates (contents are lost) and zero-fills.
  void resize(size_t bytes) {
    std::free(p_);
    p_ = nullptr;
    bytes_ = 0;
    if (bytes == 0) return;
    size_t rounded = (bytes + 63) / 64 * 64;
    p_ = std::aligned_alloc(64, rounded);
    if (!p_) HALCDL_THROW(kErrNoMemory, "not enough memory: could not allocate ", rounded, " bytes");
    std::memset(p_, 0, rounded);
    bytes_ = bytes;
  }
  float* f() const { return static_cast<float*>(p_); }
  char* c() const { return static_cast<char*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace halcdl
