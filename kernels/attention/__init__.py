"""Attention kernels: the SDPA dispatcher (fast path beside an explicit reference), blocked unmasked
attention with oneDNN matmuls for CPU inference, shifted-window
(Swin) partition/mask/relative-bias ops, and FactFormer's axial factorised kernel integral."""

from hybrids.kernels.attention.blocked import blocked_attention as blocked_attention
from hybrids.kernels.attention.factorized import apply_axis_kernel as apply_axis_kernel
from hybrids.kernels.attention.factorized import axis_kernels as axis_kernels
from hybrids.kernels.attention.factorized import axis_mean_pool as axis_mean_pool
from hybrids.kernels.attention.factorized import factorized_attention as factorized_attention
from hybrids.kernels.attention.sdpa import attention as attention
from hybrids.kernels.attention.window import crop_to_shape as crop_to_shape
from hybrids.kernels.attention.window import cyclic_shift as cyclic_shift
from hybrids.kernels.attention.window import effective_window as effective_window
from hybrids.kernels.attention.window import pad_to_window as pad_to_window
from hybrids.kernels.attention.window import relative_position_bias as relative_position_bias
from hybrids.kernels.attention.window import relative_position_index as relative_position_index
from hybrids.kernels.attention.window import reverse_cyclic_shift as reverse_cyclic_shift
from hybrids.kernels.attention.window import shifted_window_mask as shifted_window_mask
from hybrids.kernels.attention.window import window_attention as window_attention
from hybrids.kernels.attention.window import window_merge as window_merge
from hybrids.kernels.attention.window import window_partition as window_partition
