"""Type stub of the private native module fastlm._C (use the fastlm package API)."""

__version__: str

def cross_entropy_chunk(logits, target, loss, lse, grad_scale, grad_scale_scalar: float,
                        ignore_index: int, label_smoothing: float, z_loss: float, softcap: float,
                        write_grad: bool, num_threads: int) -> None: ...
