"""nt_robust: how network width affects adversarial robustness, in JAX/Flax.

Reproduces and extends Wu et al., "Do Wider Neural Networks Really Help Adversarial
Robustness?" (NeurIPS 2021). Importing the package has no side effects; import the
sub-packages you need::

    from nt_robust.data import load_dataset
    from nt_robust.models import create_model, make_logits_fn
    from nt_robust.attacks import AttackConfig, pgd
"""

__version__ = "0.1.0"
