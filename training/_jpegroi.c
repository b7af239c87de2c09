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

struct region {
    unsigned char *pixels; /* height rows of width RGB pixels */
    unsigned int width, height;
    char message[JMSG_LENGTH_MAX];
};

/* Decode rows [top, bottom) and columns [left, right) of the image scaled by 1/denom (in scaled
 * pixels, clipped to the scaled image). Runs without the GIL: no Python calls in here. */
static int decode_region(const unsigned char *data, size_t size, unsigned int left, unsigned int top,
                         unsigned int right, unsigned int bottom, unsigned int denom,
                         struct region *out)
{
    struct jpeg_decompress_struct cinfo;
    struct guard err;
    unsigned char *volatile pixels = NULL;
    unsigned char *volatile row = NULL;
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
    const size_t skip = (size_t)(left - x) * 3, keep = (size_t)(right - left) * 3;
    row = malloc((size_t)width * 3);
    pixels = malloc(keep * (bottom - top));
    if (row == NULL || pixels == NULL) {
        status = NO_MEMORY;
        goto done;
    }
    if (top > 0 && jpeg_skip_scanlines(&cinfo, top) != top)
        ERREXIT(&cinfo, JERR_INPUT_EOF);
    for (unsigned int y = 0; y < bottom - top; y++) {
        JSAMPROW r = row;
        if (jpeg_read_scanlines(&cinfo, &r, 1) != 1)
            ERREXIT(&cinfo, JERR_INPUT_EOF);
        memcpy(pixels + keep * y, row + skip, keep);
    }
    /* The rows below the crop are never decoded: abort rather than finish. */
    out->pixels = pixels;
    out->width = right - left;
    out->height = bottom - top;
    pixels = NULL;
    status = OK;
done:
    jpeg_destroy_decompress(&cinfo);
    free(pixels);
    free(row);
    return status;
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
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = decode_region(data.buf, (size_t)data.len, left, top, right, bottom, denom, &out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (status == NO_MEMORY)
        return PyErr_NoMemory();
    if (status == UNSUPPORTED)
        return PyErr_Format(PyExc_NotImplementedError, "%s", out.message);
    if (status != OK)
        return PyErr_Format(PyExc_ValueError, "bad JPEG: %s", out.message);
    PyObject *pixels = PyByteArray_FromStringAndSize((const char *)out.pixels,
                                                     (Py_ssize_t)out.width * out.height * 3);
    free(out.pixels);
    if (pixels == NULL)
        return NULL;
    return Py_BuildValue("(NII)", pixels, out.width, out.height);
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
