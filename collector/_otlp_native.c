/* OTLP trace export (protobuf bytes) -> Arrow column buffers of the `spans` table.
 *
 * The native twin of `Normaliser.traces` (collector/_normalise.py), which stays the reference:
 * a property test holds the two equal, byte for byte, on every request this module accepts.
 *
 * The rule that keeps it small and safe: it handles the clean, common request and DECLINES
 * everything else (returns a reason string) -- malformed or truncated protobuf, invalid UTF-8,
 * a rejected span (bad ids, missing or future start), a value whose type is not its field's,
 * negative or huge token counts, kvlist values, duplicate attribute keys, an attribute over
 * the size limit, more attributes, spans or records than the limits allow (counted while
 * scanning: it stops at the first one over), a resource too big for its spans.  The caller
 * then takes the reference path, which produces the right error, rejection or row.
 * Declining is always correct; accepting must be exact.  Fuzzed under ASan/UBSan: fuzz/.
 *
 * Wire format: https://protobuf.dev/programming-guides/encoding/ .  Field numbers are those of
 * opentelemetry-proto (trace/v1, common/v1, resource/v1).  Where protobuf would merge two
 * occurrences of a singular message field, this module declines.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OK 0
#define ERR (-1)
#define BAIL 1

/* The declined reason of the current call (static strings only). */
struct Config;
typedef struct {
    const char *reason;
    struct Config *cfg;
} Ctx;

static int bail(Ctx *ctx, const char *reason) {
    if (ctx->reason == NULL) ctx->reason = reason;
    return BAIL;
}

#define TRY(expr)                      \
    do {                               \
        int _rc = (expr);              \
        if (_rc != OK) return _rc;     \
    } while (0)

/* ---------------------------------------------------------------------------------------- */
/* Growable byte buffer                                                                      */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    size_t need = b->n + extra;
    if (need <= b->cap) return OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *q = PyMem_Realloc(b->p, cap);
    if (q == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    b->p = q;
    b->cap = cap;
    return OK;
}

static inline int buf_put(Buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) TRY(buf_reserve(b, n));
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
    return OK;
}

static inline int buf_putc(Buf *b, char c) {
    if (b->n + 1 > b->cap) TRY(buf_reserve(b, 1));
    b->p[b->n++] = c;
    return OK;
}

static inline int buf_puts(Buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

static void buf_free(Buf *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Protobuf reader                                                                           */

typedef struct {
    const uint8_t *p, *end;
} Rd;

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

static inline int rd_varint(Ctx *ctx, Rd *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return bail(ctx, "truncated varint");
        uint8_t byte = *r->p++;
        if (shift == 63 && (byte & 0x7E)) return bail(ctx, "varint over 64 bits");
        v |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return bail(ctx, "varint longer than 10 bytes");
}

static inline int rd_tag(Ctx *ctx, Rd *r, uint32_t *field, int *wt) {
    uint64_t tag;
    TRY(rd_varint(ctx, r, &tag));
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 536870911u) return bail(ctx, "invalid field number");
    return OK;
}

static inline int rd_len(Ctx *ctx, Rd *r, Rd *sub) {
    uint64_t n;
    TRY(rd_varint(ctx, r, &n));
    if (n > (uint64_t)(r->end - r->p)) return bail(ctx, "truncated length-delimited field");
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return OK;
}

static inline int rd_fixed64(Ctx *ctx, Rd *r, uint64_t *out) {
    if (r->end - r->p < 8) return bail(ctx, "truncated fixed64");
    memcpy(out, r->p, 8); /* little-endian hosts only (checked at import) */
    r->p += 8;
    return OK;
}

static int rd_skip(Ctx *ctx, Rd *r, int wt) {
    uint64_t v;
    Rd sub;
    switch (wt) {
        case WT_VARINT:
            return rd_varint(ctx, r, &v);
        case WT_I64:
            if (r->end - r->p < 8) return bail(ctx, "truncated fixed64");
            r->p += 8;
            return OK;
        case WT_LEN:
            return rd_len(ctx, r, &sub);
        case WT_I32:
            if (r->end - r->p < 4) return bail(ctx, "truncated fixed32");
            r->p += 4;
            return OK;
        default:
            return bail(ctx, "group or invalid wire type");
    }
}

/* ---------------------------------------------------------------------------------------- */
/* UTF-8 (protobuf `string` fields must hold valid UTF-8; upb refuses the request otherwise)  */

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            uint8_t cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

static inline int check_utf8(Ctx *ctx, const uint8_t *s, size_t n) {
    return utf8_valid(s, n) ? OK : bail(ctx, "invalid UTF-8");
}

/* ---------------------------------------------------------------------------------------- */
/* Validation of the parts the normaliser does not read (events, links, scope, entity refs):  */
/* their strings must still be valid UTF-8 and their framing sound, as upb would check.       */

typedef struct Schema Schema;
typedef struct {
    uint8_t kind; /* 0: end of list, 1: string, 2: message */
    uint8_t field;
    const Schema *sub;
} FieldSpec;
struct Schema {
    FieldSpec fields[8];
};

static const Schema S_ANYVALUE, S_KEYVALUE;
static const Schema S_ARRAY = {{{2, 1, &S_ANYVALUE}}};
static const Schema S_KVLIST = {{{2, 1, &S_KEYVALUE}}};
static const Schema S_ANYVALUE = {{{1, 1, NULL}, {2, 5, &S_ARRAY}, {2, 6, &S_KVLIST}}};
static const Schema S_KEYVALUE = {{{1, 1, NULL}, {2, 2, &S_ANYVALUE}}};
static const Schema S_EVENT = {{{1, 2, NULL}, {2, 3, &S_KEYVALUE}}};
static const Schema S_LINK = {{{1, 3, NULL}, {2, 4, &S_KEYVALUE}}};
static const Schema S_SCOPE = {{{1, 1, NULL}, {1, 2, NULL}, {2, 3, &S_KEYVALUE}}};
static const Schema S_ENTITY = {{{1, 1, NULL}, {1, 2, NULL}, {1, 3, NULL}, {1, 4, NULL}}};

static int validate(Ctx *ctx, Rd r, const Schema *schema, int depth) {
    if (depth > 64) return bail(ctx, "nesting deeper than 64");
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        TRY(rd_tag(ctx, &r, &field, &wt));
        const FieldSpec *spec = NULL;
        for (const FieldSpec *f = schema->fields; f->kind; f++)
            if (f->field == field) {
                spec = f;
                break;
            }
        if (spec == NULL) {
            TRY(rd_skip(ctx, &r, wt));
            continue;
        }
        if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
        Rd sub;
        TRY(rd_len(ctx, &r, &sub));
        if (spec->kind == 1)
            TRY(check_utf8(ctx, sub.p, (size_t)(sub.end - sub.p)));
        else
            TRY(validate(ctx, sub, spec->sub, depth + 1));
    }
    return OK;
}

/* ---------------------------------------------------------------------------------------- */
/* AnyValue                                                                                  */

enum { V_NONE = 0, V_STR, V_BOOL, V_INT, V_DOUBLE, V_ARRAY, V_KVLIST, V_BYTES };

typedef struct {
    int type;
    const uint8_t *p; /* STR, BYTES, ARRAY: the payload */
    size_t n;
    int64_t i; /* BOOL, INT */
    double d;
} AnyV;

static int parse_anyvalue(Ctx *ctx, Rd r, AnyV *v) {
    int seen = 0;
    v->type = V_NONE;
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        uint64_t u;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        switch (field) {
            case 1:
            case 5:
            case 6:
            case 7:
                if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
                TRY(rd_len(ctx, &r, &sub));
                v->p = sub.p;
                v->n = (size_t)(sub.end - sub.p);
                v->type = field == 1 ? V_STR : field == 5 ? V_ARRAY : field == 6 ? V_KVLIST : V_BYTES;
                if (field == 1) TRY(check_utf8(ctx, v->p, v->n));
                /* upb refuses a request whose array is malformed even where nobody reads it
                   (a usage record's attribute we do not land): check it here, not only when
                   it is written out as JSON. */
                if (field == 5) TRY(validate(ctx, sub, &S_ARRAY, 1));
                break;
            case 2:
            case 3:
                if (wt != WT_VARINT) return bail(ctx, "unexpected wire type");
                TRY(rd_varint(ctx, &r, &u));
                v->type = field == 2 ? V_BOOL : V_INT;
                v->i = field == 2 ? (u != 0) : (int64_t)u;
                break;
            case 4:
                if (wt != WT_I64) return bail(ctx, "unexpected wire type");
                TRY(rd_fixed64(ctx, &r, &u));
                memcpy(&v->d, &u, 8);
                v->type = V_DOUBLE;
                break;
            case 8:
                return bail(ctx, "string_value_strindex");
            default:
                TRY(rd_skip(ctx, &r, wt));
                continue;
        }
        /* A oneof set twice keeps the last (and merges messages): leave it to upb. */
        if (++seen > 1) return bail(ctx, "AnyValue with two values");
    }
    if (v->type == V_KVLIST) return bail(ctx, "kvlist value");
    return OK;
}

/* ---------------------------------------------------------------------------------------- */
/* JSON, written exactly as orjson writes what the reference normaliser builds               */

static const char HEX[] = "0123456789abcdef";

static int json_string(Buf *b, const uint8_t *s, size_t n) {
    TRY(buf_reserve(b, n + 2));
    b->p[b->n++] = '"';
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        TRY(buf_put(b, s + start, i - start));
        char esc[7];
        size_t len = 2;
        esc[0] = '\\';
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\n': esc[1] = 'n'; break;
            case '\t': esc[1] = 't'; break;
            case '\r': esc[1] = 'r'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = HEX[c >> 4];
                esc[5] = HEX[c & 15];
                len = 6;
        }
        TRY(buf_put(b, esc, len));
        start = i + 1;
    }
    TRY(buf_put(b, s + start, n - start));
    return buf_putc(b, '"');
}

static int json_int(Buf *b, int64_t v) {
    char tmp[24];
    int len = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    return buf_put(b, tmp, (size_t)len);
}

/* Doubles are written by orjson itself (its layout of exponents changes between releases),
 * through a small cache: the same few values (temperature, top_p) recur on every span. */
#define DOUBLE_CACHE 64
typedef struct {
    uint64_t bits;
    uint8_t len; /* 0: empty */
    char text[31];
} DoubleText;

static int json_double(Ctx *ctx, Buf *b, double d);

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int json_base64(Buf *b, const uint8_t *s, size_t n) {
    TRY(buf_reserve(b, 4 * ((n + 2) / 3) + 2));
    char *o = b->p + b->n;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = B64[w >> 18];
        *o++ = B64[(w >> 12) & 63];
        *o++ = B64[(w >> 6) & 63];
        *o++ = B64[w & 63];
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)s[i] << 16;
        *o++ = B64[w >> 18];
        *o++ = B64[(w >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *o++ = B64[w >> 18];
        *o++ = B64[(w >> 12) & 63];
        *o++ = B64[(w >> 6) & 63];
        *o++ = '=';
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    return OK;
}

static int json_value(Ctx *ctx, Buf *b, const AnyV *v, int depth);

/* The next length-delimited field numbered `want` of `r` (a repeated message field),
 * skipping the others; *more is 0 past the last. */
static int next_message(Ctx *ctx, Rd *r, uint32_t want, Rd *sub, int *more) {
    while (r->p < r->end) {
        uint32_t field;
        int wt;
        TRY(rd_tag(ctx, r, &field, &wt));
        if (field != want) {
            TRY(rd_skip(ctx, r, wt));
            continue;
        }
        if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
        *more = 1;
        return rd_len(ctx, r, sub);
    }
    *more = 0;
    return OK;
}

/* The next value of an ArrayValue (its repeated field 1); *more is 0 past the last. */
static int array_next(Ctx *ctx, Rd *r, AnyV *item, int *more) {
    Rd sub;
    TRY(next_message(ctx, r, 1, &sub, more));
    return *more ? parse_anyvalue(ctx, sub, item) : OK;
}

static int json_array(Ctx *ctx, Buf *b, const AnyV *v, int depth) {
    if (depth > 32) return bail(ctx, "array nested deeper than 32");
    Rd r = {v->p, v->p + v->n};
    int first = 1, more;
    TRY(buf_putc(b, '['));
    for (;;) {
        AnyV item;
        TRY(array_next(ctx, &r, &item, &more));
        if (!more) break;
        if (!first) TRY(buf_putc(b, ','));
        first = 0;
        TRY(json_value(ctx, b, &item, depth + 1));
    }
    return buf_putc(b, ']');
}

static int json_value(Ctx *ctx, Buf *b, const AnyV *v, int depth) {
    switch (v->type) {
        case V_STR: return json_string(b, v->p, v->n);
        case V_BOOL: return buf_puts(b, v->i ? "true" : "false");
        case V_INT: return json_int(b, v->i);
        case V_DOUBLE: return json_double(ctx, b, v->d);
        case V_ARRAY: return json_array(ctx, b, v, depth);
        case V_BYTES: return json_base64(b, v->p, v->n);
        case V_NONE: return buf_puts(b, "null");
        default: return bail(ctx, "kvlist value");
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Arrow columns                                                                             */

enum { C_STR = 0, C_I64, C_I32, C_F64, C_BOOL, C_LSTR };

typedef struct {
    int kind;
    Py_ssize_t length, nulls;
    Buf valid; /* one byte per row, packed on export */
    Buf data;  /* values, or int32 offsets (STR, LSTR) */
    Buf chars; /* STR: characters; LSTR: the child's int32 offsets */
    Buf child; /* LSTR: the child's characters */
    Py_ssize_t child_len;
} Col;

static int col_init(Col *c, int kind) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    if (kind == C_STR || kind == C_LSTR) {
        int32_t zero = 0;
        TRY(buf_put(&c->data, &zero, 4));
        if (kind == C_LSTR) TRY(buf_put(&c->chars, &zero, 4));
    }
    return OK;
}

static void col_free(Col *c) {
    buf_free(&c->valid);
    buf_free(&c->data);
    buf_free(&c->chars);
    buf_free(&c->child);
}

static inline int col_valid(Col *c, int ok) {
    c->length++;
    if (!ok) c->nulls++;
    return buf_putc(&c->valid, (char)(ok ? 1 : 0));
}

static inline int col_offset(Ctx *ctx, Buf *offsets, size_t at) {
    if (at > INT32_MAX) return bail(ctx, "column over 2 GiB");
    int32_t o = (int32_t)at;
    return buf_put(offsets, &o, 4);
}

/* The STR column's characters were written to c->chars: close the value. */
static inline int col_str_end(Ctx *ctx, Col *c) {
    TRY(col_offset(ctx, &c->data, c->chars.n));
    return col_valid(c, 1);
}

static inline int col_str(Ctx *ctx, Col *c, const void *s, size_t n) {
    TRY(buf_put(&c->chars, s, n));
    return col_str_end(ctx, c);
}

static inline int col_cstr(Ctx *ctx, Col *c, const char *s) {
    if (s == NULL) {
        TRY(col_offset(ctx, &c->data, c->chars.n));
        return col_valid(c, 0);
    }
    return col_str(ctx, c, s, strlen(s));
}

static int col_null(Ctx *ctx, Col *c) {
    switch (c->kind) {
        case C_STR:
            TRY(col_offset(ctx, &c->data, c->chars.n));
            break;
        case C_LSTR:
            TRY(col_offset(ctx, &c->data, (size_t)c->child_len));
            break;
        case C_I64: {
            int64_t z = 0;
            TRY(buf_put(&c->data, &z, 8));
            break;
        }
        case C_F64: {
            double z = 0;
            TRY(buf_put(&c->data, &z, 8));
            break;
        }
        case C_I32: {
            int32_t z = 0;
            TRY(buf_put(&c->data, &z, 4));
            break;
        }
        case C_BOOL:
            TRY(buf_putc(&c->data, 0));
            break;
    }
    return col_valid(c, 0);
}

static inline int col_i64(Col *c, int64_t v) {
    TRY(buf_put(&c->data, &v, 8));
    return col_valid(c, 1);
}

static inline int col_i32(Col *c, int32_t v) {
    TRY(buf_put(&c->data, &v, 4));
    return col_valid(c, 1);
}

static inline int col_f64(Col *c, double v) {
    TRY(buf_put(&c->data, &v, 8));
    return col_valid(c, 1);
}

static inline int col_bool(Col *c, int v) {
    TRY(buf_putc(&c->data, (char)(v ? 1 : 0)));
    return col_valid(c, 1);
}

/* Optional values of the field table. */
static inline int col_opt_i64(Ctx *ctx, Col *c, int has, int64_t v) {
    return has ? col_i64(c, v) : col_null(ctx, c);
}

static inline int col_opt_i32(Ctx *ctx, Col *c, int has, int64_t v) {
    if (!has) return col_null(ctx, c);
    if (v < INT32_MIN || v > INT32_MAX) return bail(ctx, "int32 field out of range");
    return col_i32(c, (int32_t)v);
}

static PyObject *bytes_of(const Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->n); }

/* (kind, length, null_count, validity|None, data, chars|None, child|None) */
static PyObject *col_export(Col *c) {
    PyObject *validity = Py_None, *data = NULL, *chars = Py_None, *child = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    if (c->nulls) {
        Py_DECREF(validity);
        Py_ssize_t nbytes = (c->length + 7) / 8;
        validity = PyBytes_FromStringAndSize(NULL, nbytes);
        if (validity == NULL) goto fail;
        uint8_t *bits = (uint8_t *)PyBytes_AS_STRING(validity);
        memset(bits, 0, (size_t)nbytes);
        for (Py_ssize_t i = 0; i < c->length; i++)
            if (c->valid.p[i]) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    }
    if (c->kind == C_BOOL) {
        Py_ssize_t nbytes = (c->length + 7) / 8;
        data = PyBytes_FromStringAndSize(NULL, nbytes);
        if (data == NULL) goto fail;
        uint8_t *bits = (uint8_t *)PyBytes_AS_STRING(data);
        memset(bits, 0, (size_t)nbytes);
        for (Py_ssize_t i = 0; i < c->length; i++)
            if (c->data.p[i]) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    } else {
        data = bytes_of(&c->data);
        if (data == NULL) goto fail;
    }
    if (c->kind == C_STR || c->kind == C_LSTR) {
        Py_DECREF(chars);
        chars = bytes_of(&c->chars);
        if (chars == NULL) goto fail;
    }
    if (c->kind == C_LSTR) {
        Py_DECREF(child);
        child = bytes_of(&c->child);
        if (child == NULL) goto fail;
    }
    return Py_BuildValue("(innNNNNn)", c->kind, c->length, c->nulls, validity, data, chars, child,
                         c->child_len);
fail:
    Py_XDECREF(validity);
    Py_XDECREF(data);
    Py_XDECREF(chars);
    Py_XDECREF(child);
    return NULL;
}

/* A tuple of every column's export. */
static PyObject *export_columns(Col *cols, int n) {
    PyObject *columns = PyTuple_New(n);
    for (int k = 0; columns && k < n; k++) {
        PyObject *col = col_export(&cols[k]);
        if (col == NULL) {
            Py_CLEAR(columns);
            break;
        }
        PyTuple_SET_ITEM(columns, k, col);
    }
    return columns;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration: the alias table and the dialect rules, handed over from _aliases.py        */

/* Canonical fields, in this order (exported as FIELDS; the Python side maps names). */
enum {
    F_OPERATION = 0, F_PROVIDER, F_REQUEST_MODEL, F_RESPONSE_MODEL, F_RESPONSE_ID, F_ERROR_TYPE,
    F_SERVER, F_PURPOSE, F_TENANT, F_ORG, F_CONTEXT, F_PROFILE_ID, F_OUTCOME, F_SEMCONV,
    F_INPUT, F_OUTPUT, F_CACHE_READ, F_CACHE_WRITE, F_REASONING, F_PROFILE_VERSION, F_ATTEMPT,
    F_FALLBACK, N_FIELDS
};
#define FIRST_INT_FIELD F_INPUT
#define N_TOKEN_FIELDS 5
static const char *FIELD_NAMES[N_FIELDS] = {
    "operation", "provider", "request_model", "response_model", "response_id", "error_type",
    "server_address", "purpose", "tenant", "org", "context", "profile_id", "outcome",
    "semconv_version", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "profile_version", "attempt", "fallback_depth"};

/* The attributes a usage record is read by directly (LOG_KEYS, in this order). */
enum {
    L_USAGE_ID = 0, L_COST, L_PRICE_SOURCE, L_ESTIMATED, L_OUTCOME, L_ERROR_TYPE, L_ATTEMPT,
    L_FALLBACK, L_PROFILE_ID, L_PROFILE_VERSION, L_LATENCY, L_BUDGET_CAP, L_FEE_COST, L_FEES,
    L_USER, L_SESSION, L_FEATURE, L_TAGS, L_EVENT_NAME, N_SLOTS
};
static const char *LOG_KEY_NAMES[N_SLOTS] = {
    "usage_id", "cost_usd", "price_source", "estimated", "outcome", "error_type", "attempt",
    "fallback_depth", "profile_id", "profile_version", "latency_ms", "budget_cap_usd",
    "fee_cost_usd", "fees", "user_id", "session_id", "feature", "tags", "event_name"};

#define MAX_HITS 4
#define SPECIAL_COST 1
#define SPECIAL_AGENT 2
#define SPECIAL_FINISH 4 /* + index << 4 */

typedef struct {
    char *key;
    size_t len;
    uint64_t hash;
    int nhits;
    uint8_t field[MAX_HITS];
    int32_t prio[MAX_HITS];
    int special;
    int finish_index;
    int cost_index;
    int slot; /* the log records' direct attributes (LOG_KEYS), -1 for none */
} Entry;

#define TABLE_SIZE 512 /* power of two, well over twice the names */
#define MAX_NAMED 32

typedef struct {
    char *s;
    size_t n;
} Str;

typedef struct Config {
    Entry *slots[TABLE_SIZE];
    Entry entries[TABLE_SIZE / 2];
    int nentries;
    Str markers[MAX_NAMED]; /* attribute-name prefix -> dialect (first listed wins) */
    Str marker_dialects[MAX_NAMED];
    int nmarkers;
    Str op_from[MAX_NAMED], op_to[MAX_NAMED];
    int nops;
    Str leaf[MAX_NAMED];
    int nleaf;
    Str excl_dialect[MAX_NAMED], excl_provider[MAX_NAMED];
    int nexcl;
    PyObject *scope_dialect;     /* callable: scope name -> dialect | None */
    PyObject *canonical_provider; /* callable: raw provider -> canonical | None */
    PyObject *provider_memo;     /* dict raw -> canonical (shared with the reference) */
    PyObject *dumps_double;      /* callable: float -> JSON text (orjson's) */
    PyObject *decimal_text;      /* callable: value -> canonical decimal text, None if invalid */
    DoubleText doubles[DOUBLE_CACHE];
    int64_t max_attribute_bytes;        /* of a span's attribute value */
    int64_t max_record_attribute_bytes; /* of a log record's */
    int64_t max_span_attributes, max_record_attributes; /* per span / record / resource */
    int64_t max_spans, max_records;     /* per request */
    int64_t max_resource_fanout;        /* a resource's JSON times its spans */
} Config;

static int json_double(Ctx *ctx, Buf *b, double d) {
    Config *cfg = ctx->cfg;
    uint64_t bits;
    memcpy(&bits, &d, 8);
    DoubleText *slot = &cfg->doubles[(bits ^ (bits >> 29) ^ (bits >> 47)) & (DOUBLE_CACHE - 1)];
    if (slot->len && slot->bits == bits) return buf_put(b, slot->text, slot->len);
    PyObject *f = PyFloat_FromDouble(d);
    if (f == NULL) return ERR;
    PyObject *text = PyObject_CallOneArg(cfg->dumps_double, f);
    Py_DECREF(f);
    if (text == NULL) return ERR;
    Py_ssize_t n;
    const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
    if (s == NULL) {
        Py_DECREF(text);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "dumps_double must return str");
        return ERR;
    }
    int rc = buf_put(b, s, (size_t)n);
    if (rc == OK && n < (Py_ssize_t)sizeof slot->text) {
        slot->bits = bits;
        slot->len = (uint8_t)n;
        memcpy(slot->text, s, (size_t)n);
    }
    Py_DECREF(text);
    return rc;
}

static uint64_t fnv1a(const uint8_t *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static const Entry *lookup(const Config *cfg, const uint8_t *key, size_t n, uint64_t h) {
    size_t i = (size_t)h & (TABLE_SIZE - 1);
    for (;;) {
        const Entry *e = cfg->slots[i];
        if (e == NULL) return NULL;
        if (e->hash == h && e->len == n && memcmp(e->key, key, n) == 0) return e;
        i = (i + 1) & (TABLE_SIZE - 1);
    }
}

static Entry *entry_for(Config *cfg, const char *key, size_t n) {
    uint64_t h = fnv1a((const uint8_t *)key, n);
    size_t i = (size_t)h & (TABLE_SIZE - 1);
    while (cfg->slots[i] != NULL) {
        Entry *e = cfg->slots[i];
        if (e->hash == h && e->len == n && memcmp(e->key, key, n) == 0) return e;
        i = (i + 1) & (TABLE_SIZE - 1);
    }
    if (cfg->nentries >= TABLE_SIZE / 2) {
        PyErr_SetString(PyExc_ValueError, "alias table too large for the native decoder");
        return NULL;
    }
    Entry *e = &cfg->entries[cfg->nentries++];
    memset(e, 0, sizeof *e);
    e->key = PyMem_Malloc(n + 1);
    if (e->key == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(e->key, key, n);
    e->key[n] = 0;
    e->len = n;
    e->hash = h;
    e->finish_index = -1;
    e->cost_index = -1;
    e->slot = -1;
    cfg->slots[i] = e;
    return e;
}

static void free_str(Str *s) {
    PyMem_Free(s->s);
    s->s = NULL;
}

static void config_free(PyObject *capsule) {
    Config *cfg = PyCapsule_GetPointer(capsule, "comptroller.otlp_native.Config");
    if (cfg == NULL) return;
    for (int i = 0; i < cfg->nentries; i++) PyMem_Free(cfg->entries[i].key);
    for (int i = 0; i < cfg->nmarkers; i++) {
        free_str(&cfg->markers[i]);
        free_str(&cfg->marker_dialects[i]);
    }
    for (int i = 0; i < cfg->nops; i++) {
        free_str(&cfg->op_from[i]);
        free_str(&cfg->op_to[i]);
    }
    for (int i = 0; i < cfg->nleaf; i++) free_str(&cfg->leaf[i]);
    for (int i = 0; i < cfg->nexcl; i++) {
        free_str(&cfg->excl_dialect[i]);
        free_str(&cfg->excl_provider[i]);
    }
    Py_XDECREF(cfg->scope_dialect);
    Py_XDECREF(cfg->canonical_provider);
    Py_XDECREF(cfg->provider_memo);
    Py_XDECREF(cfg->dumps_double);
    Py_XDECREF(cfg->decimal_text);
    PyMem_Free(cfg);
}

static int copy_str(PyObject *obj, Str *out) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL) return ERR;
    out->s = PyMem_Malloc((size_t)n + 1);
    if (out->s == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    memcpy(out->s, s, (size_t)n + 1);
    out->n = (size_t)n;
    return OK;
}

/* pairs: a sequence of (str, str) */
static int copy_pairs(PyObject *pairs, Str *a, Str *b, int *count) {
    PyObject *seq = PySequence_Fast(pairs, "expected a sequence of pairs");
    if (seq == NULL) return ERR;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_NAMED) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many entries for the native decoder");
        return ERR;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *x, *y;
        if (!PyArg_ParseTuple(pair, "UU", &x, &y) || copy_str(x, &a[*count]) != OK) {
            Py_DECREF(seq);
            return ERR;
        }
        if (copy_str(y, &b[*count]) != OK) {
            free_str(&a[*count]);
            Py_DECREF(seq);
            return ERR;
        }
        (*count)++;
    }
    Py_DECREF(seq);
    return OK;
}

/* Flag the entries of `keys` (a sequence of str) as `special`; finish keys keep their rank. */
static int mark_keys(Config *cfg, PyObject *keys, int special) {
    PyObject *seq = PySequence_Fast(keys, "expected a sequence of str");
    if (seq == NULL) return ERR;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        Py_ssize_t n;
        const char *k = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &n);
        Entry *e = k == NULL ? NULL : entry_for(cfg, k, (size_t)n);
        if (e == NULL) {
            Py_DECREF(seq);
            return ERR;
        }
        e->special |= special;
        if (special == SPECIAL_FINISH) e->finish_index = (int)i;
        if (special == SPECIAL_COST) e->cost_index = (int)i;
    }
    Py_DECREF(seq);
    return OK;
}

static PyObject *make_config(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"aliases", "finish_keys", "cost_keys", "agent_markers",
                             "dialect_markers", "operation_aliases", "leaf_operations",
                             "exclusive_input", "scope_dialect", "canonical_provider",
                             "provider_memo", "dumps_double", "decimal_text", "log_keys",
                             "max_attribute_bytes", "max_span_attributes",
                             "max_record_attribute_bytes", "max_record_attributes", "max_spans",
                             "max_records", "max_resource_fanout_bytes", NULL};
    PyObject *aliases, *finish_keys, *cost_keys, *agent_markers, *markers, *ops, *leaf, *excl;
    PyObject *scope_dialect, *canonical_provider, *memo, *dumps_double, *decimal_text, *log_keys;
    long long max_attr, max_span_attrs, max_record_attr, max_record_attrs, max_spans, max_records;
    long long max_fanout;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOO!OOOLLLLLLL", kwlist, &aliases,
                                     &finish_keys, &cost_keys, &agent_markers, &markers, &ops,
                                     &leaf, &excl, &scope_dialect, &canonical_provider,
                                     &PyDict_Type, &memo, &dumps_double, &decimal_text,
                                     &log_keys, &max_attr, &max_span_attrs, &max_record_attr,
                                     &max_record_attrs, &max_spans, &max_records, &max_fanout))
        return NULL;
    Config *cfg = PyMem_Calloc(1, sizeof(Config));
    if (cfg == NULL) return PyErr_NoMemory();
    cfg->scope_dialect = Py_NewRef(scope_dialect);
    cfg->canonical_provider = Py_NewRef(canonical_provider);
    cfg->provider_memo = Py_NewRef(memo);
    cfg->dumps_double = Py_NewRef(dumps_double);
    cfg->decimal_text = Py_NewRef(decimal_text);
    cfg->max_attribute_bytes = max_attr;
    cfg->max_record_attribute_bytes = max_record_attr;
    cfg->max_span_attributes = max_span_attrs;
    cfg->max_record_attributes = max_record_attrs;
    cfg->max_spans = max_spans;
    cfg->max_records = max_records;
    cfg->max_resource_fanout = max_fanout;
    PyObject *capsule = PyCapsule_New(cfg, "comptroller.otlp_native.Config", config_free);
    if (capsule == NULL) {
        Py_DECREF(cfg->scope_dialect);
        Py_DECREF(cfg->canonical_provider);
        Py_DECREF(cfg->provider_memo);
        Py_DECREF(cfg->dumps_double);
        Py_DECREF(cfg->decimal_text);
        PyMem_Free(cfg);
        return NULL;
    }
    /* aliases: sequence of (key, ((field_index, prio), ...)) */
    PyObject *seq = PySequence_Fast(aliases, "aliases must be a sequence");
    if (seq == NULL) goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *key, *hits;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "UO", &key, &hits)) goto fail_seq;
        Py_ssize_t n;
        const char *k = PyUnicode_AsUTF8AndSize(key, &n);
        if (k == NULL) goto fail_seq;
        Entry *e = entry_for(cfg, k, (size_t)n);
        if (e == NULL) goto fail_seq;
        PyObject *hseq = PySequence_Fast(hits, "hits must be a sequence");
        if (hseq == NULL) goto fail_seq;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(hseq); j++) {
            int field, prio;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(hseq, j), "ii", &field, &prio) ||
                field < 0 || field >= N_FIELDS || e->nhits >= MAX_HITS) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad alias hit");
                Py_DECREF(hseq);
                goto fail_seq;
            }
            e->field[e->nhits] = (uint8_t)field;
            e->prio[e->nhits] = prio;
            e->nhits++;
        }
        Py_DECREF(hseq);
    }
    Py_CLEAR(seq);
    /* finish-reason keys and cost keys (each in order of preference), the agent markers */
    if (mark_keys(cfg, finish_keys, SPECIAL_FINISH) != OK) goto fail;
    if (mark_keys(cfg, cost_keys, SPECIAL_COST) != OK) goto fail;
    if (mark_keys(cfg, agent_markers, SPECIAL_AGENT) != OK) goto fail;
    /* the attributes a usage record is read by directly, in the order of LOG_KEYS */
    seq = PySequence_Fast(log_keys, "log_keys must be a sequence");
    if (seq == NULL) goto fail;
    if (PySequence_Fast_GET_SIZE(seq) != N_SLOTS) {
        PyErr_Format(PyExc_ValueError, "log_keys must name %d attributes", N_SLOTS);
        goto fail_seq;
    }
    for (Py_ssize_t i = 0; i < N_SLOTS; i++) {
        Py_ssize_t n;
        const char *k = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &n);
        Entry *e = k == NULL ? NULL : entry_for(cfg, k, (size_t)n);
        if (e == NULL) goto fail_seq;
        e->slot = (int)i;
    }
    Py_CLEAR(seq);
    if (copy_pairs(markers, cfg->markers, cfg->marker_dialects, &cfg->nmarkers) != OK) goto fail;
    if (copy_pairs(ops, cfg->op_from, cfg->op_to, &cfg->nops) != OK) goto fail;
    if (copy_pairs(excl, cfg->excl_dialect, cfg->excl_provider, &cfg->nexcl) != OK) goto fail;
    seq = PySequence_Fast(leaf, "leaf_operations must be a sequence");
    if (seq == NULL) goto fail;
    if (PySequence_Fast_GET_SIZE(seq) > MAX_NAMED) {
        PyErr_SetString(PyExc_ValueError, "too many leaf operations");
        goto fail_seq;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (copy_str(PySequence_Fast_GET_ITEM(seq, i), &cfg->leaf[cfg->nleaf]) != OK) goto fail_seq;
        cfg->nleaf++;
    }
    Py_CLEAR(seq);
    return capsule;
fail_seq:
    Py_XDECREF(seq);
fail:
    Py_DECREF(capsule);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* The spans table                                                                           */

enum {
    K_TRACE = 0, K_SPAN, K_PARENT, K_NAME, K_KIND, K_START, K_END, K_DURATION, K_STATUS,
    K_STATUS_MSG, K_SERVICE, K_SCOPE, K_IS_GENAI, K_DIALECT, K_SEMCONV, K_OPERATION,
    K_PROVIDER, K_REQUEST_MODEL, K_RESPONSE_MODEL, K_RESPONSE_ID, K_FINISH, K_INPUT, K_OUTPUT,
    K_CACHE_READ, K_CACHE_WRITE, K_REASONING, K_ERROR_TYPE, K_SERVER, K_PURPOSE, K_TENANT,
    K_ORG, K_CONTEXT, K_PROFILE_ID, K_PROFILE_VERSION, K_ATTEMPT, K_FALLBACK, K_COST,
    K_OUTCOME, K_ATTRIBUTES, K_RESOURCE, N_COLS
};
static const int COL_KINDS[N_COLS] = {
    C_STR, C_STR, C_STR, C_STR, C_STR, C_I64, C_I64, C_F64, C_STR, C_STR, C_STR, C_STR, C_BOOL,
    C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_LSTR, C_I64, C_I64, C_I64, C_I64, C_I64,
    C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_I32, C_I32, C_I32, C_F64, C_STR, C_STR,
    C_STR};
/* canonical string field -> its column */
static const int FIELD_COL[F_INPUT] = {
    K_OPERATION, K_PROVIDER, K_REQUEST_MODEL, K_RESPONSE_MODEL, K_RESPONSE_ID, K_ERROR_TYPE,
    K_SERVER, K_PURPOSE, K_TENANT, K_ORG, K_CONTEXT, K_PROFILE_ID, K_OUTCOME, K_SEMCONV};

static const char *KINDS[6] = {"UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER",
                               "CONSUMER"};
static const char *STATUSES[3] = {"UNSET", "OK", "ERROR"};

#define MAX_ATTRS 256

typedef struct {
    Config *cfg;
    Ctx ctx;
    Col cols[N_COLS];
    Py_ssize_t rows;
    Buf derive_idx; /* int32 row indices of the spans that derive a usage row */
    PyObject *genai_refs, *derive_refs;
    uint64_t max_start;
    int64_t res_spans; /* spans of the current resource so far */
} State;

typedef struct {
    const char *s; /* NULL: none */
    size_t n;
} Slice;

static inline int slice_eq(Slice a, const char *s, size_t n) {
    return a.s != NULL && a.n == n && memcmp(a.s, s, n) == 0;
}

/* Attributes of a resource: JSON, service.name, whether the SDK is OpenLIT. */
typedef struct {
    Buf json;
    Slice service;
    int openlit;
} Resource;

/* A KeyValue list (the repeated field `field` of message `r`) written as a JSON object.
 * Duplicate keys are declined: the reference keeps one per key in a dict. */
typedef struct {
    const uint8_t *key;
    size_t klen;
    uint64_t hash;
    const Entry *entry;
    AnyV value;
} Attr;

static int parse_kv(Ctx *ctx, Rd r, Attr *a) {
    int have_value = 0;
    a->key = (const uint8_t *)"";
    a->klen = 0;
    a->value.type = V_NONE;
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        if (field == 1) {
            if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
            TRY(rd_len(ctx, &r, &sub));
            a->key = sub.p;
            a->klen = (size_t)(sub.end - sub.p);
            TRY(check_utf8(ctx, a->key, a->klen));
        } else if (field == 2) {
            if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
            if (have_value++) return bail(ctx, "KeyValue with two values");
            TRY(rd_len(ctx, &r, &sub));
            TRY(parse_anyvalue(ctx, sub, &a->value));
        } else if (field == 3) {
            return bail(ctx, "key_strindex");
        } else {
            TRY(rd_skip(ctx, &r, wt));
        }
    }
    return OK;
}

/* Over `limit` attributes, declined before the next is read: the reference rejects the span
 * or record by the count alone, so a hostile list of 100k attributes costs no more here than
 * the limit's worth (or MAX_ATTRS, the decoder's own bound) and a count there. */
static int add_attr(Ctx *ctx, const Config *cfg, Attr *attrs, int *count, Attr *a,
                    int64_t limit) {
    if (*count >= limit) return bail(ctx, "too many attributes");
    a->hash = fnv1a(a->key, a->klen);
    for (int i = 0; i < *count; i++)
        if (attrs[i].hash == a->hash && attrs[i].klen == a->klen &&
            memcmp(attrs[i].key, a->key, a->klen) == 0)
            return bail(ctx, "duplicate attribute key");
    if (*count >= MAX_ATTRS) return bail(ctx, "more than 256 attributes");
    a->entry = cfg ? lookup(cfg, a->key, a->klen, a->hash) : NULL;
    attrs[(*count)++] = *a;
    return OK;
}

static int attrs_json(Ctx *ctx, Buf *b, const Attr *attrs, int count) {
    TRY(buf_putc(b, '{'));
    for (int i = 0; i < count; i++) {
        if (i) TRY(buf_putc(b, ','));
        TRY(json_string(b, attrs[i].key, attrs[i].klen));
        TRY(buf_putc(b, ':'));
        TRY(json_value(ctx, b, &attrs[i].value, 0));
    }
    return buf_putc(b, '}');
}

static int parse_resource_with(Ctx *ctx, Rd r, Resource *res, Attr *attrs, int64_t limit) {
    int count = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        if (field == 1 || field == 3) {
            if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
            TRY(rd_len(ctx, &r, &sub));
            if (field == 3) {
                TRY(validate(ctx, sub, &S_ENTITY, 0));
                continue;
            }
            Attr a;
            TRY(parse_kv(ctx, sub, &a));
            TRY(add_attr(ctx, NULL, attrs, &count, &a, limit));
        } else {
            TRY(rd_skip(ctx, &r, wt));
        }
    }
    res->json.n = 0;
    TRY(attrs_json(ctx, &res->json, attrs, count));
    res->service.s = NULL;
    res->openlit = 0;
    for (int i = 0; i < count; i++) {
        const Attr *a = &attrs[i];
        if (a->klen == 12 && memcmp(a->key, "service.name", 12) == 0) {
            if (a->value.type == V_STR) {
                res->service.s = (const char *)a->value.p;
                res->service.n = a->value.n;
            } else if (a->value.type != V_NONE) {
                return bail(ctx, "service.name is not a string");
            }
        } else if (a->klen == 18 && memcmp(a->key, "telemetry.sdk.name", 18) == 0) {
            res->openlit = a->value.type == V_STR && a->value.n == 7 &&
                           memcmp(a->value.p, "openlit", 7) == 0;
        }
    }
    return OK;
}

/* Canonical provider, memoised in the dict the reference normaliser shares. */
static int canonical_provider_memo(Config *cfg, Slice raw, PyObject **out) {
    PyObject *key = PyUnicode_DecodeUTF8(raw.s, (Py_ssize_t)raw.n, "strict");
    if (key == NULL) return ERR;
    PyObject *hit = PyDict_GetItemWithError(cfg->provider_memo, key);
    if (hit == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return ERR;
        }
        hit = PyObject_CallOneArg(cfg->canonical_provider, key);
        if (hit == NULL || PyDict_SetItem(cfg->provider_memo, key, hit) < 0) {
            Py_XDECREF(hit);
            Py_DECREF(key);
            return ERR;
        }
        Py_DECREF(hit); /* the memo holds it */
    }
    Py_DECREF(key);
    *out = hit; /* borrowed from the memo, which lives as long as the config */
    return OK;
}

static int hex_col_ctx(Ctx *ctx, Col *c, const uint8_t *id, size_t n) {
    TRY(buf_reserve(&c->chars, 2 * n));
    char *o = c->chars.p + c->chars.n;
    for (size_t i = 0; i < n; i++) {
        *o++ = HEX[id[i] >> 4];
        *o++ = HEX[id[i] & 15];
    }
    c->chars.n += 2 * n;
    return col_str_end(ctx, c);
}

static int contains_embed(Slice name) {
    static const char word[] = "embed";
    if (name.n < 5) return 0;
    for (size_t i = 0; i + 5 <= name.n; i++) {
        size_t k = 0;
        while (k < 5) {
            char c = name.s[i + k];
            if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
            if (c != word[k]) break;
            k++;
        }
        if (k == 5) return 1;
    }
    return 0;
}

/* The size the reference gives an attribute value (`_check_sizes` in _normalise.py): a
 * string's length in characters (bytes are base64 text by then), a list's string lengths
 * plus 8 for any other item, 0 for anything else. */
static int attr_size(Ctx *ctx, const AnyV *v, int64_t *size) {
    *size = 0;
    if (v->type == V_STR) {
        for (size_t i = 0; i < v->n; i++) *size += (v->p[i] & 0xC0) != 0x80;
    } else if (v->type == V_BYTES) {
        *size = (int64_t)(4 * ((v->n + 2) / 3));
    } else if (v->type == V_ARRAY) {
        Rd r = {v->p, v->p + v->n};
        int more;
        for (;;) {
            AnyV item;
            int64_t part;
            TRY(array_next(ctx, &r, &item, &more));
            if (!more) break;
            if (item.type == V_STR || item.type == V_BYTES)
                TRY(attr_size(ctx, &item, &part));
            else
                part = 8;
            *size += part;
        }
    }
    return OK;
}

/* One span -> one row of every column (or BAIL). */
static int do_span(State *st, Rd r, const Resource *res, Slice scope, const char *sdialect,
                   Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Config *cfg = st->cfg;
    Col *cols = st->cols;
    size_t encoded = (size_t)(r.end - r.p);
    Slice trace = {NULL, 0}, span = {NULL, 0}, parent = {NULL, 0}, name = {"", 0};
    Slice status_msg = {NULL, 0};
    uint64_t start = 0, end = 0, kind = 0, status_code = 0;
    int count = 0, have_status = 0;
    /* every span so far is a row (any other declines): one more is over the request's limit */
    if (st->rows >= cfg->max_spans) return bail(ctx, "too many spans");
    /* each span stores its resource's JSON: bounded in total, as the reference bounds it
     * (bytes here, characters there: never less, so never accepted where it rejects) */
    if ((int64_t)res->json.n * ++st->res_spans > cfg->max_resource_fanout)
        return bail(ctx, "resource too large for its spans");
    /* the first pass: framing, scalar fields, and the attribute list */
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        switch (field) {
            case 1:
            case 2:
            case 4:
            case 5:
            case 3:
            case 9:
            case 11:
            case 13:
            case 15:
                if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
                TRY(rd_len(ctx, &r, &sub));
                break;
            case 6:
                if (wt != WT_VARINT) return bail(ctx, "unexpected wire type");
                TRY(rd_varint(ctx, &r, &kind));
                continue;
            case 7:
            case 8:
                if (wt != WT_I64) return bail(ctx, "unexpected wire type");
                TRY(rd_fixed64(ctx, &r, field == 7 ? &start : &end));
                continue;
            default:
                TRY(rd_skip(ctx, &r, wt));
                continue;
        }
        size_t n = (size_t)(sub.end - sub.p);
        Slice s = {(const char *)sub.p, n};
        switch (field) {
            case 1: trace = s; break;
            case 2: span = s; break;
            case 4: parent = s; break;
            case 5:
                TRY(check_utf8(ctx, sub.p, n));
                name = s;
                break;
            case 3: TRY(check_utf8(ctx, sub.p, n)); break;
            case 9: {
                Attr a;
                TRY(parse_kv(ctx, sub, &a));
                TRY(add_attr(ctx, cfg, attrs, &count, &a, cfg->max_span_attributes));
                break;
            }
            case 11: TRY(validate(ctx, sub, &S_EVENT, 0)); break;
            case 13: TRY(validate(ctx, sub, &S_LINK, 0)); break;
            case 15: {
                if (have_status++) return bail(ctx, "two status fields");
                while (sub.p < sub.end) {
                    uint32_t sf;
                    int swt;
                    Rd ssub;
                    TRY(rd_tag(ctx, &sub, &sf, &swt));
                    if (sf == 2) {
                        if (swt != WT_LEN) return bail(ctx, "unexpected wire type");
                        TRY(rd_len(ctx, &sub, &ssub));
                        TRY(check_utf8(ctx, ssub.p, (size_t)(ssub.end - ssub.p)));
                        status_msg.s = (const char *)ssub.p;
                        status_msg.n = (size_t)(ssub.end - ssub.p);
                    } else if (sf == 3) {
                        if (swt != WT_VARINT) return bail(ctx, "unexpected wire type");
                        TRY(rd_varint(ctx, &sub, &status_code));
                    } else {
                        TRY(rd_skip(ctx, &sub, swt));
                    }
                }
                break;
            }
        }
    }
    /* what the reference rejects: declined, so that it rejects it with its reason */
    if (start == 0) return bail(ctx, "missing start time");
    if (start > st->max_start) return bail(ctx, "future start");
    if (trace.n != 16 || span.n != 8) return bail(ctx, "invalid id");
    if (kind > 5) return bail(ctx, "unknown span kind");
    if (status_code > 2) return bail(ctx, "unknown status code");
    /* No attribute of a span smaller than the limit can be over it: measured only above. */
    if ((int64_t)encoded > cfg->max_attribute_bytes) {
        for (int k = 0; k < count; k++) {
            int64_t size;
            TRY(attr_size(ctx, &attrs[k].value, &size));
            if (size > cfg->max_attribute_bytes) return bail(ctx, "attribute too large");
        }
    }

    /* the alias table: best-ranked value per canonical field */
    int32_t prios[N_FIELDS];
    const AnyV *vals[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        prios[i] = INT32_MAX;
        vals[i] = NULL;
    }
    const AnyV *finish = NULL, *cost = NULL;
    int finish_rank = INT32_MAX, cost_rank = INT32_MAX, agent = 0;
    for (int k = 0; k < count; k++) {
        const Entry *e = attrs[k].entry;
        if (e == NULL) continue;
        const AnyV *v = &attrs[k].value;
        for (int h = 0; h < e->nhits; h++) {
            int f = e->field[h];
            if (e->prio[h] < prios[f]) {
                prios[f] = e->prio[h];
                vals[f] = v;
            }
        }
        /* the first cost key of the list that holds a value, as for the finish reasons */
        if ((e->special & SPECIAL_COST) && v->type != V_NONE && e->cost_index < cost_rank) {
            cost_rank = e->cost_index;
            cost = v;
        }
        if (e->special & SPECIAL_AGENT) agent = 1;
        /* the first key of the list that holds a value (None: the next key is tried) */
        if ((e->special & SPECIAL_FINISH) && v->type != V_NONE && e->finish_index < finish_rank) {
            finish_rank = e->finish_index;
            finish = v;
        }
    }
    for (int f = 0; f < N_FIELDS; f++) {
        const AnyV *v = vals[f];
        if (v != NULL && v->type != (f < FIRST_INT_FIELD ? V_STR : V_INT))
            return bail(ctx, "value of another type than its field");
    }
    int is_genai = vals[F_OPERATION] || vals[F_PROVIDER] || vals[F_REQUEST_MODEL] ||
                   vals[F_INPUT] || vals[F_OUTPUT] || vals[F_PURPOSE] || vals[F_OUTCOME];

    /* the columns every span has */
    TRY(hex_col_ctx(ctx, &cols[K_TRACE], (const uint8_t *)trace.s, 16));
    TRY(hex_col_ctx(ctx, &cols[K_SPAN], (const uint8_t *)span.s, 8));
    if (parent.n)
        TRY(hex_col_ctx(ctx, &cols[K_PARENT], (const uint8_t *)parent.s, parent.n));
    else
        TRY(col_null(ctx, &cols[K_PARENT]));
    TRY(col_str(ctx, &cols[K_NAME], name.s, name.n));
    TRY(col_cstr(ctx, &cols[K_KIND], KINDS[kind]));
    TRY(col_i64(&cols[K_START], (int64_t)(start / 1000)));
    double duration = 0;
    if (end) {
        TRY(col_i64(&cols[K_END], (int64_t)(end / 1000)));
        if (end >= start) duration = (double)(end - start) / 1e6;
    } else {
        TRY(col_null(ctx, &cols[K_END]));
    }
    if (end && end >= start)
        TRY(col_f64(&cols[K_DURATION], duration));
    else
        TRY(col_null(ctx, &cols[K_DURATION]));
    TRY(col_cstr(ctx, &cols[K_STATUS], STATUSES[status_code]));
    if (status_msg.n)
        TRY(col_str(ctx, &cols[K_STATUS_MSG], status_msg.s, status_msg.n));
    else
        TRY(col_null(ctx, &cols[K_STATUS_MSG]));
    if (res->service.s)
        TRY(col_str(ctx, &cols[K_SERVICE], res->service.s, res->service.n));
    else
        TRY(col_null(ctx, &cols[K_SERVICE]));
    TRY(col_str(ctx, &cols[K_SCOPE], scope.s, scope.n));
    TRY(attrs_json(ctx, &cols[K_ATTRIBUTES].chars, attrs, count));
    TRY(col_str_end(ctx, &cols[K_ATTRIBUTES]));
    TRY(col_str(ctx, &cols[K_RESOURCE], res->json.p, res->json.n));
    TRY(col_bool(&cols[K_IS_GENAI], is_genai));
    if (!is_genai) {
        for (int k = K_DIALECT; k <= K_OUTCOME; k++) TRY(col_null(ctx, &cols[k]));
        st->rows++;
        return OK;
    }

    /* a GenAI span */
    const char *dialect = sdialect;
    if (dialect == NULL) {
        int best = cfg->nmarkers;
        for (int k = 0; k < count && best > 0; k++)
            for (int m = 0; m < best; m++)
                if (attrs[k].klen >= cfg->markers[m].n &&
                    memcmp(attrs[k].key, cfg->markers[m].s, cfg->markers[m].n) == 0) {
                    best = m;
                    break;
                }
        dialect = best < cfg->nmarkers ? cfg->marker_dialects[best].s : "genai";
    }
    Slice provider = {NULL, 0};
    if (vals[F_PROVIDER]) {
        Slice raw = {(const char *)vals[F_PROVIDER]->p, vals[F_PROVIDER]->n};
        PyObject *canon;
        TRY(canonical_provider_memo(cfg, raw, &canon));
        if (canon != Py_None) {
            Py_ssize_t n;
            if (!PyUnicode_Check(canon)) return bail(ctx, "provider alias is not a string");
            provider.s = PyUnicode_AsUTF8AndSize(canon, &n);
            if (provider.s == NULL) return ERR;
            provider.n = (size_t)n;
        }
    }
    Slice operation = {NULL, 0};
    if (vals[F_OPERATION]) {
        operation.s = (const char *)vals[F_OPERATION]->p;
        operation.n = vals[F_OPERATION]->n;
        for (int k = 0; k < cfg->nops; k++)
            if (slice_eq(operation, cfg->op_from[k].s, cfg->op_from[k].n)) {
                operation.s = cfg->op_to[k].s;
                operation.n = cfg->op_to[k].n;
                break;
            }
    }
    int64_t tok[N_TOKEN_FIELDS];
    int has[N_TOKEN_FIELDS];
    for (int k = 0; k < N_TOKEN_FIELDS; k++) {
        const AnyV *v = vals[F_INPUT + k];
        has[k] = v != NULL;
        tok[k] = v ? v->i : 0;
        if (tok[k] < 0) return bail(ctx, "negative token count");
    }
    enum { IN = 0, OUT, CR, CW, RS };
    int has_tokens = has[IN] || has[OUT];
    if (operation.s == NULL && has_tokens && !agent) {
        operation.s = contains_embed(name) ? "embeddings" : "chat";
        operation.n = strlen(operation.s);
    }
    if (tok[CR] || tok[CW]) {
        int64_t cached;
        if (__builtin_add_overflow(tok[CR], tok[CW], &cached))
            return bail(ctx, "token count overflow");
        if (has[IN]) {
            int exclusive = cached > tok[IN];
            for (int k = 0; !exclusive && k < cfg->nexcl; k++)
                exclusive = strcmp(dialect, cfg->excl_dialect[k].s) == 0 &&
                            slice_eq(provider, cfg->excl_provider[k].s, cfg->excl_provider[k].n);
            if (exclusive && __builtin_add_overflow(tok[IN], cached, &tok[IN]))
                return bail(ctx, "token count overflow");
        }
    }
    if (has[OUT] && tok[RS] && tok[RS] > tok[OUT] &&
        __builtin_add_overflow(tok[OUT], tok[RS], &tok[OUT]))
        return bail(ctx, "token count overflow");

    TRY(col_cstr(ctx, &cols[K_DIALECT], dialect));
    for (int f = 0; f < F_INPUT; f++) {
        Col *c = &cols[FIELD_COL[f]];
        if (f == F_OPERATION) {
            TRY(operation.s ? col_str(ctx, c, operation.s, operation.n) : col_null(ctx, c));
        } else if (f == F_PROVIDER) {
            TRY(provider.s ? col_str(ctx, c, provider.s, provider.n) : col_null(ctx, c));
        } else if (vals[f]) {
            TRY(col_str(ctx, c, vals[f]->p, vals[f]->n));
        } else {
            TRY(col_null(ctx, c));
        }
    }
    /* finish reasons: a list of strings, or one string */
    Col *fc = &cols[K_FINISH];
    if (finish == NULL || finish->type == V_NONE) {
        TRY(col_null(ctx, fc));
    } else if (finish->type == V_STR) {
        TRY(buf_put(&fc->child, finish->p, finish->n));
        TRY(col_offset(ctx, &fc->chars, fc->child.n));
        fc->child_len++;
        TRY(col_offset(ctx, &fc->data, (size_t)fc->child_len));
        TRY(col_valid(fc, 1));
    } else if (finish->type == V_ARRAY) {
        Rd ar = {finish->p, finish->p + finish->n};
        int more;
        for (;;) {
            AnyV item;
            TRY(array_next(ctx, &ar, &item, &more));
            if (!more) break;
            if (item.type != V_STR) return bail(ctx, "finish reason is not a string");
            TRY(buf_put(&fc->child, item.p, item.n));
            TRY(col_offset(ctx, &fc->chars, fc->child.n));
            fc->child_len++;
        }
        TRY(col_offset(ctx, &fc->data, (size_t)fc->child_len));
        TRY(col_valid(fc, 1));
    } else {
        return bail(ctx, "finish reason is not a string");
    }
    for (int k = 0; k < N_TOKEN_FIELDS; k++) TRY(col_opt_i64(ctx, &cols[K_INPUT + k], has[k], tok[k]));
    TRY(col_opt_i32(ctx, &cols[K_PROFILE_VERSION], vals[F_PROFILE_VERSION] != NULL,
                    vals[F_PROFILE_VERSION] ? vals[F_PROFILE_VERSION]->i : 0));
    TRY(col_opt_i32(ctx, &cols[K_ATTEMPT], vals[F_ATTEMPT] != NULL,
                    vals[F_ATTEMPT] ? vals[F_ATTEMPT]->i : 0));
    TRY(col_opt_i32(ctx, &cols[K_FALLBACK], vals[F_FALLBACK] != NULL,
                    vals[F_FALLBACK] ? vals[F_FALLBACK]->i : 0));
    if (cost == NULL || cost->type == V_NONE || cost->type == V_BOOL)
        TRY(col_null(ctx, &cols[K_COST]));
    else if (cost->type == V_DOUBLE)
        TRY(col_f64(&cols[K_COST], cost->d));
    else if (cost->type == V_INT)
        TRY(col_f64(&cols[K_COST], (double)cost->i));
    else
        return bail(ctx, "cost is not a number");

    /* the counting rules' references */
    int leaf = 0;
    for (int k = 0; k < cfg->nleaf; k++)
        if (slice_eq(operation, cfg->leaf[k].s, cfg->leaf[k].n)) leaf = 1;
    int ours = strcmp(dialect, "comptroller") == 0;
    int flags = (leaf ? 1 : 0) | (ours ? 2 : 0);
    int derive = !ours && leaf && has_tokens;
    if (flags || derive) {
        /* keys of the counting rules: trace id + span id, trace id + parent id (raw) */
        PyObject *key = PyBytes_FromStringAndSize(NULL, 24);
        PyObject *pkey = Py_None;
        Py_INCREF(Py_None);
        if (key != NULL) {
            memcpy(PyBytes_AS_STRING(key), trace.s, 16);
            memcpy(PyBytes_AS_STRING(key) + 16, span.s, 8);
        }
        if (key != NULL && parent.n) {
            Py_DECREF(pkey);
            pkey = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(16 + parent.n));
            if (pkey != NULL) {
                memcpy(PyBytes_AS_STRING(pkey), trace.s, 16);
                memcpy(PyBytes_AS_STRING(pkey) + 16, parent.s, parent.n);
            }
        }
        int rc = ERR;
        if (key != NULL && pkey != NULL) {
            PyObject *ref = flags ? Py_BuildValue("(OOi)", key, pkey, flags) : NULL;
            if (!flags || (ref != NULL && PyList_Append(st->genai_refs, ref) == 0)) {
                rc = OK;
                if (derive) {
                    PyObject *dref = PyTuple_Pack(2, key, pkey);
                    if (dref == NULL || PyList_Append(st->derive_refs, dref) < 0) rc = ERR;
                    Py_XDECREF(dref);
                }
            }
            Py_XDECREF(ref);
        }
        Py_XDECREF(key);
        Py_XDECREF(pkey);
        TRY(rc);
        if (derive) {
            int32_t row = (int32_t)st->rows;
            TRY(buf_put(&st->derive_idx, &row, 4));
        }
    }
    st->rows++;
    return OK;
}

/* The resource of a ResourceSpans or ResourceLogs (field 1; 3 is the schema URL): it
 * applies to every span or record, wherever it appears in the message. */
static int scan_resource(Ctx *ctx, Rd r, Resource *res, Attr *attrs, int64_t limit) {
    int have_resource = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        if (field != 1 && field != 3) {
            TRY(rd_skip(ctx, &r, wt));
            continue;
        }
        if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
        TRY(rd_len(ctx, &r, &sub));
        if (field == 3)
            TRY(check_utf8(ctx, sub.p, (size_t)(sub.end - sub.p)));
        else if (have_resource++)
            return bail(ctx, "two resource fields");
        else
            TRY(parse_resource_with(ctx, sub, res, attrs, limit));
    }
    return have_resource ? OK : buf_puts(&res->json, "{}");
}

/* The scope of a ScopeSpans or ScopeLogs (field 1; 3 is the schema URL), validated; its name
 * ("" without one). */
static int scan_scope(Ctx *ctx, Rd r, Slice *name) {
    int have_scope = 0;
    name->s = "";
    name->n = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        if (field != 1 && field != 3) {
            TRY(rd_skip(ctx, &r, wt));
            continue;
        }
        if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
        TRY(rd_len(ctx, &r, &sub));
        if (field == 3) {
            TRY(check_utf8(ctx, sub.p, (size_t)(sub.end - sub.p)));
            continue;
        }
        if (have_scope++) return bail(ctx, "two scope fields");
        TRY(validate(ctx, sub, &S_SCOPE, 0));
        while (sub.p < sub.end) {
            uint32_t sf;
            int swt;
            Rd ssub;
            TRY(rd_tag(ctx, &sub, &sf, &swt));
            if (sf == 1 && swt == WT_LEN) {
                TRY(rd_len(ctx, &sub, &ssub));
                name->s = (const char *)ssub.p;
                name->n = (size_t)(ssub.end - ssub.p);
            } else {
                TRY(rd_skip(ctx, &sub, swt));
            }
        }
    }
    return OK;
}

static int do_scope_spans(State *st, Rd r, const Resource *res, Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Slice scope;
    TRY(scan_scope(ctx, r, &scope));
    const char *sdialect = NULL;
    PyObject *name = PyUnicode_DecodeUTF8(scope.s, (Py_ssize_t)scope.n, "strict");
    if (name == NULL) return ERR;
    PyObject *found = PyObject_CallOneArg(st->cfg->scope_dialect, name);
    Py_DECREF(name);
    if (found == NULL) return ERR;
    if (found != Py_None) {
        sdialect = PyUnicode_AsUTF8(found);
        if (sdialect == NULL) {
            Py_DECREF(found);
            return ERR;
        }
    } else if (res->openlit) {
        sdialect = "openlit";
    }
    int rc = OK, more = 1;
    while (rc == OK && more) {
        Rd sub;
        rc = next_message(ctx, &r, 2, &sub, &more);
        if (rc == OK && more) rc = do_span(st, sub, res, scope, sdialect, attrs);
    }
    Py_DECREF(found); /* sdialect points into it (the dialect names are interned anyway) */
    return rc;
}

static int do_resource_spans(State *st, Rd r, Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Resource res;
    memset(&res, 0, sizeof res);
    int rc = scan_resource(ctx, r, &res, attrs, st->cfg->max_span_attributes), more = 1;
    st->res_spans = 0;
    while (rc == OK && more) {
        Rd sub;
        rc = next_message(ctx, &r, 2, &sub, &more);
        if (rc == OK && more) rc = do_scope_spans(st, sub, &res, attrs);
    }
    buf_free(&res.json);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Usage records: ExportLogsServiceRequest -> the `llm_usage` columns                        */
/* The twin of `Normaliser.logs` for comptroller.usage records (the many); a request holding  */
/* any event record (circuit, profile, budget: the few) is declined whole.                    */

enum {
    U_ID = 0, U_TS, U_TRACE, U_SPAN, U_SERVICE, U_TENANT, U_ORG, U_CONTEXT, U_PURPOSE,
    U_OPERATION, U_PROVIDER, U_REQUEST_MODEL, U_RESPONSE_MODEL, U_INPUT, U_OUTPUT, U_CACHE_READ,
    U_CACHE_WRITE, U_REASONING, U_COST, U_PRICE_SOURCE, U_ESTIMATED, U_OUTCOME, U_ERROR_TYPE,
    U_ATTEMPT, U_FALLBACK, U_PROFILE_ID, U_PROFILE_VERSION, U_LATENCY, U_BUDGET_CAP, U_SOURCE,
    U_FEE_COST, U_FEES, U_USER, U_SESSION, U_FEATURE, U_TAGS, N_UCOLS
};
static const int UCOL_KINDS[N_UCOLS] = {
    C_STR, C_I64, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR,
    C_I64, C_I64, C_I64, C_I64, C_I64, C_STR, C_STR, C_BOOL, C_STR, C_STR, C_I32, C_I32, C_STR,
    C_I32, C_F64, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR, C_STR};

typedef struct {
    Config *cfg;
    Ctx ctx;
    Col cols[N_UCOLS];
    Py_ssize_t rows, ignored;
    PyObject *usage_refs;
    uint64_t max_ts;
} UState;

/* A string attribute, or none: anything else is declined (the reference would str() it). */
static int opt_text(Ctx *ctx, const AnyV *v, Slice *out) {
    out->s = NULL;
    out->n = 0;
    if (v == NULL || v->type == V_NONE) return OK;
    if (v->type != V_STR) return bail(ctx, "a text attribute of another type");
    out->s = (const char *)v->p;
    out->n = v->n;
    return OK;
}

static inline int col_slice(Ctx *ctx, Col *c, Slice s) {
    return s.s ? col_str(ctx, c, s.s, s.n) : col_null(ctx, c);
}

/* A decimal attribute as the reference writes it (str(Decimal(str(value)))), or none. */
static int col_decimal(UState *st, Col *c, const AnyV *v, int *present) {
    Ctx *ctx = &st->ctx;
    *present = 0;
    if (v == NULL || v->type == V_NONE) return col_null(ctx, c);
    PyObject *value;
    if (v->type == V_STR)
        value = PyUnicode_DecodeUTF8((const char *)v->p, (Py_ssize_t)v->n, "strict");
    else if (v->type == V_INT)
        value = PyLong_FromLongLong(v->i);
    else if (v->type == V_DOUBLE)
        value = PyFloat_FromDouble(v->d);
    else
        return bail(ctx, "a decimal attribute of another type");
    if (value == NULL) return ERR;
    PyObject *text = PyObject_CallOneArg(st->cfg->decimal_text, value);
    Py_DECREF(value);
    if (text == NULL) return ERR;
    int rc;
    if (text == Py_None) {
        rc = bail(ctx, "not a decimal");
    } else {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(text, &n);
        rc = s == NULL ? ERR : col_str(ctx, c, s, (size_t)n);
        *present = 1;
    }
    Py_DECREF(text);
    return rc;
}

static int col_opt_int32(Ctx *ctx, Col *c, const AnyV *v) {
    /* the reference's _opt_int: None and booleans are none, other types are declined */
    if (v == NULL || v->type == V_NONE || v->type == V_BOOL) return col_null(ctx, c);
    if (v->type != V_INT) return bail(ctx, "an integer attribute of another type");
    return col_opt_i32(ctx, c, 1, v->i);
}

static int do_record(UState *st, Rd r, Slice service, Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Config *cfg = st->cfg;
    Col *cols = st->cols;
    size_t encoded = (size_t)(r.end - r.p);
    uint64_t time = 0, observed = 0, u;
    Slice trace = {NULL, 0}, span = {NULL, 0}, event = {NULL, 0};
    int count = 0, have_body = 0;
    /* every record so far is a row or ignored (any other declines) */
    if (st->rows + st->ignored >= cfg->max_records) return bail(ctx, "too many records");
    while (r.p < r.end) {
        uint32_t field;
        int wt;
        Rd sub;
        TRY(rd_tag(ctx, &r, &field, &wt));
        switch (field) {
            case 1:
            case 11:
                if (wt != WT_I64) return bail(ctx, "unexpected wire type");
                TRY(rd_fixed64(ctx, &r, field == 1 ? &time : &observed));
                continue;
            case 2:
            case 7:
                if (wt != WT_VARINT) return bail(ctx, "unexpected wire type");
                TRY(rd_varint(ctx, &r, &u));
                continue;
            case 3:
            case 5:
            case 6:
            case 9:
            case 10:
            case 12:
                if (wt != WT_LEN) return bail(ctx, "unexpected wire type");
                TRY(rd_len(ctx, &r, &sub));
                break;
            default:
                TRY(rd_skip(ctx, &r, wt));
                continue;
        }
        size_t n = (size_t)(sub.end - sub.p);
        switch (field) {
            case 3: TRY(check_utf8(ctx, sub.p, n)); break;
            case 5:
                if (have_body++) return bail(ctx, "two body fields");
                TRY(validate(ctx, sub, &S_ANYVALUE, 0));
                break;
            case 6: {
                Attr a;
                TRY(parse_kv(ctx, sub, &a));
                TRY(add_attr(ctx, cfg, attrs, &count, &a, cfg->max_record_attributes));
                break;
            }
            case 9: trace = (Slice){(const char *)sub.p, n}; break;
            case 10: span = (Slice){(const char *)sub.p, n}; break;
            case 12:
                TRY(check_utf8(ctx, sub.p, n));
                event = (Slice){(const char *)sub.p, n};
                break;
        }
    }
    /* the attributes read directly, and the alias table's best value per field */
    const AnyV *slot[N_SLOTS] = {NULL};
    int32_t prios[N_FIELDS];
    const AnyV *vals[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        prios[i] = INT32_MAX;
        vals[i] = NULL;
    }
    for (int k = 0; k < count; k++) {
        const Entry *e = attrs[k].entry;
        if (e == NULL) continue;
        if (e->slot >= 0) slot[e->slot] = &attrs[k].value;
        for (int h = 0; h < e->nhits; h++)
            if (e->prio[h] < prios[e->field[h]]) {
                prios[e->field[h]] = e->prio[h];
                vals[e->field[h]] = &attrs[k].value;
            }
    }
    Slice name = event;
    if (name.n == 0) TRY(opt_text(ctx, slot[L_EVENT_NAME], &name));
    static const char USAGE[] = "comptroller.usage";
    int ours = (name.n >= 12 && memcmp(name.s, "comptroller.", 12) == 0) ||
               (name.n >= 12 && memcmp(name.s, "llm.circuit.", 12) == 0);
    if (!ours) {
        st->ignored++;
        return OK;
    }
    if (!(name.n == sizeof USAGE - 1 && memcmp(name.s, USAGE, name.n) == 0))
        return bail(ctx, "an event record");
    uint64_t ts = time ? time : observed;
    if (ts == 0) return bail(ctx, "missing timestamp");
    if (ts > st->max_ts) return bail(ctx, "future timestamp");
    if ((int64_t)encoded > cfg->max_record_attribute_bytes) {
        for (int k = 0; k < count; k++) {
            int64_t size;
            TRY(attr_size(ctx, &attrs[k].value, &size));
            if (size > cfg->max_record_attribute_bytes) return bail(ctx, "attribute too large");
        }
    }
    Slice usage_id;
    TRY(opt_text(ctx, slot[L_USAGE_ID], &usage_id));
    if (usage_id.n == 0) return bail(ctx, "missing usage id");
    for (int f = 0; f < N_FIELDS; f++) {
        const AnyV *v = vals[f];
        if (v == NULL || v->type == V_NONE) continue;
        if (f < FIRST_INT_FIELD ? v->type != V_STR : v->type != V_INT)
            return bail(ctx, "value of another type than its field");
        if (f >= FIRST_INT_FIELD && f < FIRST_INT_FIELD + N_TOKEN_FIELDS && v->i < 0)
            return bail(ctx, "negative token count");
    }

    TRY(col_str(ctx, &cols[U_ID], usage_id.s, usage_id.n));
    TRY(col_i64(&cols[U_TS], (int64_t)(ts / 1000)));
    if (trace.n)
        TRY(hex_col_ctx(ctx, &cols[U_TRACE], (const uint8_t *)trace.s, trace.n));
    else
        TRY(col_null(ctx, &cols[U_TRACE]));
    if (span.n)
        TRY(hex_col_ctx(ctx, &cols[U_SPAN], (const uint8_t *)span.s, span.n));
    else
        TRY(col_null(ctx, &cols[U_SPAN]));
    TRY(col_slice(ctx, &cols[U_SERVICE], service));
    static const int TEXT_FIELDS[][2] = {
        {F_TENANT, U_TENANT}, {F_ORG, U_ORG}, {F_CONTEXT, U_CONTEXT}, {F_PURPOSE, U_PURPOSE},
        {F_REQUEST_MODEL, U_REQUEST_MODEL}, {F_RESPONSE_MODEL, U_RESPONSE_MODEL}};
    for (size_t k = 0; k < sizeof TEXT_FIELDS / sizeof TEXT_FIELDS[0]; k++) {
        Slice v;
        TRY(opt_text(ctx, vals[TEXT_FIELDS[k][0]], &v));
        TRY(col_slice(ctx, &cols[TEXT_FIELDS[k][1]], v));
    }
    /* operation: canonical_operation (empty is none) */
    Slice op;
    TRY(opt_text(ctx, vals[F_OPERATION], &op));
    if (op.n == 0) op.s = NULL;
    for (int k = 0; op.s && k < cfg->nops; k++)
        if (slice_eq(op, cfg->op_from[k].s, cfg->op_from[k].n)) {
            op.s = cfg->op_to[k].s;
            op.n = cfg->op_to[k].n;
            break;
        }
    TRY(col_slice(ctx, &cols[U_OPERATION], op));
    /* provider: canonical_provider, through the shared memo */
    Slice raw, provider = {NULL, 0};
    TRY(opt_text(ctx, vals[F_PROVIDER], &raw));
    if (raw.s) {
        PyObject *canon;
        TRY(canonical_provider_memo(cfg, raw, &canon));
        if (canon != Py_None) {
            Py_ssize_t n;
            if (!PyUnicode_Check(canon)) return bail(ctx, "provider alias is not a string");
            provider.s = PyUnicode_AsUTF8AndSize(canon, &n);
            if (provider.s == NULL) return ERR;
            provider.n = (size_t)n;
        }
    }
    TRY(col_slice(ctx, &cols[U_PROVIDER], provider));
    for (int k = 0; k < N_TOKEN_FIELDS; k++) {
        const AnyV *v = vals[F_INPUT + k];
        TRY(col_i64(&cols[U_INPUT + k], v && v->type == V_INT ? v->i : 0));
    }
    int has_cost, has_cap;
    TRY(col_decimal(st, &cols[U_COST], slot[L_COST], &has_cost));
    Slice source;
    TRY(opt_text(ctx, slot[L_PRICE_SOURCE], &source));
    if (source.n == 0) {
        source.s = has_cost ? "provider" : "unpriced";
        source.n = strlen(source.s);
    }
    TRY(col_str(ctx, &cols[U_PRICE_SOURCE], source.s, source.n));
    const AnyV *est = slot[L_ESTIMATED];
    int estimated = 0;
    if (est != NULL && est->type != V_NONE) {
        if (est->type == V_BOOL || est->type == V_INT)
            estimated = est->i != 0;
        else if (est->type == V_STR)
            estimated = est->n > 0;
        else
            return bail(ctx, "estimated of another type");
    }
    TRY(col_bool(&cols[U_ESTIMATED], estimated));
    Slice outcome;
    TRY(opt_text(ctx, slot[L_OUTCOME], &outcome));
    if (outcome.n == 0) {
        outcome.s = "ok";
        outcome.n = 2;
    }
    TRY(col_str(ctx, &cols[U_OUTCOME], outcome.s, outcome.n));
    Slice error_type, profile_id;
    TRY(opt_text(ctx, slot[L_ERROR_TYPE], &error_type));
    TRY(col_slice(ctx, &cols[U_ERROR_TYPE], error_type));
    TRY(col_opt_int32(ctx, &cols[U_ATTEMPT], slot[L_ATTEMPT]));
    TRY(col_opt_int32(ctx, &cols[U_FALLBACK], slot[L_FALLBACK]));
    TRY(opt_text(ctx, slot[L_PROFILE_ID], &profile_id));
    TRY(col_slice(ctx, &cols[U_PROFILE_ID], profile_id));
    TRY(col_opt_int32(ctx, &cols[U_PROFILE_VERSION], slot[L_PROFILE_VERSION]));
    const AnyV *lat = slot[L_LATENCY];
    if (lat == NULL || lat->type == V_NONE || lat->type == V_BOOL)
        TRY(col_null(ctx, &cols[U_LATENCY]));
    else if (lat->type == V_DOUBLE)
        TRY(col_f64(&cols[U_LATENCY], lat->d));
    else if (lat->type == V_INT)
        TRY(col_f64(&cols[U_LATENCY], (double)lat->i));
    else
        return bail(ctx, "latency of another type");
    TRY(col_decimal(st, &cols[U_BUDGET_CAP], slot[L_BUDGET_CAP], &has_cap));
    TRY(col_str(ctx, &cols[U_SOURCE], "comptroller", 11));
    int has_fee;
    TRY(col_decimal(st, &cols[U_FEE_COST], slot[L_FEE_COST], &has_fee));
    /* Attribution and fee counts: text as sent (the validator checks the JSON objects). */
    static const int TEXTS[][2] = {{L_FEES, U_FEES}, {L_USER, U_USER}, {L_SESSION, U_SESSION},
                                   {L_FEATURE, U_FEATURE}, {L_TAGS, U_TAGS}};
    for (size_t k = 0; k < sizeof TEXTS / sizeof TEXTS[0]; k++) {
        Slice text;
        TRY(opt_text(ctx, slot[TEXTS[k][0]], &text));
        TRY(col_slice(ctx, &cols[TEXTS[k][1]], text));
    }
    if (trace.n == 16 && span.n == 8) {
        PyObject *key = PyBytes_FromStringAndSize(NULL, 24);
        if (key == NULL) return ERR;
        memcpy(PyBytes_AS_STRING(key), trace.s, 16);
        memcpy(PyBytes_AS_STRING(key) + 16, span.s, 8);
        int rc = PyList_Append(st->usage_refs, key);
        Py_DECREF(key);
        if (rc < 0) return ERR;
    }
    st->rows++;
    return OK;
}

static int do_scope_logs(UState *st, Rd r, Slice service, Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Slice scope;
    int more = 1;
    TRY(scan_scope(ctx, r, &scope));
    while (more) {
        Rd sub;
        TRY(next_message(ctx, &r, 2, &sub, &more));
        if (more) TRY(do_record(st, sub, service, attrs));
    }
    return OK;
}

static int do_resource_logs(UState *st, Rd r, Attr *attrs) {
    Ctx *ctx = &st->ctx;
    Resource res;
    memset(&res, 0, sizeof res);
    int rc = scan_resource(ctx, r, &res, attrs, st->cfg->max_record_attributes), more = 1;
    while (rc == OK && more) {
        Rd sub;
        rc = next_message(ctx, &r, 2, &sub, &more);
        if (rc == OK && more) rc = do_scope_logs(st, sub, res.service, attrs);
    }
    buf_free(&res.json);
    return rc;
}

/* (config, body, bound) of a call; NULL with an exception set (and nothing held) on error. */
static Config *call_args(PyObject *args, Py_buffer *body, unsigned long long *bound) {
    PyObject *capsule;
    if (!PyArg_ParseTuple(args, "Oy*K", &capsule, body, bound)) return NULL;
    Config *cfg = PyCapsule_GetPointer(capsule, "comptroller.otlp_native.Config");
    if (cfg == NULL) PyBuffer_Release(body);
    return cfg;
}

PyDoc_STRVAR(usage_doc,
             "usage(config, body, max_ts_ns) -> (columns, usage_refs, ignored) | str\n\n"
             "Decode and normalise an OTLP log export of usage records; a str is the reason it "
             "was declined.");

static PyObject *usage(PyObject *self, PyObject *args) {
    Py_buffer body;
    unsigned long long max_ts;
    Config *cfg = call_args(args, &body, &max_ts);
    if (cfg == NULL) return NULL;
    UState st;
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    st.ctx.cfg = cfg;
    st.max_ts = max_ts;
    PyObject *result = NULL;
    Attr *attrs = PyMem_Malloc(sizeof(Attr) * MAX_ATTRS);
    st.usage_refs = PyList_New(0);
    int rc = (attrs && st.usage_refs) ? OK : ERR;
    if (attrs == NULL) PyErr_NoMemory();
    for (int k = 0; k < N_UCOLS && rc == OK; k++) rc = col_init(&st.cols[k], UCOL_KINDS[k]);
    Rd r = {(const uint8_t *)body.buf, (const uint8_t *)body.buf + body.len};
    int more = 1;
    while (rc == OK && more) {
        Rd sub;
        rc = next_message(&st.ctx, &r, 1, &sub, &more);
        if (rc == OK && more) rc = do_resource_logs(&st, sub, attrs);
    }
    if (rc == OK) {
        PyObject *columns = export_columns(st.cols, N_UCOLS);
        if (columns != NULL)
            result = Py_BuildValue("(NOn)", columns, st.usage_refs, st.ignored);
    } else if (rc == BAIL) {
        result = PyUnicode_FromString(st.ctx.reason ? st.ctx.reason : "declined");
    }
    for (int k = 0; k < N_UCOLS; k++) col_free(&st.cols[k]);
    Py_XDECREF(st.usage_refs);
    PyMem_Free(attrs);
    PyBuffer_Release(&body);
    return result;
}

PyDoc_STRVAR(spans_doc,
             "spans(config, body, max_start_ns) -> (columns, genai_refs, derive_refs, derive_idx)"
             " | str\n\n"
             "Decode and normalise an OTLP trace export; a str is the reason it was declined.");

static PyObject *spans(PyObject *self, PyObject *args) {
    Py_buffer body;
    unsigned long long max_start;
    Config *cfg = call_args(args, &body, &max_start);
    if (cfg == NULL) return NULL;
    State st;
    memset(&st, 0, sizeof st);
    st.cfg = cfg;
    st.ctx.cfg = cfg;
    st.max_start = max_start;
    PyObject *result = NULL;
    Attr *attrs = PyMem_Malloc(sizeof(Attr) * MAX_ATTRS);
    st.genai_refs = PyList_New(0);
    st.derive_refs = PyList_New(0);
    int rc = (attrs && st.genai_refs && st.derive_refs) ? OK : ERR;
    if (attrs == NULL) PyErr_NoMemory();
    for (int k = 0; k < N_COLS && rc == OK; k++) rc = col_init(&st.cols[k], COL_KINDS[k]);
    Rd r = {(const uint8_t *)body.buf, (const uint8_t *)body.buf + body.len};
    int more = 1;
    while (rc == OK && more) {
        Rd sub;
        rc = next_message(&st.ctx, &r, 1, &sub, &more);
        if (rc == OK && more) rc = do_resource_spans(&st, sub, attrs);
    }
    if (rc == OK) {
        PyObject *columns = export_columns(st.cols, N_COLS);
        if (columns != NULL) {
            PyObject *idx = bytes_of(&st.derive_idx);
            if (idx != NULL)
                result = Py_BuildValue("(NOON)", columns, st.genai_refs, st.derive_refs, idx);
            else
                Py_DECREF(columns);
        }
    } else if (rc == BAIL) {
        result = PyUnicode_FromString(st.ctx.reason ? st.ctx.reason : "declined");
    }
    for (int k = 0; k < N_COLS; k++) col_free(&st.cols[k]);
    buf_free(&st.derive_idx);
    Py_XDECREF(st.genai_refs);
    Py_XDECREF(st.derive_refs);
    PyMem_Free(attrs);
    PyBuffer_Release(&body);
    return result;
}

static PyMethodDef methods[] = {
    {"make_config", (PyCFunction)(void (*)(void))make_config, METH_VARARGS | METH_KEYWORDS,
     "make_config(**tables) -> capsule: the alias table and dialect rules, compiled."},
    {"spans", spans, METH_VARARGS, spans_doc},
    {"usage", usage, METH_VARARGS, usage_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlp_native",
                                    "Native OTLP trace decoder (see collector/_native.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__otlp_native(void) {
    uint16_t probe = 1;
    if (*(uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "the native OTLP decoder needs a little-endian host");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *fields = PyTuple_New(N_FIELDS);
    if (fields == NULL) goto fail;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *s = PyUnicode_FromString(FIELD_NAMES[i]);
        if (s == NULL) {
            Py_DECREF(fields);
            goto fail;
        }
        PyTuple_SET_ITEM(fields, i, s);
    }
    if (PyModule_AddObject(m, "FIELDS", fields) < 0) {
        Py_DECREF(fields);
        goto fail;
    }
    PyObject *slots = PyTuple_New(N_SLOTS);
    if (slots == NULL) goto fail;
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *s = PyUnicode_FromString(LOG_KEY_NAMES[i]);
        if (s == NULL) {
            Py_DECREF(slots);
            goto fail;
        }
        PyTuple_SET_ITEM(slots, i, s);
    }
    if (PyModule_AddObject(m, "LOG_SLOTS", slots) < 0) {
        Py_DECREF(slots);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "ABI", 2) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
