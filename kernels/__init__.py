"""Surface generation: our own marching cubes (native CPU + CUDA) and mesh post-processing."""

from kernels.backend import BackendStatus, backend_status, select_backend
from kernels.marching_cubes import label_counts, marching_cubes, marching_cubes_labels
from kernels.mesh import Mesh

__all__ = [
    "BackendStatus",
    "Mesh",
    "backend_status",
    "label_counts",
    "marching_cubes",
    "marching_cubes_labels",
    "select_backend",
]
