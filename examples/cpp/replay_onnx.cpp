// Replays a bundle's golden data through policy.onnx with ONNX Runtime's C++ API and checks every output.
//
//   ./replay_onnx BUNDLE_DIR
//
// Reads only what a robot-side integrator has: policy.json (input and output names, the "state" list
// pairing each state input with the output that feeds it next step, the "reset" input), policy.onnx,
// and golden_io.npz (numpy's uncompressed zip of .npy files). Two replays:
//   golden batch  every input from "batch/in/<name>", outputs against "batch/out/<name>";
//   rollout       closed loop, as a controller runs: observations and reset from "rollout/in/<name>"
//                 step by step, every state input fed from the program's own previous state output
//                 (zeros at the first step), outputs against "rollout/out/<name>" at every step.
// Nothing here names a state: whatever policy.json's "state" lists (recurrent h/c, observation
// history, last action) is carried the same way, so new state tensors need no change here.
// Continuous outputs may differ from the recorded eager PyTorch ones by 1e-5 + 1e-4 |value| (as the
// LibTorch example) plus 6x the float32 noise the exporter measured ("<group>/noise/<name>", as
// `sfspec check`); integer outputs must be equal, except where "<group>/tie/<name>" marks a near-tie.
// Prints one line per replay and a verdict; exit status 0 ok, 1 mismatch or bad bundle, 2 usage.
#define ORT_API_MANUAL_INIT  // so that a library older than these headers is reported, not a crash
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr double kAtol = 1e-5, kRtol = 1e-4;  // the LibTorch example's floor
constexpr double kNoiseFactor = 6.0;           // sfspec's CHECK_FACTOR: against recorded eager outputs
constexpr size_t kShownProblems = 10;

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

std::vector<char> read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path + ": cannot be opened");
  return std::vector<char>((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

// ------------------------------------------------------------------ a small JSON reader (policy.json)

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  const Json* find(const std::string& key) const {
    for (const auto& member : members)
      if (member.first == key) return &member.second;
    return nullptr;
  }
  const Json& at(const std::string& key) const {
    const Json* value = find(key);
    if (value == nullptr) fail("policy.json: no \"" + key + "\"");
    return *value;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  Json document() {
    Json value = parse();
    skip_space();
    if (pos_ != s_.size()) error("trailing characters");
    return value;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void error(const std::string& what) const {
    fail("policy.json: not valid JSON at byte " + std::to_string(pos_) + " (" + what + ")");
  }
  void skip_space() {
    while (pos_ < s_.size() && std::strchr(" \t\r\n", s_[pos_]) != nullptr) ++pos_;
  }
  bool take(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }
  void expect(char c) {
    skip_space();
    if (pos_ >= s_.size() || s_[pos_] != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }

  Json parse() {
    skip_space();
    if (pos_ >= s_.size()) error("unexpected end");
    Json value;
    char c = s_[pos_];
    if (c == '{') return parse_object();
    if (c == '[') return parse_array();
    if (c == '"') {
      value.kind = Json::kString;
      value.text = parse_string();
    } else if (take("true")) {
      value.kind = Json::kBool;
      value.boolean = true;
    } else if (take("false")) {
      value.kind = Json::kBool;
    } else if (take("null")) {
      value.kind = Json::kNull;
    } else {
      value.kind = Json::kNumber;
      value.number = parse_number();
    }
    return value;
  }

  double parse_number() {
    // Python's json writes NaN and Infinity for non-finite floats; accept them as it reads them.
    if (take("NaN")) return std::nan("");
    if (take("Infinity")) return INFINITY;
    if (take("-Infinity")) return -INFINITY;
    const char* start = s_.c_str() + pos_;
    char* end = nullptr;
    double number = std::strtod(start, &end);
    if (end == start) error("unexpected character");
    pos_ += static_cast<size_t>(end - start);
    return number;
  }

  Json parse_array() {
    Json value;
    value.kind = Json::kArray;
    expect('[');
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return value;
    }
    for (;;) {
      value.items.push_back(parse());
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      return value;
    }
  }

  Json parse_object() {
    Json value;
    value.kind = Json::kObject;
    expect('{');
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return value;
    }
    for (;;) {
      skip_space();
      std::string key = parse_string();
      expect(':');
      value.members.emplace_back(key, parse());
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      return value;
    }
  }

  std::string parse_string() {
    if (pos_ >= s_.size() || s_[pos_] != '"') error("expected a string");
    ++pos_;
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) break;
      char e = s_[pos_++];
      const char* plain = std::strchr("\"\\/bfnrt", e);
      if (plain == nullptr && e != 'u') error("bad escape");
      if (e != 'u') {
        out += "\"\\/\b\f\n\r\t"[plain - "\"\\/bfnrt"];
        continue;
      }
      append_utf8(out, parse_code_point());
    }
    if (pos_ >= s_.size()) error("unterminated string");
    ++pos_;
    return out;
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > s_.size()) error("bad \\u escape");
    unsigned code = static_cast<unsigned>(std::stoul(s_.substr(pos_, 4), nullptr, 16));
    pos_ += 4;
    return code;
  }

  unsigned parse_code_point() {
    unsigned code = parse_hex4();
    if (code >= 0xD800 && code < 0xDC00 && take("\\u")) {  // a surrogate pair (non-BMP character)
      unsigned low = parse_hex4();
      code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }
};

// ------------------------------------------------------------------ tensors and the golden data

struct Tensor {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::vector<char> bytes;

  size_t count() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

struct DType {
  const char* descr;  // numpy's, little-endian ("|": byte-sized)
  ONNXTensorElementDataType type;
  size_t size;
  const char* name;
};

constexpr DType kDTypes[] = {
    {"<f4", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4, "float32"},
    {"<f8", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8, "float64"},
    {"<i8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8, "int64"},
    {"<i4", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4, "int32"},
    {"<i2", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, 2, "int16"},
    {"|i1", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1, "int8"},
    {"|u1", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1, "uint8"},
    {"|b1", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1, "bool"},
};

const DType& dtype_of(ONNXTensorElementDataType type) {
  for (const auto& d : kDTypes)
    if (d.type == type) return d;
  fail("element type " + std::to_string(static_cast<int>(type)) + " is not supported by this example");
}

bool is_floating(ONNXTensorElementDataType type) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || type == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
}

double value_at(const Tensor& t, size_t i) {
  const char* p = t.bytes.data() + i * dtype_of(t.type).size;
  switch (t.type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: { float v; std::memcpy(&v, p, 4); return v; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: { double v; std::memcpy(&v, p, 8); return v; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return static_cast<int8_t>(*p);
    default: return static_cast<uint8_t>(*p);  // uint8 and bool
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + ")";
}

// The .npy header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (64, 3), }
std::string header_field(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) fail("no '" + key + "'");
  at = header.find_first_not_of(' ', at + key.size() + 3);
  if (at == std::string::npos) fail("no value for '" + key + "'");
  size_t end;  // one past the value
  if (header[at] == '(' || header[at] == '\'') {
    end = header.find(header[at] == '(' ? ')' : '\'', at + 1);
    end = end == std::string::npos ? end : end + 1;
  } else {
    end = header.find_first_of(",}", at);
  }
  if (end == std::string::npos) fail("bad value for '" + key + "'");
  return header.substr(at, end - at);
}

Tensor parse_npy(const char* data, size_t size) {
  const auto* u = reinterpret_cast<const unsigned char*>(data);
  size_t prefix = size >= 8 && u[6] == 1 ? 10 : 12;  // format 1.0: a 2-byte header length; 2.0 and 3.0: 4 bytes
  if (size < prefix || std::memcmp(data, "\x93NUMPY", 6) != 0) fail("not a .npy array");
  size_t header_len = u[8] | (u[9] << 8) | (prefix == 12 ? (u[10] << 16) | (size_t(u[11]) << 24) : 0);
  size_t start = prefix + header_len;
  if (start > size) fail("truncated .npy header");
  std::string header(data + prefix, header_len);
  std::string descr = header_field(header, "descr");
  if (header_field(header, "fortran_order") != "False") fail("Fortran-ordered arrays are not supported");
  Tensor t;
  for (const auto& d : kDTypes)
    if (descr == std::string("'") + d.descr + "'") t.type = d.type;
  if (t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) fail("dtype " + descr + " is not supported by this example");
  std::string dims = header_field(header, "shape");
  for (size_t i = 1; i < dims.size();) {
    size_t end = dims.find_first_of(",)", i);
    std::string dim = dims.substr(i, end - i);
    if (dim.find_first_not_of(' ') != std::string::npos) t.shape.push_back(std::stoll(dim));
    i = end + 1;
  }
  size_t nbytes = t.count() * dtype_of(t.type).size;
  if (size - start != nbytes)
    fail("holds " + std::to_string(size - start) + " bytes, its header says " + std::to_string(nbytes));
  t.bytes.assign(data + start, data + size);
  return t;
}

uint64_t le(const std::vector<char>& b, size_t at, int bytes) {
  if (at + bytes > b.size()) fail("truncated zip structure");
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

// Where the central directory starts and how many entries it has (zip64 where numpy asks for it).
std::pair<uint64_t, uint64_t> central_directory(const std::vector<char>& zip) {
  if (zip.size() < 22) fail("not a zip file");
  size_t eocd = zip.size() - 22;
  while (le(zip, eocd, 4) != 0x06054b50) {
    if (eocd == 0 || zip.size() - eocd > 22 + 0xFFFF) fail("not a zip file (no end of central directory)");
    --eocd;
  }
  uint64_t entries = le(zip, eocd + 10, 2), offset = le(zip, eocd + 16, 4);
  if ((entries == 0xFFFF || offset == 0xFFFFFFFF) && eocd >= 20 && le(zip, eocd - 20, 4) == 0x07064b50) {
    uint64_t record = le(zip, eocd - 12, 8);
    if (le(zip, record, 4) != 0x06064b50) fail("bad zip64 end of central directory");
    entries = le(zip, record + 32, 8);
    offset = le(zip, record + 48, 8);
  }
  return {offset, entries};
}

// A central directory entry's zip64 extra field overrides whichever 32-bit fields are 0xFFFFFFFF.
void apply_zip64(const std::vector<char>& zip, size_t extra, size_t extra_len, uint64_t* fields[3]) {
  for (size_t at = extra; at + 4 <= extra + extra_len;) {
    uint64_t id = le(zip, at, 2), len = le(zip, at + 2, 2);
    if (id == 0x0001) {
      size_t next = at + 4;
      for (int i = 0; i < 3; ++i)
        if (*fields[i] == 0xFFFFFFFF) *fields[i] = le(zip, next, 8), next += 8;
    }
    at += 4 + len;
  }
}

// golden_io.npz: a zip of .npy files that numpy stores uncompressed; entry "a/b.npy" is array "a/b".
std::map<std::string, Tensor> read_npz(const std::string& path) {
  std::vector<char> zip = read_file(path);
  std::map<std::string, Tensor> arrays;
  try {
    auto [at, entries] = central_directory(zip);
    for (uint64_t n = 0; n < entries; ++n) {
      if (le(zip, at, 4) != 0x02014b50) fail("bad central directory entry");
      uint64_t method = le(zip, at + 10, 2), size = le(zip, at + 20, 4), unpacked = le(zip, at + 24, 4);
      uint64_t name_len = le(zip, at + 28, 2), extra_len = le(zip, at + 30, 2), comment_len = le(zip, at + 32, 2);
      uint64_t local = le(zip, at + 42, 4);
      std::string name(zip.data() + at + 46, name_len);
      uint64_t* fields[3] = {&unpacked, &size, &local};
      apply_zip64(zip, at + 46 + name_len, extra_len, fields);
      if (method != 0) fail(name + " is compressed (np.savez_compressed); this reader takes np.savez's stored entries");
      if (le(zip, local, 4) != 0x04034b50) fail(name + ": bad local header");
      uint64_t data = local + 30 + le(zip, local + 26, 2) + le(zip, local + 28, 2);
      if (data + size > zip.size()) fail(name + ": truncated");
      if (name.size() < 4 || name.compare(name.size() - 4, 4, ".npy") != 0) fail(name + ": not a .npy entry");
      try {
        arrays[name.substr(0, name.size() - 4)] = parse_npy(zip.data() + data, size);
      } catch (const std::exception& e) {
        fail(name + ": " + e.what());
      }
      at += 46 + name_len + extra_len + comment_len;
    }
  } catch (const std::exception& e) {
    fail(path + ": " + e.what());
  }
  return arrays;
}

const Tensor& golden_array(const std::map<std::string, Tensor>& golden, const std::string& key) {
  auto it = golden.find(key);
  if (it == golden.end()) fail("golden_io.npz has no " + key + "; it does not fit policy.json");
  return it->second;
}

// Step t of a rollout array stacked over steps: (steps, batch, ...) -> (batch, ...).
Tensor step_of(const Tensor& stacked, int64_t t) {
  if (stacked.shape.empty() || t >= stacked.shape[0])
    fail("golden_io.npz: a rollout array has fewer steps than the rollout");
  Tensor out;
  out.type = stacked.type;
  out.shape.assign(stacked.shape.begin() + 1, stacked.shape.end());
  size_t n = out.count() * dtype_of(out.type).size;
  out.bytes.assign(stacked.bytes.begin() + t * n, stacked.bytes.begin() + (t + 1) * n);
  return out;
}

// ------------------------------------------------------------------ the policy

struct StateLink {
  std::string input, output;
  std::vector<int64_t> shape;  // policy.json's, with the named batch axis left as -1
};

struct Contract {
  std::vector<std::string> inputs, outputs;
  std::vector<StateLink> states;
};

std::vector<std::string> names_of(const Json& list) {
  std::vector<std::string> out;
  for (const auto& item : list.items) out.push_back(item.text);
  return out;
}

Contract read_contract(const std::string& dir) {
  std::vector<char> bytes = read_file(dir + "/policy.json");
  Json meta = JsonParser(std::string(bytes.begin(), bytes.end())).document();
  Contract c{names_of(meta.at("inputs")), names_of(meta.at("outputs")), {}};
  for (const auto& entry : meta.at("state").items) {
    StateLink link{entry.at("input").text, entry.at("output").text, {}};
    const Json* initial = entry.find("initial");
    if (initial != nullptr && initial->kind == Json::kString && initial->text != "zeros")
      fail("state " + link.input + " starts as '" + initial->text + "'; this example starts every state at zeros");
    if (const Json* shape = entry.find("shape"))
      for (const auto& d : shape->items) link.shape.push_back(d.kind == Json::kNumber ? int64_t(d.number) : -1);
    auto listed = [](const std::vector<std::string>& names, const std::string& name) {
      return std::find(names.begin(), names.end(), name) != names.end();
    };
    if (!listed(c.inputs, link.input) || !listed(c.outputs, link.output))
      fail("policy.json: state " + link.input + " -> " + link.output + " is not among its inputs and outputs");
    c.states.push_back(link);
  }
  return c;
}

class Policy {
 public:
  Policy(Ort::Env& env, const std::string& dir, const Contract& contract) : contract_(contract) {
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);  // one thread, as in a control loop: deterministic and cheap to schedule
    session_ = std::make_unique<Ort::Session>(env, (dir + "/policy.onnx").c_str(), options);
    check_names();
  }

  // The graph's element type of an input (what a zero state must be made of).
  ONNXTensorElementDataType input_type(const std::string& name) const { return graph_types_.at(name); }

  // Run once; the outputs in policy.json's order.
  std::vector<Tensor> run(const std::map<std::string, Tensor>& feed) {
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    for (const auto& name : contract_.inputs) {
      const Tensor& t = feed.at(name);
      if (t.type != input_type(name))
        fail("input " + name + ": the data is " + dtype_of(t.type).name + ", the graph takes " +
             dtype_of(input_type(name)).name);
      values.push_back(Ort::Value::CreateTensor(memory, const_cast<char*>(t.bytes.data()), t.bytes.size(),
                                                t.shape.data(), t.shape.size(), t.type));
      in_names.push_back(name.c_str());
    }
    for (const auto& name : contract_.outputs) out_names.push_back(name.c_str());
    auto results = session_->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                                 out_names.data(), out_names.size());
    std::vector<Tensor> outputs;
    for (auto& value : results) outputs.push_back(to_tensor(value));
    return outputs;
  }

 private:
  const Contract& contract_;
  std::unique_ptr<Ort::Session> session_;
  std::map<std::string, ONNXTensorElementDataType> graph_types_;

  // policy.json's inputs must be exactly the graph's (a robot feeds what the contract lists, no more).
  void check_names() {
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> graph_inputs;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) {
      std::string name = session_->GetInputNameAllocated(i, allocator).get();
      graph_types_[name] = session_->GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
      graph_inputs.push_back(name);
    }
    for (const auto& name : contract_.inputs)
      if (!graph_types_.count(name)) fail("policy.json lists input " + name + ", which policy.onnx lacks");
    for (const auto& name : graph_inputs)
      if (std::find(contract_.inputs.begin(), contract_.inputs.end(), name) == contract_.inputs.end())
        fail("policy.onnx takes input " + name + ", which policy.json does not list");
  }

  static Tensor to_tensor(const Ort::Value& value) {
    auto info = value.GetTensorTypeAndShapeInfo();
    Tensor t;
    t.type = info.GetElementType();
    t.shape = info.GetShape();
    const char* data = static_cast<const char*>(value.GetTensorRawData());
    t.bytes.assign(data, data + info.GetElementCount() * dtype_of(t.type).size);
    return t;
  }
};

// ------------------------------------------------------------------ comparing

struct Report {
  double worst = 0.0;  // worst absolute error of a continuous output
  size_t near_ties = 0;
  std::vector<std::string> problems;
};

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(3);
  s << v;
  return s.str();
}

void compare_discrete(Report& report, const std::string& where, const Tensor& got, const Tensor& want,
                      const Tensor* ties) {
  size_t real = 0;
  for (size_t i = 0; i < want.count(); ++i) {
    if (value_at(got, i) == value_at(want, i)) continue;
    if (ties != nullptr && value_at(*ties, i) != 0.0) ++report.near_ties;  // either answer is right
    else ++real;
  }
  if (real) report.problems.push_back(where + ": " + std::to_string(real) + " of " + std::to_string(want.count()) +
                                      " discrete values differ");
}

void compare(Report& report, const std::string& where, const Tensor& got, const Tensor& want, double noise,
             const Tensor* ties) {
  if (got.shape != want.shape) {
    report.problems.push_back(where + ": shape " + shape_text(got.shape) + ", expected " + shape_text(want.shape));
    return;
  }
  if (!is_floating(want.type)) {
    if (is_floating(got.type)) report.problems.push_back(where + ": floating-point values, expected integers");
    else compare_discrete(report, where, got, want, ties);
    return;
  }
  size_t off = 0;
  double worst = 0.0, allowed_at_worst = 0.0;
  for (size_t i = 0; i < want.count(); ++i) {
    double g = value_at(got, i), w = value_at(want, i), err = std::fabs(g - w);
    double allowed = kAtol + kRtol * std::fabs(w) + kNoiseFactor * noise;
    if (!(err <= allowed)) ++off;  // written so that NaN counts as off
    if (!(err <= worst)) worst = err, allowed_at_worst = allowed;
  }
  report.worst = std::max(report.worst, worst);
  if (off) report.problems.push_back(where + ": " + std::to_string(off) + " values off, worst " + fmt(worst) +
                                     " (allowed there " + fmt(allowed_at_worst) + ")");
}

// Compare all outputs of one run; `t` picks the step of a rollout's stacked golden arrays (-1: none).
void check_outputs(Report& report, const std::string& label, const Contract& c, const std::vector<Tensor>& got,
                   const std::map<std::string, Tensor>& golden, const std::string& prefix, int64_t t) {
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    const std::string& name = c.outputs[i];
    const Tensor& stacked = golden_array(golden, prefix + "/out/" + name);
    Tensor want = t < 0 ? stacked : step_of(stacked, t);
    auto noise_it = golden.find(prefix + "/noise/" + name);
    if (noise_it != golden.end() && (noise_it->second.count() != 1 || !is_floating(noise_it->second.type)))
      fail("golden_io.npz: " + prefix + "/noise/" + name + " is not one number");
    double noise = noise_it == golden.end() ? 0.0 : value_at(noise_it->second, 0);
    auto tie_it = golden.find(prefix + "/tie/" + name);
    Tensor ties;
    if (tie_it != golden.end()) ties = t < 0 ? tie_it->second : step_of(tie_it->second, t);
    if (tie_it != golden.end() && ties.shape != want.shape)
      fail("golden_io.npz: " + prefix + "/tie/" + name + " does not match " + prefix + "/out/" + name);
    compare(report, label + ": " + name, got[i], want, noise, tie_it == golden.end() ? nullptr : &ties);
  }
}

// ------------------------------------------------------------------ the two replays

Report replay_batch(Policy& policy, const Contract& c, const std::map<std::string, Tensor>& golden) {
  std::map<std::string, Tensor> feed;
  for (const auto& name : c.inputs) feed[name] = golden_array(golden, "batch/in/" + name);
  Report report;
  check_outputs(report, "golden batch", c, policy.run(feed), golden, "batch", -1);
  return report;
}

// A state's zeros, as a controller makes them: policy.json's shape with the batch axis filled in, in the
// graph's element type; checked against the shape the golden data recorded.
Tensor zero_state(Policy& policy, const StateLink& link, int64_t batch, const Tensor& recorded) {
  Tensor t;
  t.type = policy.input_type(link.input);
  std::vector<int64_t> per_step(recorded.shape.begin() + 1, recorded.shape.end());
  t.shape = link.shape.empty() ? per_step : link.shape;  // without a declared shape: the recorded one
  for (auto& d : t.shape)
    if (d < 0) d = batch;
  if (t.shape != per_step)
    fail("state " + link.input + ": policy.json's shape gives " + shape_text(t.shape) + ", the golden data has " +
         shape_text(per_step));
  t.bytes.assign(t.count() * dtype_of(t.type).size, 0);
  return t;
}

// Closed loop: each step's state inputs are the previous step's state outputs, as a controller feeds them.
Report replay_rollout(Policy& policy, const Contract& c, const std::map<std::string, Tensor>& golden, int64_t* steps) {
  const Tensor& first = golden_array(golden, "rollout/in/" + c.inputs.front());
  if (first.shape.size() < 2) fail("golden_io.npz: rollout/in/" + c.inputs.front() + " is not stacked over steps");
  *steps = first.shape[0];
  std::map<std::string, Tensor> state;
  for (const auto& link : c.states)
    state[link.input] = zero_state(policy, link, first.shape[1], golden_array(golden, "rollout/in/" + link.input));
  Report report;
  for (int64_t t = 0; t < *steps; ++t) {
    std::map<std::string, Tensor> feed = state;
    for (const auto& name : c.inputs)  // observations and reset: from the golden data
      if (!state.count(name)) feed[name] = step_of(golden_array(golden, "rollout/in/" + name), t);
    std::vector<Tensor> out = policy.run(feed);
    check_outputs(report, "rollout step " + std::to_string(t), c, out, golden, "rollout", t);
    for (const auto& link : c.states) {
      size_t i = std::find(c.outputs.begin(), c.outputs.end(), link.output) - c.outputs.begin();  // checked on reading
      state[link.input] = out[i];
    }
  }
  return report;
}

void print(const std::string& what, const Report& report) {
  std::cout << what << " worst_abs_error " << report.worst << " near_ties " << report.near_ties
            << (report.problems.empty() ? " ok" : " MISMATCH") << "\n";
}

int replay(const std::string& dir) {
  Contract contract = read_contract(dir);
  std::map<std::string, Tensor> golden = read_npz(dir + "/golden_io.npz");
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "replay_onnx");
  Policy policy(env, dir, contract);

  std::vector<std::string> problems;
  Report batch = replay_batch(policy, contract, golden);
  print("golden batch: outputs " + std::to_string(contract.outputs.size()), batch);
  problems = batch.problems;
  if (!contract.states.empty()) {
    int64_t steps = 0;
    Report rollout = replay_rollout(policy, contract, golden, &steps);
    print("rollout (closed loop): steps " + std::to_string(steps) + " states " +
              std::to_string(contract.states.size()), rollout);
    problems.insert(problems.end(), rollout.problems.begin(), rollout.problems.end());
  }
  for (size_t i = 0; i < std::min(problems.size(), kShownProblems); ++i) std::cout << "  " << problems[i] << "\n";
  if (problems.size() > kShownProblems) std::cout << "  ... and " << problems.size() - kShownProblems << " more\n";
  std::cout << (problems.empty() ? "ok" : "MISMATCH") << "\n";
  return problems.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: replay_onnx BUNDLE_DIR\n";
    return 2;
  }
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "error: the ONNX Runtime library (" << base->GetVersionString() << ") is older than the headers "
              << "this program was built with (API " << ORT_API_VERSION << "); rebuild against matching ones\n";
    return 1;
  }
  Ort::InitApi(api);
  std::cout << "onnxruntime " << base->GetVersionString() << " (headers: API " << ORT_API_VERSION << ")\n";
  try {
    return replay(argv[1]);
  } catch (const std::exception& e) {  // Ort::Exception too: a bad bundle is reported, never a crash
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
