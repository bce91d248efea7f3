"""Type stub of the private CUDA module fastlm._cuda (use fastlm.ops). Pointers are ints."""

def cross_entropy_chunk(logits: int, dtype: int, rows: int, vocab: int, ld: int, target: int,
                        loss: int, lse: int, grad_scale: int, grad_scale_scalar: float,
                        ignore_index: int, label_smoothing: float, z_loss: float, softcap: float,
                        write_grad: bool, stream: int) -> None: ...
def attention_forward(q: int, k: int, v: int, o: int, lse: int,
                      sizes: tuple[int, int, int, int, int, int],
                      strides: tuple[tuple[int, int, int], ...], scale: float, causal: bool,
                      dtype: int, version: int, stream: int) -> None: ...
def attention_backward(dout: int, q: int, k: int, v: int, o: int, lse: int, dq: int, dk: int,
                       dv: int, dq_accum: int, delta: int,
                       sizes: tuple[int, int, int, int, int, int],
                       strides: tuple[tuple[int, int, int], ...], scale: float, causal: bool,
                       dtype: int, version: int, stream: int) -> None: ...
