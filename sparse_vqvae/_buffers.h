/* The arrays the package's C extensions take from Python, checked before a kernel reads them (included by
 * ``_incremental.c`` and ``sparse_coding/_rowwise.c``). */
#ifndef SPARSE_VQVAE_BUFFERS_H
#define SPARSE_VQVAE_BUFFERS_H

#include <Python.h>
#include <string.h>

/* A C-contiguous buffer of ``count`` items of one of ``formats`` (size ``itemsize``), writable where asked; 0 with
 * an error (and nothing held). */
static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, const char *formats, Py_ssize_t itemsize,
                      Py_ssize_t count, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        /* The exporter's words ("ndarray is not C-contiguous", "buffer source array is read-only", "a bytes-like
         * object is required"), prefixed with the argument's name and what it must be. */
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError) ||
            PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            PyErr_Format(PyErr_GivenExceptionMatches(type, PyExc_TypeError) ? PyExc_TypeError : PyExc_ValueError,
                         "%s: expected a C-contiguous%s array of %zd items of type '%s' (%s): %S", name,
                         writable ? ", writable" : "", count, formats, Py_TYPE(obj)->tp_name, value ? value : Py_None);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
        }
        return 0;
    }
    const char *format = view->format ? view->format : "B";
    if (format[0] == '=' || format[0] == '<' || format[0] == '@') format++;
    if (view->itemsize != itemsize || strlen(format) != 1 || !strchr(formats, format[0]) ||
        view->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd contiguous items of type '%s', got %zd bytes of '%s'", name,
                     count, formats, view->len, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

#endif
