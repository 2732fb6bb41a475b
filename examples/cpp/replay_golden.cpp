// Replays a bundle's golden inputs through policy.pt with LibTorch and checks the outputs.
//
//   ./replay_golden BUNDLE_DIR
//
// BUNDLE_DIR holds policy.pt and golden_io.pt (the golden data as a dict of tensors, written by
// `sfspec export` next to golden_io.npz). Inputs are "batch/in/<name>" in policy.json's input
// order, outputs "batch/out/<name>". Prints the worst absolute error; exits 1 on a mismatch.
#include <torch/script.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

static std::vector<std::string> split_names(const std::string& joined) {
  std::vector<std::string> names;
  std::string current;
  for (char c : joined) {
    if (c == '\n') {
      if (!current.empty()) names.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) names.push_back(current);
  return names;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: replay_golden BUNDLE_DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  torch::jit::Module policy = torch::jit::load(dir + "/policy.pt");
  policy.eval();

  std::ifstream file(dir + "/golden_io.pt", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  c10::Dict<c10::IValue, c10::IValue> golden = torch::jit::pickle_load(bytes).toGenericDict();

  auto names = [&](const std::string& key) { return split_names(golden.at(key).toStringRef()); };
  std::vector<torch::jit::IValue> inputs;
  for (const auto& name : names("input_names")) inputs.push_back(golden.at("batch/in/" + name).toTensor());

  torch::NoGradGuard no_grad;
  c10::IValue result = policy.forward(inputs);
  std::vector<torch::Tensor> outputs;
  if (result.isTuple()) {
    for (const auto& value : result.toTupleRef().elements()) outputs.push_back(value.toTensor());
  } else {
    outputs.push_back(result.toTensor());
  }

  double worst = 0.0;
  bool ok = true;
  const auto output_names = names("output_names");
  for (size_t i = 0; i < output_names.size(); ++i) {
    torch::Tensor expected = golden.at("batch/out/" + output_names[i]).toTensor();
    torch::Tensor got = outputs.at(i);
    if (!expected.is_floating_point()) {
      if (!torch::equal(expected, got)) ok = false;
      continue;
    }
    torch::Tensor err = (expected.to(torch::kDouble) - got.to(torch::kDouble)).abs();
    double max_err = err.numel() ? err.max().item<double>() : 0.0;
    worst = std::max(worst, max_err);
    if (!torch::allclose(got, expected, 1e-4, 1e-5)) ok = false;
  }
  std::cout << "outputs " << outputs.size() << " worst_abs_error " << worst << (ok ? " ok" : " MISMATCH") << "\n";
  return ok ? 0 : 1;
}
