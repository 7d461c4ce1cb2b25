"""The one op schema shared by every backend.

The compiled library (csrc/ops.cpp) defines ``hardloss_cuda::fwd``, ``bwd`` and
``bwd_inplace`` with exactly these strings in ``TORCH_LIBRARY``; the Python backends
(reference, triton) define ``hardloss_cuda::<backend>_fwd`` / ``<backend>_bwd`` with the same
argument lists, so that every backend goes through the same fake/autograd registration.
``tests/test_ops.py`` checks that the C++ definitions match these strings.

Design: the forward pass reads the logits once and keeps four numbers per row; the backward
pass reads the logits again and writes the gradient once (SPEC.md section 3: 3 N C s bytes,
no (N, C) buffer held between the passes, no host synchronisation). Producing the gradient
in the forward pass instead costs a fourth pass in backward, to scale it by the incoming
gradient, and holds an (N, C) buffer from forward to backward.

``fwd(logits, target, weight, mixture, ignore_index, label_smoothing, k, compute_grad)``
for ``logits`` (N, C):

- ``target``: int64 (N,) class indices, or (N, C) class probabilities in logits' dtype.
- ``weight``: None or (C,) per-class weights; ``mixture``: None or (C, C) target matrix
  (only with class indices). Both in the accumulation dtype ("acc"): float64 for float64
  logits, else float32.
- returns ``loss`` (N,) acc, the per-row weighted loss ``-sum_j q_j log p_j`` (0 for ignored
  rows, NaN for a label outside [0, C) that is not ignore_index), and ``stats`` (N, 4) acc:
  column 0 is the row's logsumexp (the mixture / probability-target gradients use it); columns
  1..3 are private to the backend that wrote them, what its ``bwd`` needs to produce the
  gradient in one pass (the compiled and Triton kernels store ``(m, log_c, f_y)`` of
  csrc/row_math.h's ``OneHotRow`` for one-hot rows and ``(t, m_pos, pos_scale)`` of
  ``SoftRow`` for soft rows). They are only meaningful when ``compute_grad`` is True.
- a label outside [0, C) is never used as an index (no out-of-bounds read); the Python API
  raises on it before calling the op.

``bwd(grad_loss, logits, target, weight, mixture, stats, ignore_index, label_smoothing, k)``
returns the pseudo-gradient of SPEC section 2 times ``grad_loss[:, None]`` (grad_loss (N,)
acc), in logits' dtype: 0 for ignored rows, NaN for bad labels. A row with ``grad_loss == 0``
and a finite logsumexp gets a zero gradient without its logits being read (trimmed rows cost
no bandwidth). ``bwd_inplace`` writes the same into ``logits`` and returns nothing.
"""

FWD_ARGS = (
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "int ignore_index, float label_smoothing, float k, bool compute_grad) "
    "-> (Tensor, Tensor)"
)
BWD_ARGS = (
    "(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "Tensor stats, int ignore_index, float label_smoothing, float k) -> Tensor"
)
BWD_INPLACE_ARGS = (
    "(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "Tensor stats, int ignore_index, float label_smoothing, float k) -> ()"
)

# Columns of ``stats``.
STATS_COLS = 4
LSE_COL = 0
