"""The low-T kernels' constexpr codes, torch- and triton-free so the declaration and the adapter can
name them and ``kernels.py`` can branch on them. Activation codes are ``triton_fused_moe.codes``'s
(one home: both backends run the same activation maths)."""

FMT_16BIT = 0  # bf16 / fp16 weights [E, N, K]
FMT_INT4 = 1  # GPTQ / AWQ int4, nibbles along K in int32 words [E, N, K/8], group scales (+ zero points)
FMT_NVFP4 = 2  # e2m1 nibbles [E, N, K/8] words, e4m3 scale per 16, fp32 per-expert global scale
FMT_MXFP4 = 3  # e2m1 nibbles [E, N, K/8] words, e8m0 scale per 32
