# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled side of ``copying``: a large copy with non-temporal stores, four pages at a time.

Only built by setup.py (optional, as the engine); ``copying`` picks it, else its pure copy.
"""

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* Copies of at least this many bytes bypass the cache; smaller ones are plain memcpy. */
    #define DYNAPIPELINE_STREAM_MIN (1 << 20)

    #if defined(__SSE2__)
    #define DYNAPIPELINE_STREAMING 1
    #include <emmintrin.h>
    #define DYNAPIPELINE_PAGE 4096

    static inline void dynapipeline_line(char *dst, const char *src) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)(dst), a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }

    static void dynapipeline_stream_copy(char *dst, const char *src, size_t n) {
        if (n < DYNAPIPELINE_STREAM_MIN) {
            memcpy(dst, src, n);
            return;
        }
        size_t head = (64 - ((uintptr_t)dst & 63)) & 63;  /* to a cache line of the destination */
        memcpy(dst, src, head);
        dst += head; src += head; n -= head;
        /* A line of each of four pages in turn, as glibc's own large copy: four streams keep more of the
           memory busy than one. */
        size_t groups = n / (4 * DYNAPIPELINE_PAGE);
        for (size_t g = 0; g < groups; g++) {
            for (size_t off = 0; off < DYNAPIPELINE_PAGE; off += 64) {
                _mm_prefetch(src + off + 128, _MM_HINT_T0);
                _mm_prefetch(src + DYNAPIPELINE_PAGE + off + 128, _MM_HINT_T0);
                _mm_prefetch(src + 2 * DYNAPIPELINE_PAGE + off + 128, _MM_HINT_T0);
                _mm_prefetch(src + 3 * DYNAPIPELINE_PAGE + off + 128, _MM_HINT_T0);
                dynapipeline_line(dst + off, src + off);
                dynapipeline_line(dst + DYNAPIPELINE_PAGE + off, src + DYNAPIPELINE_PAGE + off);
                dynapipeline_line(dst + 2 * DYNAPIPELINE_PAGE + off, src + 2 * DYNAPIPELINE_PAGE + off);
                dynapipeline_line(dst + 3 * DYNAPIPELINE_PAGE + off, src + 3 * DYNAPIPELINE_PAGE + off);
            }
            src += 4 * DYNAPIPELINE_PAGE; dst += 4 * DYNAPIPELINE_PAGE;
        }
        n -= groups * 4 * DYNAPIPELINE_PAGE;
        size_t lines = n / 64;
        for (size_t i = 0; i < lines; i++) {
            dynapipeline_line(dst, src);
            src += 64; dst += 64;
        }
        _mm_sfence();  /* the streamed lines are visible before anything this process writes next (the pipe) */
        memcpy(dst, src, n - lines * 64);
    }
    #else
    #define DYNAPIPELINE_STREAMING 0
    static void dynapipeline_stream_copy(char *dst, const char *src, size_t n) { memcpy(dst, src, n); }
    #endif
    """
    void dynapipeline_stream_copy(char *dst, const char *src, size_t n) nogil
    int DYNAPIPELINE_STREAMING


STREAMING = bool(DYNAPIPELINE_STREAMING)  # False where the compiler has no SSE2 (the copy is then memcpy)


def copy_into(unsigned char[::1] dest, const unsigned char[::1] src):
    """Copy ``src`` into ``dest`` (both contiguous bytes, the same size), without the GIL."""
    cdef size_t n = src.shape[0]
    if <size_t>dest.shape[0] != n:
        raise ValueError(f"copy_into: the destination has {dest.shape[0]} bytes, the source {n}")
    if n == 0:
        return
    with nogil:
        dynapipeline_stream_copy(<char *>&dest[0], <const char *>&src[0], n)
