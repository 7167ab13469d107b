"""cuda_labs: a ladder of GPU kernels written in numba.cuda (Chapter 8 of LLM101n).

One file per kernel family, versions numbered, each with a NumPy/PyTorch reference and a benchmark mode:

    lab01_map        map, zip, guards, 2-D indexing, many blocks
    lab02_reduce     block sum in shared memory, warp shuffles, prefix sum
    lab03_softmax    naive three-pass softmax -> fused online softmax -> row in registers
    lab04_layernorm  layernorm forward and backward; warp per row with a fused backward
    lab05_matmul     naive -> coalesced -> shared tiles -> 2-D register blocking -> vectorised -> expert
    lab06_attention  naive three-kernel attention -> fused flash-style forward
    lab07_adamw      fused AdamW update

Import `cuda` from `cuda_labs._compat`, never from numba directly: it picks the CUDA simulator when this
machine has no GPU and patches the two things that keep numba-cuda from working here. `cuda_labs._trace` runs a
kernel on the simulator with a log of which thread read or wrote which address: the tests grade access
patterns with it.
"""
