/* The replay decoder's line-shape check, in C: see flat_lines() in vstream/trades.py.
 *
 * A chunk of trade lines is decoded with one msgspec call, as newline-delimited JSON.
 * msgspec separates values by any whitespace, so lines could regroup (one line holding two
 * values, a value running across a newline). This scan admits a chunk to that one call only
 * if no regrouping is possible:
 *
 *   - no '[' anywhere (an envelope's data array never reaches the flat decoder), and
 *   - every line is at least two bytes, its first byte '{' and its last byte '}' (a '\r'
 *     before the newline is allowed after it).
 *
 * Then at every newline the decoder is between two top-level values: inside a string a raw
 * newline is invalid JSON, and inside an object the '}' that ends the line closed a nested
 * value, after which only ',' or '}' may follow, never the '{' that starts the next line.
 * So each line starts a value and no value crosses a newline; a decode that gives exactly
 * one value per line gives each line its own value, spanning the whole line.
 *
 * memchr finds the newlines, so the cost is per line, not per byte: the pure-Python
 * equivalent (bytes.translate over every byte) cost ~75 ns of a trade's ~600 ns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
flat_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t start, stop, count = -1;
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "flat_lines(buffer, start, stop) takes 3 arguments");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    stop = PyLong_AsSsize_t(args[2]);
    if (stop == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || stop < start || stop > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "flat_lines: start and stop must lie inside the buffer");
        return NULL;
    }
    {
        const char *p = (const char *)view.buf + start;
        const char *end = (const char *)view.buf + stop;
        if (p < end && memchr(p, '[', (size_t)(end - p)) == NULL) {
            count = 0;
            while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *last = nl != NULL ? nl : end; /* one past the line */
                if (last > p && last[-1] == '\r') {
                    last--;
                }
                if (last - p < 2 || p[0] != '{' || last[-1] != '}') {
                    count = -1;
                    break;
                }
                count++;
                if (nl == NULL) {
                    break;
                }
                p = nl + 1;
            }
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(count);
}

static PyMethodDef lines_methods[] = {
    {"flat_lines", (PyCFunction)(void (*)(void))flat_lines, METH_FASTCALL,
     "flat_lines(buffer, start, stop) -> int\n\n"
     "How many lines buffer[start:stop] holds if each may be decoded as one flat JSON\n"
     "object without regrouping (first byte '{', last byte '}' before an optional '\\r',\n"
     "no '[' anywhere); -1 otherwise, and for an empty span."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lines_module = {
    PyModuleDef_HEAD_INIT, "vstream._lines",
    "The replay decoder's line-shape check (see vstream.trades).", -1, lines_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    return PyModule_Create(&lines_module);
}
