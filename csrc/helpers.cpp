// Hot loops over document lengths, exposed to Python with pybind11 as megatron_mio._C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

namespace py = pybind11;

void register_packing(py::module_& m);  // packing.cpp

namespace {

// Exclusive prefix sum of document lengths: offsets[i] = sum(lengths[:i]), offsets[n] = total.
// data/validate.py checks every .idx's byte pointers against these offsets of its lengths.
py::array_t<int64_t> document_offsets(py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths) {
  if (lengths.ndim() != 1) throw std::invalid_argument("document_offsets: lengths must be 1-D");
  const auto n = lengths.shape(0);
  py::array_t<int64_t> offsets(n + 1);
  auto in = lengths.unchecked<1>();
  auto out = offsets.mutable_unchecked<1>();
  int64_t total = 0;
  out(0) = 0;
  for (py::ssize_t i = 0; i < n; ++i) {
    if (in(i) < 0) throw std::invalid_argument("document_offsets: negative document length");
    total += in(i);
    out(i + 1) = total;
  }
  return offsets;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "megatron_mio C++ helpers (document lengths, packing, blending)";
  m.def("document_offsets", &document_offsets, py::arg("lengths"),
        "Exclusive prefix sum of document lengths (length n+1, int64).");
  register_packing(m);
}
