"""Triton kernels, one module per op. Import only when Triton is installed (genfast.backends() checks).

Run on CPU tensors under Triton's interpreter by setting TRITON_INTERPRET=1 before this package is
imported (the test suite does so when no GPU is present).
"""
