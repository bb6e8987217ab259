"""PyTorch side of the toolchain (torch is imported only inside compiler/)."""
