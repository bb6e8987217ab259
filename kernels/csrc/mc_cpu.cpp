// CPU build of the marching-cubes passes in mc_core.h: OpenMP over rows, exposed with pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mc_core.h"

namespace py = pybind11;

namespace {

McGrid make_grid(int rz, int ry, int rx, int pad) {
    McGrid g;
    g.pad = pad;
    g.nx = rx + 2 * pad;
    g.ny = ry + 2 * pad;
    g.nz = rz + 2 * pad;
    g.words = mc_words(g.nx);
    return g;
}

int resolve_threads(int threads) {
#ifdef _OPENMP
    return threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

// The three passes after classification; holds the per-row tables between them.
struct Passes {
    McGrid g;
    long nrows = 0;
    std::vector<uint32_t> counts;
    std::vector<uint64_t> vbase, tbase;
    uint64_t nverts = 0, ntris = 0;

    void count_and_scan(const uint64_t* bits, int threads) {
        nrows = (long)g.nz * g.ny;
        counts.assign((size_t)nrows * 4, 0u);
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
        for (long r = 0; r < nrows; ++r) mc_count_row(bits, g, (int)(r / g.ny), (int)(r % g.ny), &counts[4 * r]);
        vbase.resize(nrows);
        tbase.resize(nrows);
        uint64_t v = 0, t = 0;
        for (long r = 0; r < nrows; ++r) {
            vbase[r] = v;
            tbase[r] = t;
            v += (uint64_t)counts[4 * r] + counts[4 * r + 1] + counts[4 * r + 2];
            t += counts[4 * r + 3];
        }
        nverts = v;
        ntris = t;
        if (nverts > 0xFFFFFFFFull) throw std::runtime_error("mesh has more than 2^32 vertices");
    }

    template <class Field>
    void emit(const uint64_t* bits, const Field& f, const McXform& xf, float* verts, float* normals,
              uint32_t* tris, int threads) const {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
        for (long r = 0; r < nrows; ++r)
            mc_emit_row(bits, g, (int)(r / g.ny), (int)(r % g.ny), counts.data(), vbase.data(), tbase.data(), f,
                        xf, verts, normals, tris);
    }
};

struct Transform {
    double m[12];
    double n[9];
    int flip;
};

Transform read_transform(py::array_t<double, py::array::c_style | py::array::forcecast> affine34,
                         py::array_t<double, py::array::c_style | py::array::forcecast> normal33, bool flip) {
    if (affine34.size() != 12 || normal33.size() != 9) throw std::invalid_argument("affine must be 3x4, normal 3x3");
    Transform t;
    std::copy(affine34.data(), affine34.data() + 12, t.m);
    std::copy(normal33.data(), normal33.data() + 9, t.n);
    t.flip = flip ? 1 : 0;
    return t;
}

template <class Field>
py::tuple run_emit(const Passes& p, const uint64_t* bits, const Field& f, const Transform& tr, bool with_normals,
                   int threads) {
    py::array_t<float> verts({(py::ssize_t)p.nverts, (py::ssize_t)3});
    py::array_t<uint32_t> tris({(py::ssize_t)p.ntris, (py::ssize_t)3});
    py::object normals = py::none();
    float* nptr = nullptr;
    if (with_normals) {
        py::array_t<float> n({(py::ssize_t)p.nverts, (py::ssize_t)3});
        nptr = n.mutable_data();
        normals = n;
    }
    float* vptr = verts.mutable_data();
    uint32_t* tptr = tris.mutable_data();
    {
        py::gil_scoped_release release;
        McXform xf{tr.m, tr.n, tr.flip};
        p.emit(bits, f, xf, vptr, nptr, tptr, threads);
    }
    return py::make_tuple(verts, tris, normals);
}

template <typename T>
py::tuple scalar_impl(const py::array& vol, float level, bool closed, const Transform& tr, bool with_normals,
                      int threads) {
    const T* data = static_cast<const T*>(vol.data());
    const int rz = (int)vol.shape(0), ry = (int)vol.shape(1), rx = (int)vol.shape(2);
    Passes p;
    p.g = make_grid(rz, ry, rx, closed ? 1 : 0);
    const McGrid g = p.g;
    std::vector<uint64_t> bits;
    {
        py::gil_scoped_release release;
        const long nrows = (long)g.nz * g.ny;
        bits.resize((size_t)nrows * g.words);
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long r = 0; r < nrows; ++r) {
            const int kk = (int)(r / g.ny) - g.pad, jj = (int)(r % g.ny) - g.pad;
            const bool real = kk >= 0 && kk < rz && jj >= 0 && jj < ry;
            const T* src = real ? data + ((size_t)kk * ry + jj) * rx : nullptr;
            mc_pack_row(src, rx, g.pad, level, &bits[(size_t)r * g.words], g.words);
        }
        p.count_and_scan(bits.data(), threads);
    }
    McScalarField<T> f{data, rx, ry, rz, g.pad, level};
    return run_emit(p, bits.data(), f, tr, with_normals, threads);
}

py::tuple mc_scalar(py::array vol, float level, bool closed, py::array_t<double> affine34,
                    py::array_t<double> normal33, bool flip, bool with_normals, int threads) {
    if (vol.ndim() != 3) throw std::invalid_argument("volume must be 3-D (z, y, x)");
    if (!(vol.flags() & py::array::c_style)) throw std::invalid_argument("volume must be C-contiguous");
    const Transform tr = read_transform(affine34, normal33, flip);
    threads = resolve_threads(threads);
    const char kind = vol.dtype().kind();
    const auto size = vol.dtype().itemsize();
    if (kind == 'f' && size == 4) return scalar_impl<float>(vol, level, closed, tr, with_normals, threads);
    if (kind == 'f' && size == 8) return scalar_impl<double>(vol, level, closed, tr, with_normals, threads);
    if (kind == 'u' && size == 1) return scalar_impl<uint8_t>(vol, level, closed, tr, with_normals, threads);
    if (kind == 'i' && size == 2) return scalar_impl<int16_t>(vol, level, closed, tr, with_normals, threads);
    if (kind == 'u' && size == 2) return scalar_impl<uint16_t>(vol, level, closed, tr, with_normals, threads);
    throw std::invalid_argument("unsupported dtype (float32/64, uint8, int16, uint16)");
}

// Several labels from one read of the uint8 volume: one bit volume per label, then the usual passes.
py::list mc_labels(py::array_t<uint8_t> vol, std::vector<int> labels, bool closed, py::array_t<double> affine34,
                   py::array_t<double> normal33, bool flip, bool with_normals, int threads) {
    if (vol.ndim() != 3) throw std::invalid_argument("volume must be 3-D (z, y, x)");
    if (!(vol.flags() & py::array::c_style)) throw std::invalid_argument("volume must be C-contiguous");
    const Transform tr = read_transform(affine34, normal33, flip);
    threads = resolve_threads(threads);
    const uint8_t* data = vol.data();
    const int rz = (int)vol.shape(0), ry = (int)vol.shape(1), rx = (int)vol.shape(2);
    const int L = (int)labels.size();
    const McGrid g = make_grid(rz, ry, rx, closed ? 1 : 0);
    const long nrows = (long)g.nz * g.ny;
    const size_t per_label = (size_t)nrows * g.words;
    uint8_t slot[256];
    std::fill(slot, slot + 256, (uint8_t)255);
    for (int l = 0; l < L; ++l) {
        if (labels[l] < 0 || labels[l] > 255) throw std::invalid_argument("label values must be 0..255");
        if (slot[labels[l]] != 255) throw std::invalid_argument("duplicate label value");
        slot[labels[l]] = (uint8_t)l;
    }
    std::vector<uint64_t> bits;
    {
        py::gil_scoped_release release;
        bits.assign(per_label * L, 0ull);
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long r = 0; r < nrows; ++r) {
            const int kk = (int)(r / g.ny) - g.pad, jj = (int)(r % g.ny) - g.pad;
            if (kk < 0 || kk >= rz || jj < 0 || jj >= ry) continue;
            const uint8_t* src = data + ((size_t)kk * ry + jj) * rx;
            uint64_t* row = &bits[(size_t)r * g.words];
            for (int i = 0; i < rx; ++i) {
                const uint8_t s = slot[src[i]];
                if (s == 255) continue;
                const int at = i + g.pad;
                row[per_label * s + (at >> 6)] |= 1ull << (at & 63);
            }
        }
    }
    py::list out;
    for (int l = 0; l < L; ++l) {
        const uint64_t* lb = bits.data() + per_label * l;
        Passes p;
        p.g = g;
        {
            py::gil_scoped_release release;
            p.count_and_scan(lb, threads);
        }
        McBitsField f{lb, g, 0.5f};
        out.append(run_emit(p, lb, f, tr, with_normals, threads));
    }
    return out;
}

int max_threads() { return resolve_threads(0); }

// Voxel count per label value, so "all labels present" needs no sort or int64 copy of the volume.
std::vector<uint64_t> histogram_u8(py::array_t<uint8_t, py::array::c_style> vol, int threads) {
    threads = resolve_threads(threads);
    const uint8_t* data = vol.data();
    const long n = (long)vol.size();
    std::vector<uint64_t> total(256, 0);
    {
        py::gil_scoped_release release;
#pragma omp parallel num_threads(threads)
        {
            uint64_t local[256] = {0};
#pragma omp for schedule(static)
            for (long i = 0; i < n; ++i) ++local[data[i]];
#pragma omp critical
            for (int v = 0; v < 256; ++v) total[v] += local[v];
        }
    }
    return total;
}

}  // namespace

PYBIND11_MODULE(_mc_cpu, m) {
    m.doc() = "CPU marching cubes (shared host/device passes from mc_core.h, OpenMP over rows)";
    m.def("mc_scalar", &mc_scalar, py::arg("volume"), py::arg("level"), py::arg("closed"), py::arg("affine34"),
          py::arg("normal33"), py::arg("flip"), py::arg("with_normals"), py::arg("threads") = 0);
    m.def("mc_labels", &mc_labels, py::arg("volume"), py::arg("labels"), py::arg("closed"), py::arg("affine34"),
          py::arg("normal33"), py::arg("flip"), py::arg("with_normals"), py::arg("threads") = 0);
    m.def("max_threads", &max_threads);
    m.def("histogram_u8", &histogram_u8, py::arg("volume"), py::arg("threads") = 0);
}
