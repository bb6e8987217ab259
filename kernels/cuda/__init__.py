"""CUDA build of the marching-cubes kernels (mc_kernels.cu, built by build.py)."""
