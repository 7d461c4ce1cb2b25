"""The one op schema shared by every backend.

The compiled library (csrc/ops.cpp) defines ``hardloss_cuda::fwd``, ``fwd_inplace`` and
``bwd`` with exactly these strings in ``TORCH_LIBRARY``; the Python backends (reference,
triton) define ``hardloss_cuda::<backend>_fwd`` with the same argument list, so that
every backend goes through the same fake/autograd registration. ``tests/test_ops.py``
checks that the C++ definitions match these strings.

Contract of ``fwd`` (SPEC.md section 2), for ``logits`` (N, C):

- ``target``: int64 (N,) class indices, or (N, C) class probabilities in logits' dtype.
- ``weight``: None or (C,) per-class weights; ``mixture``: None or (C, C) target matrix
  (only with class indices). Both in the accumulation dtype: float64 for float64 logits,
  else float32.
- returns ``loss`` (N,) per-row weighted loss ``-sum_j q_j log p_j`` (0 for ignored rows)
  in the accumulation dtype; ``grad`` (N, C) the pseudo-gradient in logits' dtype, not
  scaled by the incoming gradient ((0, C) when ``compute_grad`` is False); ``lse`` (N,)
  the row logsumexp in the accumulation dtype (for the mixture / target gradients).
- a label outside [0, C) that is not ignore_index yields a NaN row, never an
  out-of-bounds read (the Python API raises before calling the op).

``fwd_inplace`` writes the pseudo-gradient into ``logits`` and returns (loss, lse).
``bwd`` returns ``grad_loss[:, None] * grad`` in grad's dtype.
"""

FWD_ARGS = (
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "int ignore_index, float label_smoothing, float k, bool compute_grad) "
    "-> (Tensor, Tensor, Tensor)"
)
FWD_INPLACE_ARGS = (
    "(Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? mixture, "
    "int ignore_index, float label_smoothing, float k) -> (Tensor, Tensor)"
)
BWD_ARGS = "(Tensor grad_loss, Tensor grad) -> Tensor"
