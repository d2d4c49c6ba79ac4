"""NTK theory of width and robustness: kernels, input gradients, lazy training, stability.

Importing this package does not import neural-tangents (nor TensorFlow); only
:mod:`nt_robust.theory.nt_compat` does, when something asks for it::

    from nt_robust.theory.kernels import KernelSpec, relu_kernels     # our closed form
    from nt_robust.theory.networks import MLPSpec, init_params, scalar_fn
    from nt_robust.theory.gradients import kernel_grad_sq_norm, KernelModel
    from nt_robust.theory.grad_cov import grad_sq_diag, to_stax      # E[(∂f/∂x_j)²] at init, width → ∞
    from nt_robust.theory.lazy_training import train_full_batch, kernel_gd
    from nt_robust.theory.stability import stability_report
    from nt_robust.theory.nt_compat import nt, stax                  # neural-tangents, shimmed

See docs/theory.md for the mathematics and the measurements.
"""
