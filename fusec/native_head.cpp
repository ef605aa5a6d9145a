// The per-call head of fusec's generated launchers, in C++ (fusec/native.py builds and loads it).
//
// head(spec, t0, t1, ...) does in one call what the Python head does in a few lines per input:
// for each tensor, checks its layout against what the kernels were generated for and reads its
// address; returns (device index of t0, whether every address read is 16-byte aligned, the
// addresses...). Anything it does not handle itself (a tensor subclass, a layout that differs, a
// C++ error) goes to the Python head the spec carries, which either computes the same tuple or
// raises the launcher's StrideMismatch naming the input: this file never decides an error.
//
// spec = (python_head, kept, raw, entry, ...), one entry per tensor: (name, check, address?, expected);
// kept a list, one slot per address read, of the int objects last returned, and raw a bytearray of
// their values (address_object).
// where check is None (not checked), True (contiguous) or a tuple (dim, stride, dim, stride...).
//
// seed() is a call's seed: one draw of torch's default CPU generator under its lock, the value
// `torch.empty((), dtype=torch.int64).random_()` would hold, with bit 62 set (runtime.draw_seed).

#include <Python.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <mutex>

namespace {

PyObject* exact_types = nullptr;  // the tensor types whose methods no Python code overrides

bool plain_tensor(PyObject* obj) {
  if (exact_types == nullptr) return false;
  Py_ssize_t n = PyTuple_GET_SIZE(exact_types);
  for (Py_ssize_t i = 0; i < n; i++) {
    if (reinterpret_cast<PyObject*>(Py_TYPE(obj)) == PyTuple_GET_ITEM(exact_types, i)) return true;
  }
  return false;
}

bool layout_matches(const at::Tensor& t, PyObject* check) {
  if (check == Py_None) return true;
  if (check == Py_True) return t.is_contiguous();
  Py_ssize_t n = PyTuple_GET_SIZE(check);
  for (Py_ssize_t i = 0; i + 1 < n; i += 2) {
    int64_t dim = PyLong_AsLongLong(PyTuple_GET_ITEM(check, i));
    int64_t stride = PyLong_AsLongLong(PyTuple_GET_ITEM(check, i + 1));
    if (dim >= t.dim() || t.stride(dim) != stride) return false;
  }
  return true;
}

// The int object for `address`: the one made for this slot at the last call when the address is the
// same (a parameter's, an optimizer state's and most buffers' addresses repeat from call to call),
// else a new one, kept. Making a 47-bit int, or reading one back, costs more than the rest of an
// input's work: the last address is kept as a raw number beside it.
PyObject* address_object(PyObject* kept, uintptr_t* raw, Py_ssize_t at, uintptr_t address) {
  PyObject* last = PyList_GET_ITEM(kept, at);
  if (raw[at] == address && PyLong_CheckExact(last)) {
    Py_INCREF(last);
    return last;
  }
  PyObject* made = PyLong_FromUnsignedLongLong(address);
  if (made == nullptr) throw 0;
  Py_INCREF(made);
  PyList_SetItem(kept, at, made);  // steals the reference taken above; lets the last one go
  raw[at] = address;
  return made;
}

PyObject* python_head(PyObject* spec, PyObject* const* args, Py_ssize_t nargs) {
  return PyObject_Vectorcall(PyTuple_GET_ITEM(spec, 0), args, static_cast<size_t>(nargs), nullptr);
}

// The spec's kept addresses (spec[1], a list of int objects, and spec[2], their raw values); false,
// with a TypeError set, where the spec is not one `native.spec` made for this many tensors.
bool kept_slots(PyObject* spec, Py_ssize_t nargs, PyObject** kept, uintptr_t** raw) {
  if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != nargs + 2) {
    PyErr_SetString(PyExc_TypeError, "head(spec, tensors...): one spec entry per tensor");
    return false;
  }
  *kept = PyTuple_GET_ITEM(spec, 1);
  PyObject* raw_bytes = PyTuple_GET_ITEM(spec, 2);
  if (!PyList_CheckExact(*kept) || !PyByteArray_CheckExact(raw_bytes) ||
      PyByteArray_GET_SIZE(raw_bytes) != PyList_GET_SIZE(*kept) * static_cast<Py_ssize_t>(sizeof(uintptr_t))) {
    PyErr_SetString(PyExc_TypeError, "head(spec, tensors...): spec[1] and spec[2] are the addresses kept");
    return false;
  }
  *raw = reinterpret_cast<uintptr_t*>(PyByteArray_AS_STRING(raw_bytes));
  return true;
}

// Fills `out` (index, aligned, addresses...) from the tensors; throws where Python must decide.
void read_tensors(PyObject* spec, PyObject* const* args, Py_ssize_t nargs, PyObject* kept, uintptr_t* raw,
                  PyObject* out) {
  Py_ssize_t slots = PyList_GET_SIZE(kept), at = 0;
  uintptr_t any = 0;
  for (Py_ssize_t i = 1; i < nargs; i++) {
    PyObject* entry = PyTuple_GET_ITEM(spec, i + 2);
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 3 || !plain_tensor(args[i])) throw 0;
    const at::Tensor& t = THPVariable_Unpack(args[i]);
    if (i == 1) PyTuple_SET_ITEM(out, 0, PyLong_FromLong(t.get_device()));
    if (!layout_matches(t, PyTuple_GET_ITEM(entry, 1))) throw 0;
    if (PyTuple_GET_ITEM(entry, 2) != Py_True) continue;
    if (at >= slots) throw 0;
    auto address = reinterpret_cast<uintptr_t>(t.data_ptr());  // as Python's data_ptr(): mutable
    any |= address;
    PyTuple_SET_ITEM(out, 2 + at, address_object(kept, raw, at, address));
    at++;
  }
  if (at != slots) throw 0;
  PyTuple_SET_ITEM(out, 1, PyBool_FromLong((any & 15) == 0));
}

PyObject* head(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  PyObject* kept = nullptr;
  uintptr_t* raw = nullptr;
  if (nargs < 2) {
    PyErr_SetString(PyExc_TypeError, "head(spec, tensors...): a spec and at least one tensor");
    return nullptr;
  }
  if (!kept_slots(args[0], nargs, &kept, &raw)) return nullptr;
  PyObject* out = PyTuple_New(2 + PyList_GET_SIZE(kept));
  if (out == nullptr) return nullptr;
  try {
    read_tensors(args[0], args, nargs, kept, raw, out);
  } catch (...) {
    Py_DECREF(out);
    PyErr_Clear();
    return python_head(args[0], args, nargs);
  }
  return out;
}

PyObject* seed(PyObject*, PyObject*) {
  auto gen = at::detail::getDefaultCPUGenerator();
  uint64_t value;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    value = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
  }
  value &= (uint64_t{1} << 63) - 1;  // random_() of an int64: [0, 2**63)
  return PyLong_FromUnsignedLongLong(value | (uint64_t{1} << 62));
}

PyObject* set_tensor_types(PyObject*, PyObject* types) {
  if (!PyTuple_Check(types)) {
    PyErr_SetString(PyExc_TypeError, "set_tensor_types takes a tuple of types");
    return nullptr;
  }
  Py_INCREF(types);
  Py_XSETREF(exact_types, types);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"head", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(head)), METH_FASTCALL,
     "head(spec, *tensors) -> (device index, aligned, addresses...)"},
    {"seed", seed, METH_NOARGS, "a call's seed, drawn from torch's default CPU generator"},
    {"set_tensor_types", set_tensor_types, METH_O, "the tensor types head reads without Python"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "fusec_native_head", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_fusec_native_head(void) { return PyModule_Create(&module); }
