"""The kernels' constexpr codes, torch- and triton-free so the declaration can state them
(``ActivationImpl.kernel_value``) and ``kernels.py`` can branch on them: one home for each."""

ACT_NONE = 0
ACT_SILU = 1
ACT_GELU = 2
ACT_GELU_TANH = 3
ACT_SWIGLUOAI = 4
ACT_RELU2 = 5  # non-gated codes from here on
ACT_SILU_NO_MUL = 6
ACT_GELU_NO_MUL = 7
ACT_GELU_TANH_NO_MUL = 8

QUANT_NONE = 0
QUANT_FP8_TENSOR = 1  # one dynamic activation scale per tensor, one weight scale per expert
QUANT_FP8_BLOCK = 2  # activation scale per row and 128 columns, weight scale per 128x128 tile
