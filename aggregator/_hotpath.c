/* The receive loop's per-result work in C. aggregator/hotpath.py documents the rules and
 * holds the Python fallback used where this is not compiled; tests/test_hotpath.py checks
 * this against protobuf and against the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Reads a varint of at most 10 bytes; returns the position after it, or NULL. */
static inline const uint8_t *read_varint(const uint8_t *p, const uint8_t *end,
                                         uint64_t *value) {
    /* Most tags and lengths fit one byte: that case without the loop. */
    if (p < end && *p < 0x80) {
        *value = *p;
        return p + 1;
    }
    uint64_t result = 0;
    for (int shift = 0; shift < 70 && p < end; shift += 7) {
        uint8_t byte = *p++;
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (byte < 0x80) {
            *value = result;
            return p;
        }
    }
    return NULL;
}

/* Skips a varint of at most 10 bytes, as read_varint reads it; NULL where that fails. */
static inline const uint8_t *skip_varint(const uint8_t *p, const uint8_t *end) {
    const uint8_t *limit = end - p > 10 ? p + 10 : end;
    while (p < limit) {
        if (*p++ < 0x80) {
            return p;
        }
    }
    return NULL;
}

/* Skips one field of wire type `wire_type`; returns the position after it, or NULL for a
 * group (deprecated, never sent by Goldmane), a wire type that does not exist, or a field
 * that runs past `end`. */
static const uint8_t *skip_field(const uint8_t *p, const uint8_t *end, unsigned wire_type) {
    uint64_t length;
    switch (wire_type) {
    case 0:
        return skip_varint(p, end);
    case 1:
        return end - p >= 8 ? p + 8 : NULL;
    case 2:
        p = read_varint(p, end, &length);
        return p != NULL && length <= (uint64_t)(end - p) ? p + length : NULL;
    case 5:
        return end - p >= 4 ? p + 4 : NULL;
    default:
        return NULL;
    }
}

/* Finds the one occurrence of length-delimited field `wanted` in [p, end); in `times`
 * (when not NULL) the last varint fields 2 and 3. Returns 0 unless exactly one was found
 * and every field is well formed. */
static int scan_message(const uint8_t *p, const uint8_t *end, uint64_t wanted,
                        const uint8_t **found, Py_ssize_t *found_length, int64_t *times) {
    int occurrences = 0;
    while (p < end) {
        const uint8_t *tag_start = p;
        uint64_t tag;
        p = read_varint(p, end, &tag);
        /* Protobuf refuses a tag over 32 bits or written in more than 5 bytes. */
        if (p == NULL || tag > UINT32_MAX || p - tag_start > 5) {
            return 0;
        }
        uint64_t number = tag >> 3;
        unsigned wire_type = (unsigned)(tag & 7);
        if (number == 0) {
            return 0;
        }
        if (number == wanted) {
            uint64_t length;
            if (wire_type != 2 || ++occurrences > 1) {
                return 0;
            }
            p = read_varint(p, end, &length);
            if (p == NULL || length > (uint64_t)(end - p)) {
                return 0;
            }
            *found = p;
            *found_length = (Py_ssize_t)length;
            p += length;
        } else if (times != NULL && (number == 2 || number == 3)) {
            uint64_t value;
            if (wire_type != 0) {
                return 0;
            }
            p = read_varint(p, end, &value);
            if (p == NULL) {
                return 0;
            }
            times[number - 2] = (int64_t)value;
        } else {
            p = skip_field(p, end, wire_type);
            if (p == NULL) {
                return 0;
            }
        }
    }
    return occurrences == 1;
}

/* The FlowKey bytes and times of a serialised FlowResult; 0 when its layout is not simple. */
static int parse_head(const uint8_t *data, Py_ssize_t length, const uint8_t **key,
                      Py_ssize_t *key_length, int64_t *times) {
    const uint8_t *flow;
    Py_ssize_t flow_length;
    times[0] = times[1] = 0;
    return scan_message(data, data + length, 2, &flow, &flow_length, NULL) &&
           scan_message(flow, flow + flow_length, 1, key, key_length, times);
}

static PyObject *flow_head(PyObject *Py_UNUSED(module), PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *key;
    Py_ssize_t key_length;
    int64_t times[2];
    PyObject *head;
    if (parse_head(view.buf, view.len, &key, &key_length, times)) {
        head = Py_BuildValue("(y#LL)", (const char *)key, key_length, (long long)times[0],
                             (long long)times[1]);
    } else {
        head = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return head;
}

/* skipped[reason] += 1 */
static int count_skip(PyObject *skipped, PyObject *reason) {
    PyObject *count = PyDict_GetItemWithError(skipped, reason);
    if (count == NULL && PyErr_Occurred()) {
        return -1;
    }
    long previous = count == NULL ? 0 : PyLong_AsLong(count);
    if (previous == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *next = PyLong_FromLong(previous + 1);
    if (next == NULL) {
        return -1;
    }
    int status = PyDict_SetItem(skipped, reason, next);
    Py_DECREF(next);
    return status;
}

/* open_verdicts[verdict.connection] = verdict, unless a higher rank is there already. */
static int keep_highest(PyObject *open_verdicts, PyObject *verdict) {
    if (PyTuple_GET_SIZE(verdict) < 2) {
        PyErr_SetString(PyExc_TypeError, "a KeyVerdict has a connection and a rank");
        return -1;
    }
    PyObject *connection = PyTuple_GET_ITEM(verdict, 0);
    PyObject *best = PyDict_GetItemWithError(open_verdicts, connection);
    if (best == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (best != NULL && best != verdict) {
        if (!PyTuple_Check(best) || PyTuple_GET_SIZE(best) < 2) {
            PyErr_SetString(PyExc_TypeError, "a KeyVerdict has a connection and a rank");
            return -1;
        }
        long best_rank = PyLong_AsLong(PyTuple_GET_ITEM(best, 1));
        long rank = PyLong_AsLong(PyTuple_GET_ITEM(verdict, 1));
        if ((best_rank == -1 || rank == -1) && PyErr_Occurred()) {
            return -1;
        }
        if (best_rank >= rank) {
            return 0;
        }
    } else if (best == verdict) {
        return 0;
    }
    return PyDict_SetItem(open_verdicts, connection, verdict);
}

static PyObject *count_known(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *batch, *verdicts, *open_start_object, *open_end_object, *open_verdicts, *skipped;
    Py_ssize_t index, max_bytes;
    if (!PyArg_ParseTuple(args, "O!nO!OOO!O!n:count_known", &PyList_Type, &batch, &index,
                          &PyDict_Type, &verdicts, &open_start_object, &open_end_object,
                          &PyDict_Type, &open_verdicts, &PyDict_Type, &skipped, &max_bytes)) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "count_known: index must not be negative");
        return NULL;
    }
    int has_open = open_start_object != Py_None && open_end_object != Py_None;
    long long open_start = 0, open_end = 0;
    if (has_open) {
        open_start = PyLong_AsLongLong(open_start_object);
        open_end = PyLong_AsLongLong(open_end_object);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    for (; index < PyList_GET_SIZE(batch); index++) {
        PyObject *data = PyList_GET_ITEM(batch, index);
        const uint8_t *key;
        Py_ssize_t key_length;
        int64_t times[2];
        if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) > max_bytes ||
            !parse_head((const uint8_t *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &key,
                        &key_length, times)) {
            break;
        }
        PyObject *key_object = PyBytes_FromStringAndSize((const char *)key, key_length);
        if (key_object == NULL) {
            return NULL;
        }
        PyObject *verdict = PyDict_GetItemWithError(verdicts, key_object);
        Py_DECREF(key_object);
        if (verdict == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            break;
        }
        if (!has_open || times[0] != open_start || times[1] != open_end) {
            break;
        }
        if (PyTuple_Check(verdict)) {
            if (keep_highest(open_verdicts, verdict) < 0) {
                return NULL;
            }
        } else {
            if (count_skip(skipped, verdict) < 0) {
                return NULL;
            }
        }
    }
    return PyLong_FromSsize_t(index);
}

static PyMethodDef methods[] = {
    {"flow_head", flow_head, METH_O,
     "(key, start_time, end_time) of a serialised FlowResult, or None: see aggregator.hotpath."},
    {"count_known", count_known, METH_VARARGS,
     "Count a run of simple results: see aggregator.hotpath.count_known_python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "aggregator._hotpath",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModule_Create(&module); }
