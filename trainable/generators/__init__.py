"""The L2L-DA method's learned attackers, in one place for the defenses and the matrix columns (docs/method.md).

:mod:`~trainable.generators.nets` — the U-Net generators (L2L-DA's with class-conditional
BN and z, L2L*'s); :mod:`~trainable.generators.rollout` — the recursive stochastic attack
(Eq. 5), the input gradient it reads and its swappable per-step kernels (docs/performance.md);
:mod:`~trainable.generators.losses` — L_cls and L_div (Eqs. 6–7) and the generator's ascent step.
"""
from trainable.generators.losses import diversity_loss, generator_step, l2lda_losses, l2lstar_loss
from trainable.generators.nets import (CondBatchNorm2d, Generator, L2LStarGenerator, PlainBatchNorm2d, UNet, ZConv2d,
                                       is_channels_last)
from trainable.generators.rollout import (EAGER, GRAD_STABILISER, RolloutKernels, ce_and_input_gradient,
                                          ce_and_input_gradient_functional, generator_update, input_gradient,
                                          normalize_grad, recursive_attack, rollout)

__all__ = ["EAGER", "GRAD_STABILISER", "CondBatchNorm2d", "Generator", "L2LStarGenerator", "PlainBatchNorm2d",
           "RolloutKernels", "UNet", "ZConv2d", "ce_and_input_gradient",
           "ce_and_input_gradient_functional", "diversity_loss", "generator_step", "generator_update",
           "input_gradient", "is_channels_last", "l2lda_losses", "l2lstar_loss", "normalize_grad",
           "recursive_attack", "rollout"]
