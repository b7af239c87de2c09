/* Region-of-interest JPEG decoding with libjpeg-turbo.
 *
 * A random crop keeps part of a photo, yet PIL and torchvision decode all of it. libjpeg-turbo
 * can do less: jpeg_skip_scanlines() skips the rows above the crop without the inverse DCT,
 * upsampling or colour conversion, jpeg_crop_scanline() limits that work to the crop's columns,
 * and decoding stops at the crop's last row. DCT scaling (1/2, 1/4, 1/8) shrinks what remains
 * when the crop is larger than the output. training/transforms.py uses this module when it is
 * built and falls back to PIL when it is not.
 *
 * Errors follow PIL's rules, so that the loader skips the same bad files either way: a fatal
 * libjpeg error, or a file that ends before the pixels asked for (libjpeg would pad it with
 * grey and warn), raises ValueError; other libjpeg warnings are ignored, as PIL ignores them.
 * CMYK and YCCK files raise NotImplementedError: PIL converts those.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

enum { OK = 0, BAD_FILE = -1, UNSUPPORTED = -2, NO_MEMORY = -3 };

struct guard {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo)
{
    struct guard *g = (struct guard *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, g->message);
    longjmp(g->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level)
{
    /* level -1 is a warning; the only one that means lost pixels is the premature end. */
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        on_error(cinfo);
}

/* Where the pixels go: the caller's buffer of at least `size` bytes, or NULL if it has none. */
typedef unsigned char *(*allocator)(void *context, size_t size);

struct region {
    unsigned int width, height; /* the pixels: height rows of width RGB pixels */
    char message[JMSG_LENGTH_MAX];
};

/* Decode rows [top, bottom) and columns [left, right) of the image scaled by 1/denom (in scaled
 * pixels, clipped to the scaled image) into a buffer from `alloc`, packed at its start. Runs
 * without the GIL: no Python calls in here except through `alloc`. */
static int decode_region(const unsigned char *data, size_t size, unsigned int left, unsigned int top,
                         unsigned int right, unsigned int bottom, unsigned int denom,
                         allocator alloc, void *context, struct region *out)
{
    struct jpeg_decompress_struct cinfo;
    struct guard err;
    volatile int status = BAD_FILE;

    memset(&cinfo, 0, sizeof cinfo); /* destroy() is safe even if create() failed */
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        snprintf(out->message, sizeof out->message, "%s", err.message);
        goto done;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        snprintf(out->message, sizeof out->message, "CMYK JPEG");
        status = UNSUPPORTED;
        goto done;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = denom;
    jpeg_start_decompress(&cinfo);
    if (right > cinfo.output_width)
        right = cinfo.output_width;
    if (bottom > cinfo.output_height)
        bottom = cinfo.output_height;
    if (left >= right || top >= bottom) {
        snprintf(out->message, sizeof out->message, "empty region of a %ux%u image",
                 cinfo.output_width, cinfo.output_height);
        goto done;
    }
    /* libjpeg moves the crop's start left to an iMCU boundary. Fancy upsampling treats the
     * crop's edges as the image's: decoding one column more on each side keeps every pixel
     * returned identical to a full decode's (checked against PIL in the tests). */
    JDIMENSION x = left > 0 ? left - 1 : 0;
    JDIMENSION width = (right < cinfo.output_width ? right + 1 : right) - x;
    jpeg_crop_scanline(&cinfo, &x, &width);
    /* libjpeg writes whole cropped rows (`stride` bytes, the margins included) straight into
     * the caller's buffer, several rows a call; the margins are squeezed out afterwards. One
     * buffer, written once: a second one and a copy cost more than the copy itself, because a
     * fresh large allocation has to be faulted in page by page. */
    const size_t skip = (size_t)(left - x) * 3, keep = (size_t)(right - left) * 3;
    const size_t stride = (size_t)width * 3;
    const unsigned int rows = bottom - top;
    unsigned char *pixels = alloc(context, stride * rows);
    if (pixels == NULL) {
        status = NO_MEMORY;
        goto done;
    }
    if (top > 0 && jpeg_skip_scanlines(&cinfo, top) != top)
        ERREXIT(&cinfo, JERR_INPUT_EOF);
    for (unsigned int y = 0; y < rows;) {
        JSAMPROW batch[16];
        unsigned int n = rows - y < 16 ? rows - y : 16;
        for (unsigned int i = 0; i < n; i++)
            batch[i] = pixels + stride * (y + i);
        JDIMENSION got = jpeg_read_scanlines(&cinfo, batch, n);
        if (got == 0)
            ERREXIT(&cinfo, JERR_INPUT_EOF);
        y += got;
    }
    if (keep != stride) /* in order: row i never overwrites a later row before it moves */
        for (unsigned int i = 0; i < rows; i++)
            memmove(pixels + keep * i, pixels + stride * i + skip, keep);
    /* The rows below the crop are never decoded: abort rather than finish. */
    out->width = right - left;
    out->height = rows;
    status = OK;
done:
    jpeg_destroy_decompress(&cinfo);
    return status;
}

/* The allocator py_decode hands decode_region: a bytearray, made with the GIL taken back for
 * the moment it takes. */
struct python_buffer {
    PyThreadState *thread;
    PyObject *array;
};

static unsigned char *new_bytearray(void *context, size_t size)
{
    struct python_buffer *b = context;
    PyEval_RestoreThread(b->thread);
    b->array = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)size);
    b->thread = PyEval_SaveThread();
    return b->array == NULL ? NULL : (unsigned char *)PyByteArray_AS_STRING(b->array);
}

static PyObject *py_decode(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned int left, top, right, bottom, denom;
    if (!PyArg_ParseTuple(args, "y*IIIII", &data, &left, &top, &right, &bottom, &denom))
        return NULL;
    if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "scale denominator must be 1, 2, 4 or 8, not %u",
                            denom);
    }
    struct region out = {0};
    struct python_buffer buffer = {NULL, NULL};
    buffer.thread = PyEval_SaveThread();
    int status = decode_region(data.buf, (size_t)data.len, left, top, right, bottom, denom,
                               new_bytearray, &buffer, &out);
    PyEval_RestoreThread(buffer.thread);
    PyBuffer_Release(&data);
    if (status != OK)
        Py_CLEAR(buffer.array);
    if (status == NO_MEMORY)
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    if (status == UNSUPPORTED)
        return PyErr_Format(PyExc_NotImplementedError, "%s", out.message);
    if (status != OK)
        return PyErr_Format(PyExc_ValueError, "bad JPEG: %s", out.message);
    /* Shrinking to the packed size: in place (or a realloc that does not copy much). */
    if (PyByteArray_Resize(buffer.array, (Py_ssize_t)out.width * out.height * 3) < 0) {
        Py_DECREF(buffer.array);
        return NULL;
    }
    return Py_BuildValue("(NII)", buffer.array, out.width, out.height);
}

static PyObject *py_size(PyObject *self, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    struct jpeg_decompress_struct cinfo;
    struct guard err;
    unsigned int width = 0, height = 0;
    volatile int ok = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump) == 0) {
        jpeg_create_decompress(&cinfo);
        jpeg_mem_src(&cinfo, data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        width = cinfo.image_width;
        height = cinfo.image_height;
        ok = 1;
    }
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    if (!ok)
        return PyErr_Format(PyExc_ValueError, "bad JPEG: %s", err.message);
    return Py_BuildValue("(II)", width, height);
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS,
     "decode(data, left, top, right, bottom, denom) -> (bytearray, width, height)\n\n"
     "RGB pixels (HWC, row-major) of the box [left, right) x [top, bottom) of the image scaled\n"
     "by 1/denom (1, 2, 4 or 8), in scaled pixels, clipped to the scaled image."},
    {"size", py_size, METH_VARARGS, "size(data) -> (width, height) from the JPEG header"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "depthlab_jpegroi", "Region-of-interest JPEG decoding (libjpeg-turbo).", -1,
    methods,
};

PyMODINIT_FUNC PyInit_depthlab_jpegroi(void)
{
    return PyModule_Create(&module);
}
