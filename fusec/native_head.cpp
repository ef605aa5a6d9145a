// The per-call head of fusec's generated launchers, in C++ (fusec/native.py builds and loads it).
//
// head(spec, inputs) does in one call what the Python head does in a few lines per input: for each
// tensor of the call's `inputs` (a list) it names, checks its layout against what the kernels were
// generated for and reads its address; returns (device index of the first, whether every address
// read is 16-byte aligned, the addresses as one tuple). Anything it does not handle itself (a
// tensor subclass, a layout that differs, inputs not a list, a C++ error) goes to the Python head
// the spec carries, which either computes the same tuple or raises the launcher's StrideMismatch
// naming the input: this file never decides an error.
//
// spec = (python_head, kept, raw, entry, ...), one entry per tensor: (name, check, address?, expected,
// position in inputs), where check is None (not checked), True (contiguous) or a tuple (dim, stride,
// dim, stride...). `kept` is a one-slot list holding the addresses' tuple returned last, and `raw`
// a bytearray of their values (addresses).
//
// seed() is a call's seed: one draw of torch's default CPU generator under its lock, the value
// `torch.empty((), dtype=torch.int64).random_()` would hold, with bit 62 set (runtime.draw_seed).

#include <Python.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstdint>
#include <memory>
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

// The addresses' tuple: the one returned last when every address is the same (a parameter's, an
// optimizer state's and most buffers' addresses repeat from call to call), else a new one that
// keeps the int objects of the addresses that repeat. Making a 47-bit int, or reading one back,
// costs more than the rest of an input's work: the last addresses are kept as raw numbers beside it.
PyObject* addresses(PyObject* spec, const uintptr_t* now, Py_ssize_t slots) {
  PyObject* kept = PyTuple_GET_ITEM(spec, 1);
  auto* raw = reinterpret_cast<uintptr_t*>(PyByteArray_AS_STRING(PyTuple_GET_ITEM(spec, 2)));
  PyObject* last = PyList_GET_ITEM(kept, 0);
  bool had = PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == slots;
  if (had && std::equal(now, now + slots, raw)) {
    Py_INCREF(last);
    return last;
  }
  // A new tuple may start a garbage collection, which runs Python code (a finalizer, another
  // thread calling this launcher): what was kept is read again after it. Nothing below runs any.
  PyObject* made = PyTuple_New(slots);
  if (made == nullptr) throw 0;
  raw = reinterpret_cast<uintptr_t*>(PyByteArray_AS_STRING(PyTuple_GET_ITEM(spec, 2)));
  last = PyList_GET_ITEM(kept, 0);
  had = PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == slots;
  for (Py_ssize_t at = 0; at < slots; at++) {
    PyObject* value;
    if (had && raw[at] == now[at]) {
      value = PyTuple_GET_ITEM(last, at);
      Py_INCREF(value);
    } else {
      value = PyLong_FromUnsignedLongLong(now[at]);
      if (value == nullptr) {
        Py_DECREF(made);
        throw 0;
      }
    }
    PyTuple_SET_ITEM(made, at, value);
  }
  std::copy(now, now + slots, raw);
  Py_INCREF(made);
  PyList_SetItem(kept, 0, made);  // steals the reference taken above; lets the last one go
  return made;
}

PyObject* python_head(PyObject* spec, PyObject* inputs) {
  return PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(spec, 0), spec, inputs, nullptr);
}

// Whether the spec is one `native.spec` made (false, with a TypeError set, where not).
bool well_formed(PyObject* spec) {
  if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 4) {
    PyErr_SetString(PyExc_TypeError, "head(spec, inputs): spec has a tensor entry at least");
    return false;
  }
  PyObject* kept = PyTuple_GET_ITEM(spec, 1);
  PyObject* raw = PyTuple_GET_ITEM(spec, 2);
  if (!PyList_CheckExact(kept) || PyList_GET_SIZE(kept) != 1 || !PyByteArray_CheckExact(raw) ||
      PyByteArray_GET_SIZE(raw) % static_cast<Py_ssize_t>(sizeof(uintptr_t)) != 0) {
    PyErr_SetString(PyExc_TypeError, "head(spec, inputs): spec[1] and spec[2] are the addresses kept");
    return false;
  }
  return true;
}

// (index, aligned, addresses) from the tensors; throws where Python must decide.
PyObject* read_tensors(PyObject* spec, PyObject* inputs) {
  if (!PyList_CheckExact(inputs)) throw 0;
  Py_ssize_t entries = PyTuple_GET_SIZE(spec), count = PyList_GET_SIZE(inputs);
  Py_ssize_t slots = PyByteArray_GET_SIZE(PyTuple_GET_ITEM(spec, 2)) / static_cast<Py_ssize_t>(sizeof(uintptr_t));
  uintptr_t on_stack[64];  // most calls' addresses; more on the heap
  std::unique_ptr<uintptr_t[]> on_heap(slots > 64 ? new uintptr_t[slots] : nullptr);
  uintptr_t* now = on_heap ? on_heap.get() : on_stack;
  Py_ssize_t at = 0;
  long index = -1;
  uintptr_t any = 0;
  for (Py_ssize_t i = 3; i < entries; i++) {
    PyObject* entry = PyTuple_GET_ITEM(spec, i);
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 5) throw 0;
    Py_ssize_t position = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 4));
    if (position < 0 || position >= count) throw 0;
    PyObject* arg = PyList_GET_ITEM(inputs, position);
    if (!plain_tensor(arg)) throw 0;
    const at::Tensor& t = THPVariable_Unpack(arg);
    if (i == 3) index = t.get_device();
    if (!layout_matches(t, PyTuple_GET_ITEM(entry, 1))) throw 0;
    if (PyTuple_GET_ITEM(entry, 2) != Py_True) continue;
    if (at >= slots) throw 0;
    auto address = reinterpret_cast<uintptr_t>(t.data_ptr());  // as Python's data_ptr(): mutable
    any |= address;
    now[at++] = address;
  }
  if (at != slots) throw 0;
  PyObject* out = PyTuple_New(3);
  PyObject* device = PyLong_FromLong(index);
  if (out == nullptr || device == nullptr) {
    Py_XDECREF(out);
    Py_XDECREF(device);
    throw 0;
  }
  PyTuple_SET_ITEM(out, 0, device);
  PyObject* aligned = (any & 15) == 0 ? Py_True : Py_False;
  Py_INCREF(aligned);
  PyTuple_SET_ITEM(out, 1, aligned);
  try {
    PyTuple_SET_ITEM(out, 2, addresses(spec, now, slots));
  } catch (...) {
    Py_DECREF(out);
    throw;
  }
  return out;
}

PyObject* head(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "head(spec, inputs): a spec and the call's inputs");
    return nullptr;
  }
  if (!well_formed(args[0])) return nullptr;
  try {
    return read_tensors(args[0], args[1]);
  } catch (...) {
    PyErr_Clear();
    return python_head(args[0], args[1]);
  }
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
     "head(spec, inputs) -> (device index, aligned, addresses)"},
    {"seed", seed, METH_NOARGS, "a call's seed, drawn from torch's default CPU generator"},
    {"set_tensor_types", set_tensor_types, METH_O, "the tensor types head reads without Python"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "fusec_native_head", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_fusec_native_head(void) { return PyModule_Create(&module); }
