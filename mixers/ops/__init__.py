"""Math kernels apart from modules: each fast path sits beside its simple reference."""
