// Minimal, bounds-checked reader for ExecuTorch BundledProgram files (.bpte).
//
// A .bpte is a flatbuffer (file identifier "BP08") whose root table holds the
// serialized program and, per method, test cases of input and expected output
// values. Only the fields this runner needs are read; the layout follows the
// bundled_program schema shipped with executorch (schema field ids in
// parentheses):
//
//   BundledProgram   { version(0), method_test_suites(1): [Suite], program(2): [ubyte] }
//   Suite            { method_name(0): string, test_cases(1): [TestCase] }
//   TestCase         { inputs(0): [Value], expected_outputs(1): [Value] }
//   Value            { val_type(0): ubyte, val(1): union }   1=Tensor 2=Int 3=Bool 4=Double
//   Tensor           { scalar_type(0): byte, sizes(1): [int], data(2): [ubyte], dim_order(3): [ubyte] }
//   Int { int_val(0): long }  Bool { bool_val(0): bool }  Double { double_val(0): double }
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace etrunner {
namespace fb {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A view of a flatbuffer; every read checks the bounds and throws fb::Error.
class Buffer {
 public:
  Buffer(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  template <typename T>
  T read(size_t pos) const {
    if (pos > size_ || size_ - pos < sizeof(T)) throw Error("bundled program is truncated or corrupt");
    T v;
    std::memcpy(&v, data_ + pos, sizeof(T));  // flatbuffers are little-endian, like every target here
    return v;
  }
  const uint8_t* at(size_t pos) const { return data_ + pos; }
  size_t size() const { return size_; }

  // Position of the root table.
  size_t root() const { return read<uint32_t>(0); }
  std::string identifier() const {
    if (size_ < 8) return "";
    return std::string(reinterpret_cast<const char*>(data_ + 4), 4);
  }

  // Absolute position of field `id` of the table at `table`, or 0 when absent.
  size_t field(size_t table, int id) const {
    int32_t back = read<int32_t>(table);
    int64_t vt = static_cast<int64_t>(table) - back;
    if (vt < 0 || static_cast<size_t>(vt) >= size_) throw Error("bad vtable offset in bundled program");
    size_t vtable = static_cast<size_t>(vt);
    uint16_t vsize = read<uint16_t>(vtable);
    size_t slot = 4 + 2 * static_cast<size_t>(id);
    if (slot + 2 > vsize) return 0;
    uint16_t off = read<uint16_t>(vtable + slot);
    return off ? table + off : 0;
  }
  // Follow the unsigned offset stored at `pos` (tables, vectors, strings).
  size_t deref(size_t pos) const {
    size_t target = pos + read<uint32_t>(pos);
    if (target >= size_) throw Error("offset out of range in bundled program");
    return target;
  }
  // Vector referenced by field `id`: element count and first element position.
  bool vector(size_t table, int id, size_t* count, size_t* first) const {
    size_t f = field(table, id);
    if (!f) return false;
    size_t v = deref(f);
    *count = read<uint32_t>(v);
    *first = v + 4;
    return true;
  }
  std::string string(size_t table, int id) const {
    size_t n = 0, first = 0;
    if (!vector(table, id, &n, &first)) return "";
    if (first + n > size_) throw Error("string out of range in bundled program");
    return std::string(reinterpret_cast<const char*>(data_ + first), n);
  }
  template <typename T>
  T scalar(size_t table, int id, T fallback) const {
    size_t f = field(table, id);
    return f ? read<T>(f) : fallback;
  }
  // i-th table of a vector of tables starting at `first`.
  size_t table_at(size_t first, size_t i) const { return deref(first + 4 * i); }

 private:
  const uint8_t* data_;
  size_t size_;
};

// One bundled value (only tensors carry data this runner compares).
struct BundledValue {
  enum Kind { kNone = 0, kTensor = 1, kInt = 2, kBool = 3, kDouble = 4 } kind = kNone;
  int8_t scalar_type = -1;  // executorch ScalarType code
  std::vector<int32_t> sizes;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t int_val = 0;
  bool bool_val = false;
  double double_val = 0;
};

struct BundledCase {
  std::vector<BundledValue> inputs;
  std::vector<BundledValue> expected;
};

struct BundledProgram {
  const uint8_t* program = nullptr;  // the embedded .pte
  size_t program_size = 0;
  uint32_t version = 0;
  // method name -> test cases
  std::vector<std::pair<std::string, std::vector<BundledCase>>> suites;
};

inline BundledValue read_value(const Buffer& b, size_t value_table) {
  BundledValue v;
  uint8_t type = b.scalar<uint8_t>(value_table, 0, 0);
  size_t vf = b.field(value_table, 1);
  if (!vf || type == 0) return v;
  size_t t = b.deref(vf);
  switch (type) {
    case 1: {
      v.kind = BundledValue::kTensor;
      v.scalar_type = b.scalar<int8_t>(t, 0, 0);
      size_t n = 0, first = 0;
      if (b.vector(t, 1, &n, &first)) {
        for (size_t i = 0; i < n; ++i) v.sizes.push_back(b.read<int32_t>(first + 4 * i));
      }
      if (b.vector(t, 2, &n, &first)) {
        if (first + n > b.size()) throw Error("tensor data out of range in bundled program");
        v.data = b.at(first);
        v.nbytes = n;
      }
      break;
    }
    case 2:
      v.kind = BundledValue::kInt;
      v.int_val = b.scalar<int64_t>(t, 0, 0);
      break;
    case 3:
      v.kind = BundledValue::kBool;
      v.bool_val = b.scalar<uint8_t>(t, 0, 0) != 0;
      break;
    case 4:
      v.kind = BundledValue::kDouble;
      v.double_val = b.scalar<double>(t, 0, 0.0);
      break;
    default:
      throw Error("unknown value type " + std::to_string(type) + " in bundled program");
  }
  return v;
}

inline std::vector<BundledValue> read_values(const Buffer& b, size_t table, int id) {
  std::vector<BundledValue> out;
  size_t n = 0, first = 0;
  if (b.vector(table, id, &n, &first)) {
    for (size_t i = 0; i < n; ++i) out.push_back(read_value(b, b.table_at(first, i)));
  }
  return out;
}

// Parse a .bpte held in memory (which must outlive the result).
inline BundledProgram parse_bundled(const uint8_t* data, size_t size) {
  Buffer b(data, size);
  if (b.identifier() != "BP08") throw Error("not a bundled program (file identifier is not BP08)");
  BundledProgram out;
  size_t root = b.root();
  out.version = b.scalar<uint32_t>(root, 0, 0);
  size_t n = 0, first = 0;
  if (!b.vector(root, 2, &n, &first) || n == 0) throw Error("bundled program has no embedded program");
  if (first + n > size) throw Error("embedded program out of range");
  out.program = data + first;
  out.program_size = n;
  size_t ns = 0, sfirst = 0;
  if (b.vector(root, 1, &ns, &sfirst)) {
    for (size_t s = 0; s < ns; ++s) {
      size_t suite = b.table_at(sfirst, s);
      std::vector<BundledCase> cases;
      size_t nc = 0, cfirst = 0;
      if (b.vector(suite, 1, &nc, &cfirst)) {
        for (size_t c = 0; c < nc; ++c) {
          size_t tc = b.table_at(cfirst, c);
          cases.push_back({read_values(b, tc, 0), read_values(b, tc, 1)});
        }
      }
      out.suites.emplace_back(b.string(suite, 0), std::move(cases));
    }
  }
  return out;
}

}  // namespace fb
}  // namespace etrunner
