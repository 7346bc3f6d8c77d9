/* The receive loop's per-result work in C. aggregator/hotpath.py documents the rules and
 * holds the Python fallback used where this is not compiled; tests/test_hotpath.py checks
 * this against protobuf and against the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t read_word(const uint8_t *p) {
    uint64_t word;
    memcpy(&word, p, sizeof word);
    return word;
}

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* A flow's times and counters are varints of several bytes: where 8 bytes are there to read,
 * a varint's end (its first byte without the high bit) is found in one word, not byte by
 * byte. Gives the varint's length in bytes, or 0 when it is longer than 8 bytes. */
#define WORD_VARINTS 1
static inline int varint_length_in_word(uint64_t word) {
    uint64_t last_bytes = ~word & 0x8080808080808080ULL;
    return last_bytes != 0 ? __builtin_ctzll(last_bytes) / 8 + 1 : 0;
}
#endif

/* Reads a varint of at most 10 bytes; returns the position after it, or NULL. */
static inline const uint8_t *read_varint(const uint8_t *p, const uint8_t *end,
                                         uint64_t *value) {
    /* Most tags and lengths fit one byte: that case without the loop. */
    if (p < end && *p < 0x80) {
        *value = *p;
        return p + 1;
    }
#ifdef WORD_VARINTS
    if (end - p >= 8) {
        uint64_t word = read_word(p);
        int length = varint_length_in_word(word);
        if (length != 0) {
            /* Drops the bytes after the varint and the high bits, then closes the gaps. */
            uint64_t x = (length == 8 ? word : word & ((1ULL << (8 * length)) - 1)) &
                         0x7f7f7f7f7f7f7f7fULL;
            x = ((x & 0x7f007f007f007f00ULL) >> 1) | (x & 0x007f007f007f007fULL);
            x = ((x & 0x3fff00003fff0000ULL) >> 2) | (x & 0x00003fff00003fffULL);
            x = ((x & 0x0fffffff00000000ULL) >> 4) | (x & 0x000000000fffffffULL);
            *value = x;
            return p + length;
        }
    }
#endif
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
#ifdef WORD_VARINTS
    if (end - p >= 8) {
        int length = varint_length_in_word(read_word(p));
        if (length != 0) {
            return p + length;
        }
    }
#endif
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
static inline const uint8_t *skip_field(const uint8_t *p, const uint8_t *end, unsigned wire_type) {
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

/* Reads a field's tag; returns the position after it, or NULL where protobuf refuses it: a
 * tag over 32 bits or written in more than 5 bytes, or field number 0. */
static inline const uint8_t *read_tag(const uint8_t *p, const uint8_t *end, uint64_t *number,
                                      unsigned *wire_type) {
    const uint8_t *tag_start = p;
    uint64_t tag;
    p = read_varint(p, end, &tag);
    if (p == NULL || tag > UINT32_MAX || p - tag_start > 5 || tag >> 3 == 0) {
        return NULL;
    }
    *number = tag >> 3;
    *wire_type = (unsigned)(tag & 7);
    return p;
}

/* Finds the one occurrence of length-delimited field `wanted` in [p, end); in `times`
 * (when not NULL) the last varint fields 2 and 3. Returns 0 unless exactly one was found
 * and every field is well formed. */
static int scan_message(const uint8_t *p, const uint8_t *end, uint64_t wanted,
                        const uint8_t **found, Py_ssize_t *found_length, int64_t *times) {
    int occurrences = 0;
    while (p < end) {
        uint64_t number;
        unsigned wire_type;
        p = read_tag(p, end, &number, &wire_type);
        if (p == NULL) {
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

/* A tuple of `count` new references, which it takes over; NULL (and none of them kept) where
 * one of them is NULL or the tuple cannot be made. Py_BuildValue parses a format string per
 * call, which cost as much as the rest of flow_head. */
static PyObject *tuple_of(PyObject *const *items, size_t count) {
    PyObject *tuple = PyTuple_New((Py_ssize_t)count);
    for (size_t i = 0; i < count; i++) {
        if (tuple != NULL && items[i] != NULL) {
            PyTuple_SET_ITEM(tuple, (Py_ssize_t)i, items[i]);
        } else {
            Py_XDECREF(items[i]);
            Py_CLEAR(tuple);
        }
    }
    return tuple;
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
        PyObject *items[] = {
            PyBytes_FromStringAndSize((const char *)key, key_length),
            PyLong_FromLongLong(times[0]),
            PyLong_FromLongLong(times[1]),
        };
        head = tuple_of(items, sizeof items / sizeof *items);
    } else {
        head = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return head;
}

/* --- read_key: what the trail needs of a FlowKey, read without protobuf ------------------
 *
 * A stream's first bucket brings thousands of keys never seen, and decoding each with
 * protobuf, reading its fields and naming its connection in Python cost about 30,000
 * instructions a key. This reads the key once, checks what protobuf checks (every field well
 * formed, every string UTF-8, the policy trace too), and returns None where the layout is one
 * it does not read, so that protobuf decides: a known field with another wire type (protobuf
 * keeps it as an unknown field), a group, a policy trace nested deeper than a real one.
 */

/* FlowKey's field numbers (proto/goldmane.proto) that the trail reads. */
enum {
    KEY_SOURCE_NAME = 1,
    KEY_SOURCE_NAMESPACE = 2,
    KEY_DEST_NAME = 4,
    KEY_DEST_NAMESPACE = 5,
    KEY_DEST_PORT = 7,
    KEY_PROTO = 12,
    KEY_REPORTER = 13,
    KEY_ACTION = 14,
    KEY_FIELDS = 16,
};

/* What a field of a message is, by its number: how it is checked. */
typedef enum { UNKNOWN = 0, VARINT, STRING, POLICY_TRACE, POLICY_HIT } FieldKind;

typedef struct {
    const FieldKind *kinds;
    uint64_t count;
} Schema;

/* source_name, source_namespace, source_type, dest_name, dest_namespace, dest_type, dest_port,
 * dest_service_name, dest_service_namespace, dest_service_port_name, dest_service_port, proto,
 * reporter, action, policies */
static const FieldKind FLOW_KEY_KINDS[KEY_FIELDS] = {
    [1] = STRING,  [2] = STRING,  [3] = VARINT,  [4] = STRING,  [5] = STRING,
    [6] = VARINT,  [7] = VARINT,  [8] = STRING,  [9] = STRING,  [10] = STRING,
    [11] = VARINT, [12] = STRING, [13] = VARINT, [14] = VARINT, [15] = POLICY_TRACE,
};
static const FieldKind POLICY_TRACE_KINDS[] = {[1] = POLICY_HIT, [2] = POLICY_HIT};
/* kind, namespace, name, tier, action, policy_index, rule_index, trigger */
static const FieldKind POLICY_HIT_KINDS[] = {
    [1] = VARINT, [2] = STRING, [3] = STRING, [4] = STRING,
    [5] = VARINT, [6] = VARINT, [7] = VARINT, [8] = POLICY_HIT,
};
#define SCHEMA(kinds) {kinds, sizeof kinds / sizeof *kinds}
static const Schema FLOW_KEY = SCHEMA(FLOW_KEY_KINDS);
static const Schema SCHEMAS[] = {
    [POLICY_TRACE] = SCHEMA(POLICY_TRACE_KINDS),
    [POLICY_HIT] = SCHEMA(POLICY_HIT_KINDS),
};

/* A PolicyHit's `trigger` is another PolicyHit; Calico's go one level deep. */
#define MESSAGE_DEPTH_LIMIT 8

/* Whether [p, p + length) is UTF-8 as Python's strict decoder (and protobuf) reads it. */
static int is_utf8(const uint8_t *p, uint64_t length) {
    for (uint64_t i = 0; i < length; i++) {
        if (p[i] >= 0x80) {
            PyObject *text = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)length, NULL);
            if (text == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(text);
            return 1;
        }
    }
    return 1;
}

typedef struct {
    const uint8_t *data;
    uint64_t length;
} Span;

/* Checks a serialised message of `schema` as protobuf reads it; 0 where the layout is not one
 * this reads. Where `strings` and `varints` are given (indexed by field number), they receive
 * the last occurrence of each string and varint field, as protobuf keeps it. */
static int read_message(const uint8_t *p, const uint8_t *end, const Schema *schema, int depth,
                        Span *strings, uint64_t *varints) {
    if (depth > MESSAGE_DEPTH_LIMIT) {
        return 0;
    }
    while (p < end) {
        uint64_t number, value;
        unsigned wire_type;
        p = read_tag(p, end, &number, &wire_type);
        if (p == NULL) {
            return 0;
        }
        FieldKind kind = number < schema->count ? schema->kinds[number] : UNKNOWN;
        if (kind == UNKNOWN) {
            p = skip_field(p, end, wire_type);
        } else if (kind == VARINT) {
            p = wire_type == 0 ? read_varint(p, end, &value) : NULL;
            if (p != NULL && varints != NULL) {
                varints[number] = value;
            }
        } else {
            p = wire_type == 2 ? read_varint(p, end, &value) : NULL;
            if (p == NULL || value > (uint64_t)(end - p)) {
                return 0;
            }
            int valid = kind == STRING ? is_utf8(p, value)
                                       : read_message(p, p + value, &SCHEMAS[kind], depth + 1,
                                                      NULL, NULL);
            if (!valid) {
                return 0;
            }
            if (strings != NULL) {
                strings[number] = (Span){p, value};
            }
            p += value;
        }
        if (p == NULL) {
            return 0;
        }
    }
    return 1;
}

static uint8_t *write_varint(uint8_t *out, uint64_t value) {
    for (; value >= 0x80; value >>= 7) {
        *out++ = (uint8_t)(value | 0x80);
    }
    *out++ = (uint8_t)value;
    return out;
}

/* The fields that name a connection, in the order protobuf writes them. */
static const int CONNECTION_FIELDS[] = {KEY_SOURCE_NAME, KEY_SOURCE_NAMESPACE, KEY_DEST_NAME,
                                        KEY_DEST_NAMESPACE, KEY_DEST_PORT, KEY_PROTO};

/* The connection's name: a FlowKey holding only the fields that name it, serialised as
 * protobuf serialises it, each byte one character (aggregator.mapping.key_fields makes the
 * same string). A string, not bytes: the open bucket's dict looks up string keys faster. */
static PyObject *connection_name(const Span *strings, const uint64_t *varints) {
    size_t fields = sizeof CONNECTION_FIELDS / sizeof *CONNECTION_FIELDS, most = 0;
    for (size_t i = 0; i < fields; i++) {
        most += 1 + 10 + strings[CONNECTION_FIELDS[i]].length; /* tag, varint, payload */
    }
    uint8_t on_stack[512];
    uint8_t *serialised = most <= sizeof on_stack ? on_stack : PyMem_Malloc(most);
    if (serialised == NULL) {
        return PyErr_NoMemory();
    }
    uint8_t *out = serialised;
    for (size_t i = 0; i < fields; i++) {
        int number = CONNECTION_FIELDS[i];
        if (number == KEY_DEST_PORT && varints[number]) {
            *out++ = (uint8_t)(number << 3);
            out = write_varint(out, varints[number]);
        } else if (number != KEY_DEST_PORT && strings[number].length) {
            *out++ = (uint8_t)(number << 3 | 2);
            out = write_varint(out, strings[number].length);
            memcpy(out, strings[number].data, strings[number].length);
            out += strings[number].length;
        }
    }
    PyObject *name =
        PyUnicode_DecodeLatin1((const char *)serialised, (Py_ssize_t)(out - serialised), NULL);
    if (serialised != on_stack) {
        PyMem_Free(serialised);
    }
    return name;
}

static PyObject *decode_string(Span value) {
    return PyUnicode_DecodeUTF8((const char *)value.data, (Py_ssize_t)value.length, NULL);
}

/* An enum as protobuf reads it: the varint's low 32 bits, signed. */
static PyObject *enum_value(uint64_t varint) {
    return PyLong_FromLong((long)(int32_t)(uint32_t)varint);
}

static PyObject *read_key(PyObject *Py_UNUSED(module), PyObject *key) {
    Py_buffer view;
    if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Span strings[KEY_FIELDS] = {{NULL, 0}};
    uint64_t varints[KEY_FIELDS] = {0};
    const uint8_t *data = view.buf;
    PyObject *fields;
    if (read_message(data, data + view.len, &FLOW_KEY, 0, strings, varints)) {
        PyObject *items[] = {
            decode_string(strings[KEY_SOURCE_NAMESPACE]),
            decode_string(strings[KEY_DEST_NAMESPACE]),
            enum_value(varints[KEY_REPORTER]),
            enum_value(varints[KEY_ACTION]),
            connection_name(strings, varints),
        };
        fields = tuple_of(items, sizeof items / sizeof *items);
    } else {
        fields = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return fields;
}

/* --- KeyTable: serialised FlowKey -> verdict, looked up by the key's bytes in place --------
 *
 * A dict would need a bytes object per lookup (an allocation and a copy of a ~140-byte key)
 * and SipHash over it; together they cost about as much as the rest of count_known. This
 * table hashes the key where it lies in the message, with a multiply-fold hash whose every
 * constant comes from a random seed (with a known constant, a word equal to it would zero
 * the product and the hash state with it, so that keys made to collide under any seed are
 * easy to write), and compares the bytes on a hash match. Open addressing, linear probing,
 * at most half full.
 */

typedef struct {
    uint64_t hash;
    PyObject *key;   /* bytes, owned; NULL in an empty slot */
    PyObject *value; /* owned */
} KeyEntry;

typedef struct {
    PyObject_HEAD
    KeyEntry *entries;
    size_t capacity; /* a power of two */
    Py_ssize_t used;
    uint64_t secrets[3]; /* from the seed */
} KeyTable;

#define KEY_TABLE_MIN_CAPACITY 64

static inline uint64_t fold_multiply(uint64_t a, uint64_t b) {
#ifdef __SIZEOF_INT128__
    __uint128_t product = (__uint128_t)a * b;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
#else
    uint64_t a_low = (uint32_t)a, a_high = a >> 32, b_low = (uint32_t)b, b_high = b >> 32;
    uint64_t cross = a_high * b_low + ((a_low * b_low) >> 32);
    uint64_t middle = (uint32_t)cross + a_low * b_high;
    uint64_t high = a_high * b_high + (cross >> 32) + (middle >> 32);
    return (a * b) ^ high;
#endif
}

/* SplitMix64's output function: a bijection that spreads every bit of its input. */
static uint64_t split_mix(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t hash_key(const uint8_t *p, Py_ssize_t length, const uint64_t *secrets) {
    uint64_t hash = secrets[0];
    Py_ssize_t left = length;
    for (; left >= 16; left -= 16, p += 16) {
        hash = fold_multiply(read_word(p) ^ secrets[1], read_word(p + 8) ^ hash);
    }
    uint8_t tail[16] = {0};
    memcpy(tail, p, (size_t)left);
    hash = fold_multiply(read_word(tail) ^ secrets[2], read_word(tail + 8) ^ hash);
    return fold_multiply(hash ^ secrets[1], (uint64_t)length ^ secrets[2]);
}

/* The entry that holds the key, or the empty slot where it would go. */
static KeyEntry *key_table_find(const KeyTable *table, const uint8_t *key, Py_ssize_t length,
                                uint64_t hash) {
    size_t mask = table->capacity - 1;
    for (size_t slot = (size_t)hash & mask;; slot = (slot + 1) & mask) {
        KeyEntry *entry = &table->entries[slot];
        if (entry->key == NULL ||
            (entry->hash == hash && PyBytes_GET_SIZE(entry->key) == length &&
             memcmp(PyBytes_AS_STRING(entry->key), key, (size_t)length) == 0)) {
            return entry;
        }
    }
}

static int key_table_allocate(KeyTable *table, size_t capacity) {
    KeyEntry *entries = PyMem_Calloc(capacity, sizeof(KeyEntry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    table->entries = entries;
    table->capacity = capacity;
    return 0;
}

static int key_table_grow(KeyTable *table) {
    KeyEntry *old = table->entries;
    size_t old_capacity = table->capacity;
    if (key_table_allocate(table, old_capacity * 2) < 0) {
        return -1;
    }
    for (size_t slot = 0; slot < old_capacity; slot++) {
        if (old[slot].key != NULL) {
            size_t mask = table->capacity - 1, to = (size_t)old[slot].hash & mask;
            while (table->entries[to].key != NULL) {
                to = (to + 1) & mask;
            }
            table->entries[to] = old[slot];
        }
    }
    PyMem_Free(old);
    return 0;
}

static PyObject *key_table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"seed", NULL};
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "K:KeyTable", keywords, &seed)) {
        return NULL;
    }
    KeyTable *table = (KeyTable *)type->tp_alloc(type, 0);
    if (table == NULL) {
        return NULL;
    }
    uint64_t state = seed;
    for (int i = 0; i < 3; i++) {
        table->secrets[i] = split_mix(&state);
    }
    if (key_table_allocate(table, KEY_TABLE_MIN_CAPACITY) < 0) {
        Py_DECREF(table);
        return NULL;
    }
    return (PyObject *)table;
}

/* Puts `fresh` (empty) in place of the table's entries, then drops the old ones: a finalizer
 * that a drop runs sees an empty table that works, as with a dict. */
static void key_table_replace(KeyTable *table, KeyEntry *fresh, size_t capacity) {
    KeyEntry *old = table->entries;
    size_t old_capacity = table->capacity;
    table->entries = fresh;
    table->capacity = capacity;
    table->used = 0;
    for (size_t slot = 0; old != NULL && slot < old_capacity; slot++) {
        Py_XDECREF(old[slot].key);
        Py_XDECREF(old[slot].value);
    }
    PyMem_Free(old);
}

/* Empties the table into a new minimal one; -1 (nothing dropped) when there is no memory. */
static int key_table_empty(KeyTable *table) {
    KeyEntry *fresh = PyMem_Calloc(KEY_TABLE_MIN_CAPACITY, sizeof(KeyEntry));
    if (fresh == NULL) {
        return -1;
    }
    key_table_replace(table, fresh, KEY_TABLE_MIN_CAPACITY);
    return 0;
}

/* Keys are exact bytes (a copy is kept of a subclass): only values can lead to a cycle. */
static int key_table_traverse(KeyTable *table, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(table));
    for (size_t slot = 0; table->entries != NULL && slot < table->capacity; slot++) {
        Py_VISIT(table->entries[slot].value);
    }
    return 0;
}

static int key_table_tp_clear(KeyTable *table) {
    /* Without memory, the cycle stays for a later collection to break. */
    key_table_empty(table);
    return 0;
}

static void key_table_dealloc(KeyTable *table) {
    PyTypeObject *type = Py_TYPE(table);
    PyObject_GC_UnTrack(table);
    key_table_replace(table, NULL, 0);
    type->tp_free(table);
    Py_DECREF(type);
}

static int key_of(PyObject *key, const uint8_t **data, Py_ssize_t *length) {
    if (!PyBytes_Check(key)) {
        PyErr_Format(PyExc_TypeError, "a KeyTable key is bytes, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    *data = (const uint8_t *)PyBytes_AS_STRING(key);
    *length = PyBytes_GET_SIZE(key);
    return 0;
}

/* The value of `key`, borrowed, or NULL (with no error set) when the table does not hold it. */
static PyObject *key_table_lookup(const KeyTable *table, const uint8_t *key, Py_ssize_t length) {
    return key_table_find(table, key, length, hash_key(key, length, table->secrets))->value;
}

static PyObject *key_table_get(KeyTable *table, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    const uint8_t *key;
    Py_ssize_t length;
    if (key_of(args[0], &key, &length) < 0) {
        return NULL;
    }
    PyObject *value = key_table_lookup(table, key, length);
    return Py_NewRef(value != NULL ? value : nargs == 2 ? args[1] : Py_None);
}

static PyObject *key_table_clear(KeyTable *table, PyObject *Py_UNUSED(ignored)) {
    if (key_table_empty(table) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static Py_ssize_t key_table_length(KeyTable *table) { return table->used; }

static int key_table_contains(KeyTable *table, PyObject *key_object) {
    const uint8_t *key;
    Py_ssize_t length;
    if (key_of(key_object, &key, &length) < 0) {
        return -1;
    }
    return key_table_lookup(table, key, length) != NULL;
}

static PyObject *key_table_subscript(KeyTable *table, PyObject *key_object) {
    const uint8_t *key;
    Py_ssize_t length;
    if (key_of(key_object, &key, &length) < 0) {
        return NULL;
    }
    PyObject *value = key_table_lookup(table, key, length);
    if (value == NULL) {
        PyErr_SetObject(PyExc_KeyError, key_object);
        return NULL;
    }
    return Py_NewRef(value);
}

static int key_table_assign(KeyTable *table, PyObject *key_object, PyObject *value) {
    const uint8_t *key;
    Py_ssize_t length;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "a KeyTable forgets all its keys at once: clear()");
        return -1;
    }
    if (key_of(key_object, &key, &length) < 0) {
        return -1;
    }
    /* Made before the slot is found, so that nothing runs between finding it and filling it. */
    PyObject *stored_key = PyBytes_CheckExact(key_object)
                               ? Py_NewRef(key_object)
                               : PyBytes_FromStringAndSize((const char *)key, length);
    if (stored_key == NULL) {
        return -1;
    }
    if ((size_t)(table->used + 1) * 2 > table->capacity && key_table_grow(table) < 0) {
        Py_DECREF(stored_key);
        return -1;
    }
    uint64_t hash = hash_key(key, length, table->secrets);
    KeyEntry *entry = key_table_find(table, key, length, hash);
    if (entry->key == NULL) {
        entry->key = stored_key;
        entry->hash = hash;
        entry->value = Py_NewRef(value);
        table->used++;
    } else {
        Py_DECREF(stored_key);
        Py_SETREF(entry->value, Py_NewRef(value));
    }
    return 0;
}

static PyMethodDef key_table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))key_table_get, METH_FASTCALL,
     "get(key, default=None): the verdict of a serialised FlowKey, or default."},
    {"clear", (PyCFunction)key_table_clear, METH_NOARGS, "Forget every key."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot key_table_slots[] = {
    {Py_tp_doc, "KeyTable(seed): serialised FlowKey -> verdict, for count_known (see "
                "aggregator.hotpath)."},
    {Py_tp_new, key_table_new},
    {Py_tp_dealloc, key_table_dealloc},
    {Py_tp_traverse, key_table_traverse},
    {Py_tp_clear, key_table_tp_clear},
    {Py_tp_methods, key_table_methods},
    {Py_mp_length, key_table_length},
    {Py_mp_subscript, key_table_subscript},
    {Py_mp_ass_subscript, key_table_assign},
    {Py_sq_contains, key_table_contains},
    {0, NULL},
};

static PyType_Spec key_table_spec = {
    .name = "aggregator._hotpath.KeyTable",
    .basicsize = sizeof(KeyTable),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = key_table_slots,
};

/* Made at import from key_table_spec; count_known checks its argument against it. */
static PyTypeObject *key_table_type;

/* counts[key] += 1, from 0 where the key is new. Returns 1 where it was new, 0 where it was
 * not, -1 on an error. */
static int increment(PyObject *counts, PyObject *key) {
    PyObject *count = PyDict_GetItemWithError(counts, key);
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
    int status = PyDict_SetItem(counts, key, next);
    Py_DECREF(next);
    return status < 0 ? -1 : count == NULL;
}

/* --- Connection: a connection's place in the open bucket ---------------------------------
 *
 * Keeping each connection's highest verdict in a dict keyed by its name cost a lookup per
 * result, and sealing the bucket went through that dict again. Every flow key of a connection
 * shares one Connection (the buffer sees to it), so a result's verdict leads straight to it:
 * the open bucket's generation in it says whether the bucket has counted it yet, and `best`
 * holds the highest verdict it reported there. The bucket keeps the list of its Connections.
 */

typedef struct {
    PyObject_HEAD
    PyObject *name;                 /* str: mapping.key_fields's name of the connection */
    PyObject *best;                 /* the highest KeyVerdict of its generation, or NULL */
    unsigned long long generation;  /* the open bucket that counted it last; 0 for none */
} Connection;

static PyMemberDef connection_members[] = {
    {"name", T_OBJECT, offsetof(Connection, name), READONLY, "The connection's name."},
    {"best", T_OBJECT, offsetof(Connection, best), 0,
     "The highest verdict it reported in bucket `generation`, or None."},
    {"generation", T_ULONGLONG, offsetof(Connection, generation), 0,
     "The open bucket that counted it last (0: none)."},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *connection_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"name", NULL};
    PyObject *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:Connection", keywords, &name)) {
        return NULL;
    }
    Connection *connection = (Connection *)type->tp_alloc(type, 0);
    if (connection != NULL) {
        connection->name = Py_NewRef(name);
    }
    return (PyObject *)connection;
}

/* A verdict refers to its Connection, which may hold that verdict as its best: a cycle. */
static int connection_traverse(Connection *connection, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(connection));
    Py_VISIT(connection->best);
    return 0;
}

static int connection_clear(Connection *connection) {
    Py_CLEAR(connection->best);
    return 0;
}

static void connection_dealloc(Connection *connection) {
    PyTypeObject *type = Py_TYPE(connection);
    PyObject_GC_UnTrack(connection);
    Py_CLEAR(connection->best);
    Py_CLEAR(connection->name);
    type->tp_free(connection);
    Py_DECREF(type);
}

static PyObject *connection_repr(Connection *connection) {
    return PyUnicode_FromFormat("Connection(%R)", connection->name);
}

static PyType_Slot connection_slots[] = {
    {Py_tp_doc, "Connection(name): a connection's place in the open bucket (see "
                "aggregator.hotpath)."},
    {Py_tp_new, connection_new},
    {Py_tp_dealloc, connection_dealloc},
    {Py_tp_traverse, connection_traverse},
    {Py_tp_clear, connection_clear},
    {Py_tp_members, connection_members},
    {Py_tp_repr, connection_repr},
    {0, NULL},
};

static PyType_Spec connection_spec = {
    .name = "aggregator._hotpath.Connection",
    .basicsize = sizeof(Connection),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = connection_slots,
};

/* Made at import from connection_spec. */
static PyTypeObject *connection_type;

/* A KeyVerdict's rank, or -1 (with an error set) where it is not a KeyVerdict. */
static long rank_of_verdict(PyObject *verdict) {
    if (!PyTuple_Check(verdict) || PyTuple_GET_SIZE(verdict) < 2) {
        PyErr_SetString(PyExc_TypeError, "a KeyVerdict has a connection and a rank");
        return -1;
    }
    return PyLong_AsLong(PyTuple_GET_ITEM(verdict, 1));
}

/* Counts `verdict` in bucket `generation`: its Connection joins `counted` the first time, and
 * keeps the verdict of the highest rank. See aggregator.hotpath.keep_highest. */
static int keep_highest(PyObject *verdict, unsigned long long generation, PyObject *counted) {
    PyObject *item = PyTuple_GET_SIZE(verdict) >= 2 ? PyTuple_GET_ITEM(verdict, 0) : NULL;
    if (item == NULL || !Py_IS_TYPE(item, connection_type)) {
        PyErr_SetString(PyExc_TypeError, "a KeyVerdict's connection is a Connection");
        return -1;
    }
    Connection *connection = (Connection *)item;
    if (connection->generation != generation) {
        if (PyList_Append(counted, item) < 0) {
            return -1;
        }
        connection->generation = generation;
        Py_XSETREF(connection->best, Py_NewRef(verdict));
        return 0;
    }
    PyObject *best = connection->best;
    if (best == verdict) {
        return 0; /* the same key again */
    }
    if (best != NULL && best != Py_None) {
        long best_rank = rank_of_verdict(best), rank = rank_of_verdict(verdict);
        if ((best_rank == -1 || rank == -1) && PyErr_Occurred()) {
            return -1;
        }
        if (best_rank >= rank) {
            return 0;
        }
    }
    Py_XSETREF(connection->best, Py_NewRef(verdict));
    return 0;
}

/* --- count_known's lookahead ------------------------------------------------------------
 *
 * A known key's count follows four pointers: its slot in the table, the stored key it is
 * compared with, its verdict, and the verdict's Connection. Between two batches gRPC's own
 * work pushes all of these out of the caches, and fetching each from memory in turn cost more
 * time than the instructions around it. So count_known reads results ahead of the one it
 * counts and asks the CPU to fetch what that one will need: its slot 8 results ahead, then
 * the slot's key and verdict, then the Connection. A prefetch is only a hint: the count
 * itself looks everything up as before.
 */

#define LOOKAHEAD 8 /* results read ahead; the ring below holds them */
#define RING 16     /* a power of two above LOOKAHEAD */
_Static_assert(RING > LOOKAHEAD && (RING & (RING - 1)) == 0, "the ring holds the lookahead");

#if defined(__GNUC__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

typedef struct {
    PyObject *data; /* the result, a reference held while its key is pointed into */
    const uint8_t *key;
    Py_ssize_t key_length;
    int64_t times[2];
    uint64_t hash;
    int simple; /* within max_bytes and parse_head reads it */
} Head;

/* Reads one result's head and asks for its slot. */
static void read_ahead(const KeyTable *table, PyObject *data, Py_ssize_t max_bytes, Head *head) {
    head->data = Py_NewRef(data);
    head->simple = PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) <= max_bytes &&
                   parse_head((const uint8_t *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                              &head->key, &head->key_length, head->times);
    if (head->simple) {
        head->hash = hash_key(head->key, head->key_length, table->secrets);
        PREFETCH(&table->entries[(size_t)head->hash & (table->capacity - 1)]);
    }
}

/* The entry whose hash is the head's, in its first slot (where most keys are), or NULL. */
static const KeyEntry *first_entry(const KeyTable *table, const Head *head) {
    if (!head->simple) {
        return NULL;
    }
    const KeyEntry *entry = &table->entries[(size_t)head->hash & (table->capacity - 1)];
    return entry->key != NULL && entry->hash == head->hash ? entry : NULL;
}

/* Asks for the stored key and the verdict of a head whose slot has arrived. */
static void fetch_entry(const KeyTable *table, const Head *head) {
    const KeyEntry *entry = first_entry(table, head);
    if (entry != NULL) {
        const char *stored = PyBytes_AS_STRING(entry->key);
        for (Py_ssize_t at = 0; at < head->key_length; at += 64) {
            PREFETCH(stored + at);
        }
        PREFETCH(entry->value);
    }
}

/* Asks for the Connection of a head whose verdict has arrived. */
static void fetch_connection(const KeyTable *table, const Head *head) {
    const KeyEntry *entry = first_entry(table, head);
    if (entry != NULL && PyTuple_Check(entry->value) && PyTuple_GET_SIZE(entry->value) >= 1) {
        PREFETCH(PyTuple_GET_ITEM(entry->value, 0));
    }
}

static PyObject *count_known(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *batch, *verdicts, *open_start_object, *open_end_object, *counted, *skipped;
    Py_ssize_t index, max_bytes;
    unsigned long long generation;
    if (!PyArg_ParseTuple(args, "O!nO!OOKO!O!n:count_known", &PyList_Type, &batch, &index,
                          key_table_type, &verdicts, &open_start_object, &open_end_object,
                          &generation, &PyList_Type, &counted, &PyDict_Type, &skipped,
                          &max_bytes)) {
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
    if (!has_open) {
        return PyLong_FromSsize_t(index); /* no result can be counted */
    }
    const KeyTable *table = (const KeyTable *)verdicts;
    Head ring[RING];
    Py_ssize_t first = index, read = index;
    int failed = 0;
    for (; index < PyList_GET_SIZE(batch); index++) {
        Py_ssize_t size = PyList_GET_SIZE(batch);
        /* As far ahead as this call has counted, up to LOOKAHEAD: where the buffer calls again
         * after each result it could not count, each call reads little it does not count. */
        Py_ssize_t ahead = index - first < LOOKAHEAD ? index - first : LOOKAHEAD;
        for (; read < size && read <= index + ahead; read++) {
            read_ahead(table, PyList_GET_ITEM(batch, read), max_bytes, &ring[read % RING]);
        }
        if (index + LOOKAHEAD / 2 < read) {
            fetch_entry(table, &ring[(index + LOOKAHEAD / 2) % RING]);
        }
        if (index + LOOKAHEAD / 4 < read) {
            fetch_connection(table, &ring[(index + LOOKAHEAD / 4) % RING]);
        }
        const Head *head = &ring[index % RING];
        if (!head->simple) {
            break;
        }
        PyObject *verdict =
            key_table_find(table, head->key, head->key_length, head->hash)->value;
        if (verdict == NULL || head->times[0] != open_start || head->times[1] != open_end) {
            break;
        }
        if (PyTuple_Check(verdict) ? keep_highest(verdict, generation, counted) < 0
                                   : increment(skipped, verdict) < 0) {
            failed = 1;
            break;
        }
        Py_DECREF(head->data);
    }
    for (Py_ssize_t at = index; at < read; at++) { /* read ahead, not counted */
        Py_DECREF(ring[at % RING].data);
    }
    return failed ? NULL : PyLong_FromSsize_t(index);
}

/* Counts each connection of a sealed bucket once, for the edge of its highest verdict, and
 * lets go of that verdict: see aggregator.hotpath.seal_bucket_python. */
static PyObject *seal_bucket(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *counted, *start, *end, *connections, *first_seen, *last_seen, *edges;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O!O!:seal_bucket", &PyList_Type, &counted, &start, &end,
                          &PyDict_Type, &connections, &PyDict_Type, &first_seen, &PyDict_Type,
                          &last_seen, &PyDict_Type, &edges)) {
        return NULL;
    }
    /* By index, checked each time: a name's hash or comparison could run code that changes
     * the list. */
    for (Py_ssize_t position = 0; position < PyList_GET_SIZE(counted); position++) {
        PyObject *item = PyList_GET_ITEM(counted, position);
        PyObject *verdict = Py_IS_TYPE(item, connection_type) ? ((Connection *)item)->best : NULL;
        if (verdict == NULL || !PyTuple_Check(verdict) || PyTuple_GET_SIZE(verdict) < 4) {
            PyErr_SetString(PyExc_TypeError,
                            "a counted Connection holds a KeyVerdict: a connection, a rank and "
                            "an edge");
            return NULL;
        }
        /* Taken from the Connection, which holds it no more once it is counted. */
        ((Connection *)item)->best = NULL;
        PyObject *edge = PyTuple_GET_ITEM(verdict, 2), *edge_name = PyTuple_GET_ITEM(verdict, 3);
        int is_new = increment(connections, edge_name);
        int failed = is_new < 0;
        if (is_new == 1) {
            failed = PyDict_SetItem(first_seen, edge_name, start) < 0 ||
                     PyDict_SetItem(edges, edge_name, edge) < 0;
        }
        failed = failed || PyDict_SetItem(last_seen, edge_name, end) < 0;
        Py_DECREF(verdict);
        if (failed) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"flow_head", flow_head, METH_O,
     "(key, start_time, end_time) of a serialised FlowResult, or None: see aggregator.hotpath."},
    {"read_key", read_key, METH_O,
     "What the trail reads of a serialised FlowKey, or None: see aggregator.hotpath."},
    {"count_known", count_known, METH_VARARGS,
     "Count a run of simple results: see aggregator.hotpath.count_known_python."},
    {"seal_bucket", seal_bucket, METH_VARARGS,
     "Count a sealed bucket's connections: see aggregator.hotpath.seal_bucket_python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "aggregator._hotpath",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__hotpath(void) {
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) {
        return NULL;
    }
    key_table_type = (PyTypeObject *)PyType_FromSpec(&key_table_spec);
    connection_type = (PyTypeObject *)PyType_FromSpec(&connection_spec);
    if (key_table_type == NULL || connection_type == NULL ||
        PyModule_AddObjectRef(created, "KeyTable", (PyObject *)key_table_type) < 0 ||
        PyModule_AddObjectRef(created, "Connection", (PyObject *)connection_type) < 0) {
        Py_CLEAR(key_table_type);
        Py_CLEAR(connection_type);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
