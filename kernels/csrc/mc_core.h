// Marching cubes, written once for the CPU (C++17 + OpenMP) and the GPU (CUDA).
//
// The volume is first classified into one bit per voxel (inside = value >= level), packed into 64-bit
// words per x-row. Every later pass works on rows of those words, so it parallelises over rows on any
// back end and skips empty space 64 voxels at a time:
//   count: per row (k, j), the crossings of the row's own x-, y- and z-edges (popcounts of XORed words)
//          and the triangles of the cell row between rows (k..k+1, j..j+1) (only cells whose 8 corners
//          are not all equal are looked up in the case table);
//   scan:  exclusive prefix sums of the per-row vertex and triangle counts;
//   emit:  each row writes its own vertices (one per crossed edge it owns) and its cells' triangles.
// A vertex belongs to exactly one voxel edge; its index is the row's base plus the rank of that edge
// among the row's crossed edges of the same axis (a popcount), so vertices are shared without a hash map.
//
// Grid coordinates here are "padded": with pad = 1 a virtual outside layer surrounds the volume so that
// segments touching the border are closed. Padded voxel (k, j, i) is real voxel (k-1, j-1, i-1).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MC_HD __host__ __device__ __forceinline__
#define MC_TABLE static __constant__ const
#else
#define MC_HD inline
#define MC_TABLE static const
#endif

#include "mc_tables.h"

// Padded grid geometry: voxel dims and 64-bit words per x-row.
struct McGrid {
    int nx, ny, nz;
    int pad;
    int words;
};

// Vertex transform: m = 3x4 affine (row-major) from real voxel index (x, y, z) to output coordinates,
// n = 3x3 inverse-transpose for gradients; flip reverses triangle winding (mirroring transforms).
struct McXform {
    const double* m;
    const double* n;
    int flip;
};

MC_HD int mc_popc(uint64_t x) {
#if defined(__CUDA_ARCH__)
    return __popcll(x);
#else
    return __builtin_popcountll(x);
#endif
}

MC_HD int mc_ctz(uint64_t x) {
#if defined(__CUDA_ARCH__)
    return __ffsll((long long)x) - 1;
#else
    return __builtin_ctzll(x);
#endif
}

MC_HD int mc_words(int nx) { return (nx + 63) / 64; }

MC_HD size_t mc_row_id(const McGrid& g, int k, int j) { return (size_t)k * (size_t)g.ny + (size_t)j; }

// Bits of word w whose voxel index w*64+b is < limit.
MC_HD uint64_t mc_word_mask(int w, int limit) {
    int n = limit - w * 64;
    if (n >= 64) return ~0ull;
    if (n <= 0) return 0ull;
    return (1ull << n) - 1ull;
}

// Word w of the row shifted by one voxel: bit b holds voxel w*64+b+1.
MC_HD uint64_t mc_next(const uint64_t* row, int w, int words) {
    uint64_t x = row[w] >> 1;
    if (w + 1 < words) x |= row[w + 1] << 63;
    return x;
}

MC_HD bool mc_inside(float v, float level) { return v >= level; }

// Case index of the cell at bit s from the 8 corner words (corner c = dx | dy << 1 | dz << 2).
MC_HD int mc_case(uint64_t a, uint64_t a1, uint64_t b, uint64_t b1, uint64_t c, uint64_t c1, uint64_t d,
                  uint64_t d1, int s) {
    return (int)(((a >> s) & 1u) | (((a1 >> s) & 1u) << 1) | (((b >> s) & 1u) << 2) | (((b1 >> s) & 1u) << 3) |
                 (((c >> s) & 1u) << 4) | (((c1 >> s) & 1u) << 5) | (((d >> s) & 1u) << 6) |
                 (((d1 >> s) & 1u) << 7));
}

// Pack one padded row: bit i of the row is set when padded voxel i is inside. `src` is the real row
// (rx values) or null for a row in the pad layer. Used by the CPU; the GPU packs with warp ballots.
template <typename T>
MC_HD void mc_pack_row(const T* src, int rx, int pad, float level, uint64_t* out, int words) {
    for (int w = 0; w < words; ++w) out[w] = 0ull;
    if (!src) return;
    for (int i0 = 0; i0 < rx; i0 += 64) {
        const int n = rx - i0 < 64 ? rx - i0 : 64;
        uint64_t word = 0ull;
        for (int b = 0; b < n; ++b) word |= (uint64_t)mc_inside((float)src[i0 + b], level) << b;
        const int at = i0 + pad, w = at >> 6, sh = at & 63;
        out[w] |= word << sh;
        if (sh && w + 1 < words) out[w + 1] |= word >> (64 - sh);
    }
}

// Per row (k, j): out[0..3] = crossings of the row's x-edges, y-edges (to row j+1), z-edges (to slab
// k+1), and triangles of the cell row (k..k+1, j..j+1).
MC_HD void mc_count_row(const uint64_t* bits, const McGrid& g, int k, int j, uint32_t* out) {
    const int W = g.words;
    const uint64_t* A = bits + mc_row_id(g, k, j) * W;
    const bool hasB = j + 1 < g.ny, hasC = k + 1 < g.nz;
    const uint64_t* B = hasB ? A + W : nullptr;
    const uint64_t* C = hasC ? A + (size_t)g.ny * W : nullptr;
    const uint64_t* D = (hasB && hasC) ? C + W : nullptr;
    uint32_t xc = 0, yc = 0, zc = 0, nt = 0;
    for (int w = 0; w < W; ++w) {
        const uint64_t vm = mc_word_mask(w, g.nx), em = mc_word_mask(w, g.nx - 1);
        const uint64_t a = A[w], a1 = mc_next(A, w, W);
        xc += mc_popc((a ^ a1) & em);
        uint64_t b = 0, c = 0;
        if (B) {
            b = B[w];
            yc += mc_popc((a ^ b) & vm);
        }
        if (C) {
            c = C[w];
            zc += mc_popc((a ^ c) & vm);
        }
        if (D) {
            const uint64_t b1 = mc_next(B, w, W), c1 = mc_next(C, w, W), d = D[w], d1 = mc_next(D, w, W);
            const uint64_t any = a | a1 | b | b1 | c | c1 | d | d1, all = a & a1 & b & b1 & c & c1 & d & d1;
            uint64_t act = any & ~all & em;
            while (act) {
                const int s = mc_ctz(act);
                act &= act - 1;
                nt += mc_tri_count[mc_case(a, a1, b, b1, c, c1, d, d1, s)];
            }
        }
    }
    out[0] = xc;
    out[1] = yc;
    out[2] = zc;
    out[3] = nt;
}

// Field read through the padded grid. Inside the pad layer the value mirrors the nearest border voxel
// about the level (level - |v - level|): it is always outside, the crossing sits exactly half a voxel
// beyond the border (t = 0.5, as for labels) and the gradient still points out of the volume.
template <typename T>
struct McScalarField {
    const T* data;
    int rx, ry, rz, pad;
    float level;

    MC_HD float value(int k, int j, int i) const {
        int kk = k - pad, jj = j - pad, ii = i - pad;
        const bool in = (unsigned)kk < (unsigned)rz && (unsigned)jj < (unsigned)ry && (unsigned)ii < (unsigned)rx;
        kk = kk < 0 ? 0 : (kk >= rz ? rz - 1 : kk);
        jj = jj < 0 ? 0 : (jj >= ry ? ry - 1 : jj);
        ii = ii < 0 ? 0 : (ii >= rx ? rx - 1 : ii);
        const float v = (float)data[((size_t)kk * ry + jj) * rx + ii];
        if (in) return v;
        const float d = v - level;
        return level - (d < 0.f ? -d : d);
    }
};

// Indicator field of a bit volume (labels): 1 inside, 0 outside, iso-level 0.5.
struct McBitsField {
    const uint64_t* bits;
    McGrid g;
    float level;

    MC_HD float value(int k, int j, int i) const {
        return (float)((bits[mc_row_id(g, k, j) * g.words + (i >> 6)] >> (i & 63)) & 1ull);
    }
};

// Central-difference gradient in padded index space (one-sided at the grid border).
template <class Field>
MC_HD void mc_gradient(const Field& f, const McGrid& g, int k, int j, int i, float* out) {
    const int i0 = i > 0 ? i - 1 : i, i1 = i + 1 < g.nx ? i + 1 : i;
    const int j0 = j > 0 ? j - 1 : j, j1 = j + 1 < g.ny ? j + 1 : j;
    const int k0 = k > 0 ? k - 1 : k, k1 = k + 1 < g.nz ? k + 1 : k;
    out[0] = (f.value(k, j, i1) - f.value(k, j, i0)) / (float)(i1 - i0 > 0 ? i1 - i0 : 1);
    out[1] = (f.value(k, j1, i) - f.value(k, j0, i)) / (float)(j1 - j0 > 0 ? j1 - j0 : 1);
    out[2] = (f.value(k1, j, i) - f.value(k0, j, i)) / (float)(k1 - k0 > 0 ? k1 - k0 : 1);
}

// Write the vertex on the edge from padded voxel (k, j, i) one step along `axis` (0 x, 1 y, 2 z).
template <class Field>
MC_HD void mc_emit_vertex(const Field& f, const McGrid& g, const McXform& xf, int axis, int k, int j, int i,
                          uint64_t id, float* verts, float* normals) {
    const int i1 = i + (axis == 0), j1 = j + (axis == 1), k1 = k + (axis == 2);
    const float v0 = f.value(k, j, i), v1 = f.value(k1, j1, i1);
    float t = (f.level - v0) / (v1 - v0);
    if (!(t >= 0.f && t <= 1.f)) t = 0.5f;  // NaN or exact ties: the edge midpoint
    double p[3] = {(double)(i - g.pad), (double)(j - g.pad), (double)(k - g.pad)};
    p[axis] += (double)t;
    const double* m = xf.m;
    for (int r = 0; r < 3; ++r)
        verts[3 * id + r] = (float)(m[4 * r] * p[0] + m[4 * r + 1] * p[1] + m[4 * r + 2] * p[2] + m[4 * r + 3]);
    if (normals) {
        float g0[3], g1[3];
        mc_gradient(f, g, k, j, i, g0);
        mc_gradient(f, g, k1, j1, i1, g1);
        double gi[3], nw[3];
        for (int r = 0; r < 3; ++r) gi[r] = -(double)(g0[r] + t * (g1[r] - g0[r]));  // outward: downhill
        double len2 = 0.0;
        for (int r = 0; r < 3; ++r) {
            nw[r] = xf.n[3 * r] * gi[0] + xf.n[3 * r + 1] * gi[1] + xf.n[3 * r + 2] * gi[2];
            len2 += nw[r] * nw[r];
        }
        const double inv = len2 > 0.0 ? 1.0 / sqrt(len2) : 0.0;
        for (int r = 0; r < 3; ++r) normals[3 * id + r] = (float)(nw[r] * inv);
    }
}

// Emit row (k, j): its own vertices, then (if it starts a cell row) the cell row's triangles.
// counts: 4 per row from mc_count_row; vbase/tbase: exclusive prefix sums of vertices / triangles.
template <class Field>
MC_HD void mc_emit_row(const uint64_t* bits, const McGrid& g, int k, int j, const uint32_t* counts,
                       const uint64_t* vbase, const uint64_t* tbase, const Field& f, const McXform& xf,
                       float* verts, float* normals, uint32_t* tris) {
    const int W = g.words;
    const size_t r = mc_row_id(g, k, j);
    const uint64_t* A = bits + r * W;
    const bool hasB = j + 1 < g.ny, hasC = k + 1 < g.nz;
    const uint64_t* B = hasB ? A + W : nullptr;
    const uint64_t* C = hasC ? A + (size_t)g.ny * W : nullptr;
    const uint64_t* D = (hasB && hasC) ? C + W : nullptr;

    // 1. Vertices owned by this row, in the order the ranks below assume: x-edges, y-edges, z-edges.
    uint64_t ox = vbase[r], oy = ox + counts[4 * r], oz = oy + counts[4 * r + 1];
    for (int w = 0; w < W; ++w) {
        const uint64_t vm = mc_word_mask(w, g.nx), em = mc_word_mask(w, g.nx - 1);
        const uint64_t a = A[w];
        uint64_t m = (a ^ mc_next(A, w, W)) & em;
        while (m) {
            const int s = mc_ctz(m);
            m &= m - 1;
            mc_emit_vertex(f, g, xf, 0, k, j, w * 64 + s, ox++, verts, normals);
        }
        m = B ? (a ^ B[w]) & vm : 0ull;
        while (m) {
            const int s = mc_ctz(m);
            m &= m - 1;
            mc_emit_vertex(f, g, xf, 1, k, j, w * 64 + s, oy++, verts, normals);
        }
        m = C ? (a ^ C[w]) & vm : 0ull;
        while (m) {
            const int s = mc_ctz(m);
            m &= m - 1;
            mc_emit_vertex(f, g, xf, 2, k, j, w * 64 + s, oz++, verts, normals);
        }
    }
    if (!D) return;

    // 2. Triangles. Running vertex ids of the 8 edge families the cells of this row touch.
    const size_t rB = r + 1, rC = r + (size_t)g.ny, rD = rC + 1;
    uint64_t cxA = vbase[r], cxB = vbase[rB], cxC = vbase[rC], cxD = vbase[rD];
    uint64_t cyA = vbase[r] + counts[4 * r], cyC = vbase[rC] + counts[4 * rC];
    uint64_t czA = cyA + counts[4 * r + 1], czB = vbase[rB] + counts[4 * rB] + counts[4 * rB + 1];
    uint64_t t = tbase[r];
    for (int w = 0; w < W; ++w) {
        const uint64_t vm = mc_word_mask(w, g.nx), em = mc_word_mask(w, g.nx - 1);
        const uint64_t a = A[w], a1 = mc_next(A, w, W), b = B[w], b1 = mc_next(B, w, W);
        const uint64_t c = C[w], c1 = mc_next(C, w, W), d = D[w], d1 = mc_next(D, w, W);
        const uint64_t mxA = (a ^ a1) & em, mxB = (b ^ b1) & em, mxC = (c ^ c1) & em, mxD = (d ^ d1) & em;
        const uint64_t myA = (a ^ b) & vm, myC = (c ^ d) & vm, mzA = (a ^ c) & vm, mzB = (b ^ d) & vm;
        const uint64_t any = a | a1 | b | b1 | c | c1 | d | d1, all = a & a1 & b & b1 & c & c1 & d & d1;
        uint64_t act = any & ~all & em;
        while (act) {
            const int s = mc_ctz(act);
            act &= act - 1;
            const uint64_t below = (1ull << s) - 1ull;
            uint64_t e[12];
            e[0] = cxA + mc_popc(mxA & below);
            e[1] = cxB + mc_popc(mxB & below);
            e[2] = cxC + mc_popc(mxC & below);
            e[3] = cxD + mc_popc(mxD & below);
            e[4] = cyA + mc_popc(myA & below);
            e[5] = e[4] + ((myA >> s) & 1ull);
            e[6] = cyC + mc_popc(myC & below);
            e[7] = e[6] + ((myC >> s) & 1ull);
            e[8] = czA + mc_popc(mzA & below);
            e[9] = e[8] + ((mzA >> s) & 1ull);
            e[10] = czB + mc_popc(mzB & below);
            e[11] = e[10] + ((mzB >> s) & 1ull);
            const int cs = mc_case(a, a1, b, b1, c, c1, d, d1, s);
            const int n = mc_tri_count[cs];
            for (int q = 0; q < n; ++q) {
                const uint32_t v0 = (uint32_t)e[mc_tri_edges[cs][3 * q]];
                const uint32_t v1 = (uint32_t)e[mc_tri_edges[cs][3 * q + 1]];
                const uint32_t v2 = (uint32_t)e[mc_tri_edges[cs][3 * q + 2]];
                tris[3 * t] = v0;
                tris[3 * t + 1] = xf.flip ? v2 : v1;
                tris[3 * t + 2] = xf.flip ? v1 : v2;
                ++t;
            }
        }
        cxA += mc_popc(mxA);
        cxB += mc_popc(mxB);
        cxC += mc_popc(mxC);
        cxD += mc_popc(mxD);
        cyA += mc_popc(myA);
        cyC += mc_popc(myC);
        czA += mc_popc(mzA);
        czB += mc_popc(mzB);
    }
}
