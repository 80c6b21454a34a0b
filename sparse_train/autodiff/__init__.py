"""Reverse-mode autodiff: the tape (``engine``) and ops with hand-written
backwards (``ops``, ``embedding``, ``interaction``, ``losses``)."""
from .embedding import embedding_bag
from .engine import (Tensor, as_tensor, compute_gradients, concat_row_sparse, gradients,
                     is_grad_enabled, no_grad)
from .interaction import dot_interaction, fm_interaction
from .losses import mean_squared_error, sigmoid_cross_entropy_with_logits
from .ops import (add, bias_add, concat, linear, matmul, mul, neg, relu, reshape, select,
                  sigmoid, square, stack, sub, tanh, unbroadcast)
from .ops import mean as reduce_mean
from .ops import sum as reduce_sum

__all__ = ["Tensor", "as_tensor", "compute_gradients", "gradients", "no_grad",
           "is_grad_enabled", "concat_row_sparse", "add", "sub", "mul", "neg", "matmul",
           "bias_add", "linear", "relu", "sigmoid", "tanh", "square", "concat", "stack", "reshape", "select",
           "reduce_sum", "reduce_mean", "unbroadcast", "embedding_bag", "fm_interaction",
           "dot_interaction", "sigmoid_cross_entropy_with_logits", "mean_squared_error"]
