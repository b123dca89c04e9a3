"""The math of the linear mixers as plain functions on (batch, time, heads, dim) tensors: each op has a recurrent
reference and a chunked parallel form with a hand-written backward (gated_delta_rule, kda, delta_rule, simple_gla
and its linear_attn / lightning / ssd forms), the causal short convolution, the kernel backends (kernels=torch |
fla) and the float32 rule (precision)."""
