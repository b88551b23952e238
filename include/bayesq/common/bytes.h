// Plain values to and from a byte buffer, for results exchanged between the processes of one job (the same
// binary on every rank: host byte order, no file format). Reads are bounds-checked: a short buffer is a bug.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bayesq/common/errors.h"

namespace bayesq {

class ByteWriter {
 public:
  template <typename T>
  void put(const T& value) {
    static_assert(std::is_trivially_copyable<T>::value, "plain values only");
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  template <typename T>
  void put_vector(const std::vector<T>& values) {
    static_assert(std::is_trivially_copyable<T>::value, "plain values only");
    put<uint64_t>(values.size());
    const auto* p = reinterpret_cast<const uint8_t*>(values.data());
    bytes_.insert(bytes_.end(), p, p + values.size() * sizeof(T));
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class ByteReader {
 public:
  explicit ByteReader(const std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  template <typename T>
  T get() {
    static_assert(std::is_trivially_copyable<T>::value, "plain values only");
    BQ_ASSERT(offset_ + sizeof(T) <= bytes_.size(), "a buffer of ", bytes_.size(), " bytes ends at ", offset_);
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }
  template <typename T>
  std::vector<T> get_vector() {
    const uint64_t n = get<uint64_t>();
    BQ_ASSERT(n <= (bytes_.size() - offset_) / sizeof(T), "a vector of ", n, " values past the buffer's end");
    std::vector<T> values(static_cast<std::size_t>(n));
    std::memcpy(values.data(), bytes_.data() + offset_, static_cast<std::size_t>(n) * sizeof(T));
    offset_ += static_cast<std::size_t>(n) * sizeof(T);
    return values;
  }
  bool done() const { return offset_ == bytes_.size(); }

 private:
  const std::vector<uint8_t>& bytes_;
  std::size_t offset_ = 0;
};

}  // namespace bayesq
