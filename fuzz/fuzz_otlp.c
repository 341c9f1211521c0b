/* libFuzzer harness of the native OTLP decoder (collector/_otlp_native.c).
 *
 * The decoder is compiled INTO this binary (the #include below), instrumented for coverage
 * and built with AddressSanitizer and UBSan; the CPython it needs (its config is made from the
 * alias table by `NativeDecoder`, its results are Python objects) is embedded.  Each input is
 * handed to one entry point -- `spans` (FUZZ_ENTRY=0, trace exports) or `usage` (1, log
 * exports) -- as a memoryview of libFuzzer's exactly sized buffer, so that a read one byte
 * past the body is a heap overflow ASan reports (a bytes object would hide it behind its
 * trailing NUL).  Build and run: fuzz/run.sh.
 */
#include "../collector/_otlp_native.c"

#ifndef FUZZ_ENTRY
#define FUZZ_ENTRY 0
#endif

static PyObject *g_config[2];
static PyObject *g_bound[2]; /* the latest start accepted: 2027 (small), none (default) */

/* The decoder's config as the collector makes it (odd-sized inputs: the default limits, over
 * the decoder's own 256 attributes), and with small limits (even-sized inputs) so that the
 * size and count checks run on small inputs too. */
static const char *SETUP =
    "import os, site, sys\n"
    "site.addsitedir(os.environ['FUZZ_SITE'])\n"
    "sys.path.insert(0, os.environ.get('FUZZ_ROOT', '.'))\n"
    "from comptroller.collector._native import NativeDecoder\n"
    "from comptroller.collector._normalise import Limits, Normaliser\n"
    "limits = Limits(max_attribute_bytes=64, max_span_attributes=16,\n"
    "                max_record_attributes=16, max_record_attribute_bytes=64,\n"
    "                max_resource_fanout_bytes=4096)\n"
    "small = NativeDecoder(Normaliser(limits=limits))._config\n"
    "default = NativeDecoder(Normaliser())._config\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    Py_InitializeEx(0);
    /* the instrumented copy, registered before the package imports the installed one */
    PyObject *mod = PyInit__otlp_native();
    if (mod == NULL ||
        PyDict_SetItemString(PyImport_GetModuleDict(), "comptroller.collector._otlp_native",
                             mod) < 0) {
        PyErr_Print();
        abort();
    }
    PyObject *globals = PyDict_New();
    PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins());
    PyObject *out = PyRun_String(SETUP, Py_file_input, globals, globals);
    if (out == NULL) {
        PyErr_Print();
        abort();
    }
    Py_DECREF(out);
    g_config[0] = PyDict_GetItemString(globals, "small");
    g_config[1] = PyDict_GetItemString(globals, "default");
    Py_INCREF(g_config[0]);
    Py_INCREF(g_config[1]);
    g_bound[0] = PyLong_FromUnsignedLongLong(1800000000000000000ULL);
    g_bound[1] = PyLong_FromUnsignedLongLong(UINT64_MAX);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)size, PyBUF_READ);
    if (view == NULL) abort();
    PyObject *args = PyTuple_Pack(3, g_config[size & 1], view, g_bound[size & 1]);
    PyObject *result = FUZZ_ENTRY == 0 ? spans(NULL, args) : usage(NULL, args);
    /* An exception is a bug too: the decoder declines (returns a str) or decodes. */
    if (result == NULL) {
        PyErr_Print();
        abort();
    }
    Py_DECREF(result);
    Py_DECREF(args);
    Py_DECREF(view);
    return 0;
}
