// CUDA build of the marching-cubes passes in ../csrc/mc_core.h (same count/emit code as the CPU build).
// Launched from kernels/cuda_backend.py through the driver API; extern "C" keeps the names unmangled.
//   classify: one warp per padded x-row, 64 voxels per two ballots -> bit words
//   count:    one thread per row (mc_count_row)
//   scan:     one block of 1024 threads, exclusive prefix sums of vertices and triangles per row
//   emit:     one thread per row (mc_emit_row)
#include "mc_core.h"

namespace {

struct InsideLevel {
    float level;
    template <typename T>
    __device__ bool operator()(T v) const { return mc_inside((float)v, level); }
};

struct InsideLabel {
    int label;
    __device__ bool operator()(unsigned char v) const { return (int)v == label; }
};

__device__ McGrid make_grid(int nx, int ny, int nz, int pad, int words) {
    McGrid g;
    g.nx = nx;
    g.ny = ny;
    g.nz = nz;
    g.pad = pad;
    g.words = words;
    return g;
}

template <typename T, class Pred>
__device__ void classify(const T* __restrict__ data, int rx, int ry, int rz, McGrid g, Pred inside,
                         unsigned long long* __restrict__ bits) {
    const int lane = threadIdx.x & 31;
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long nrows = (long long)g.nz * g.ny;
    if (row >= nrows) return;  // uniform per warp: blockDim is a multiple of 32
    const int kk = (int)(row / g.ny) - g.pad, jj = (int)(row % g.ny) - g.pad;
    const bool real = kk >= 0 && kk < rz && jj >= 0 && jj < ry;
    const T* src = data + ((size_t)(real ? kk : 0) * ry + (real ? jj : 0)) * rx;
    unsigned long long* out = bits + (size_t)row * g.words;
    for (int w = 0; w < g.words; ++w) {
        const int i0 = w * 64 + lane - g.pad, i1 = i0 + 32;
        const bool in0 = real && i0 >= 0 && i0 < rx && inside(src[i0]);
        const bool in1 = real && i1 >= 0 && i1 < rx && inside(src[i1]);
        const unsigned lo = __ballot_sync(0xffffffffu, in0), hi = __ballot_sync(0xffffffffu, in1);
        if (lane == 0) out[w] = ((unsigned long long)hi << 32) | lo;
    }
}

template <class Field>
__device__ void emit(const unsigned long long* bits, McGrid g, const unsigned* counts, const unsigned long long* vbase,
                     const unsigned long long* tbase, const Field& f, const double* xform, int flip, float* verts,
                     float* normals, unsigned* tris) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= (long long)g.nz * g.ny) return;
    McXform xf{xform, xform + 12, flip};
    mc_emit_row(reinterpret_cast<const uint64_t*>(bits), g, (int)(row / g.ny), (int)(row % g.ny), counts,
                reinterpret_cast<const uint64_t*>(vbase), reinterpret_cast<const uint64_t*>(tbase), f, xf, verts,
                normals, tris);
}

}  // namespace

#define MC_CLASSIFY(NAME, T)                                                                                 \
    extern "C" __global__ void NAME(const T* data, int rx, int ry, int rz, int nx, int ny, int nz, int pad,   \
                                    int words, float level, unsigned long long* bits) {                      \
        classify(data, rx, ry, rz, make_grid(nx, ny, nz, pad, words), InsideLevel{level}, bits);              \
    }
MC_CLASSIFY(mc_classify_f32, float)
MC_CLASSIFY(mc_classify_f64, double)
MC_CLASSIFY(mc_classify_u8, unsigned char)
MC_CLASSIFY(mc_classify_i16, short)
MC_CLASSIFY(mc_classify_u16, unsigned short)

extern "C" __global__ void mc_classify_label_u8(const unsigned char* data, int rx, int ry, int rz, int nx, int ny,
                                                int nz, int pad, int words, int label, unsigned long long* bits) {
    classify(data, rx, ry, rz, make_grid(nx, ny, nz, pad, words), InsideLabel{label}, bits);
}

extern "C" __global__ void mc_count(const unsigned long long* bits, int nx, int ny, int nz, int pad, int words,
                                    unsigned* counts) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const McGrid g = make_grid(nx, ny, nz, pad, words);
    if (row >= (long long)nz * ny) return;
    mc_count_row(reinterpret_cast<const uint64_t*>(bits), g, (int)(row / ny), (int)(row % ny), counts + 4 * row);
}

// Exclusive scan of per-row vertex (x+y+z crossings) and triangle counts. Launch with exactly one block
// of MC_SCAN_THREADS threads: each thread sums a contiguous chunk, the chunk sums are scanned in shared
// memory (Hillis-Steele), then each thread writes its chunk's prefixes. totals = {vertices, triangles}.
#define MC_SCAN_THREADS 1024
extern "C" __global__ void mc_scan(const unsigned* counts, long long nrows, unsigned long long* vbase,
                                   unsigned long long* tbase, unsigned long long* totals) {
    __shared__ unsigned long long sv[MC_SCAN_THREADS], st[MC_SCAN_THREADS];
    const int tid = threadIdx.x;
    const long long chunk = (nrows + MC_SCAN_THREADS - 1) / MC_SCAN_THREADS;
    const long long lo = min(nrows, (long long)tid * chunk), hi = min(nrows, lo + chunk);
    unsigned long long v = 0, t = 0;
    for (long long r = lo; r < hi; ++r) {
        v += (unsigned long long)counts[4 * r] + counts[4 * r + 1] + counts[4 * r + 2];
        t += counts[4 * r + 3];
    }
    sv[tid] = v;
    st[tid] = t;
    __syncthreads();
    for (int off = 1; off < MC_SCAN_THREADS; off <<= 1) {
        const unsigned long long av = tid >= off ? sv[tid - off] : 0ull, at = tid >= off ? st[tid - off] : 0ull;
        __syncthreads();
        sv[tid] += av;
        st[tid] += at;
        __syncthreads();
    }
    unsigned long long bv = sv[tid] - v, bt = st[tid] - t;
    for (long long r = lo; r < hi; ++r) {
        vbase[r] = bv;
        tbase[r] = bt;
        bv += (unsigned long long)counts[4 * r] + counts[4 * r + 1] + counts[4 * r + 2];
        bt += counts[4 * r + 3];
    }
    if (tid == MC_SCAN_THREADS - 1) {
        totals[0] = sv[tid];
        totals[1] = st[tid];
    }
}

#define MC_EMIT(NAME, T)                                                                                     \
    extern "C" __global__ void NAME(const unsigned long long* bits, int nx, int ny, int nz, int pad, int words,  \
                                    const unsigned* counts, const unsigned long long* vbase,                 \
                                    const unsigned long long* tbase, const T* data, int rx, int ry, int rz,  \
                                    float level, const double* xform, int flip, float* verts, float* normals, \
                                    unsigned* tris) {                                                        \
        const McScalarField<T> f{data, rx, ry, rz, pad, level};                                              \
        emit(bits, make_grid(nx, ny, nz, pad, words), counts, vbase, tbase, f, xform, flip, verts, normals,  \
             tris);                                                                                          \
    }
MC_EMIT(mc_emit_f32, float)
MC_EMIT(mc_emit_f64, double)
MC_EMIT(mc_emit_u8, unsigned char)
MC_EMIT(mc_emit_i16, short)
MC_EMIT(mc_emit_u16, unsigned short)

extern "C" __global__ void mc_emit_bits(const unsigned long long* bits, int nx, int ny, int nz, int pad, int words,
                                        const unsigned* counts, const unsigned long long* vbase,
                                        const unsigned long long* tbase, const double* xform, int flip, float* verts,
                                        float* normals, unsigned* tris) {
    const McGrid g = make_grid(nx, ny, nz, pad, words);
    const McBitsField f{reinterpret_cast<const uint64_t*>(bits), g, 0.5f};
    emit(bits, g, counts, vbase, tbase, f, xform, flip, verts, normals, tris);
}
