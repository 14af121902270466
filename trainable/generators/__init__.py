"""The L2L-DA method's learned attackers, in one place for the defenses and the matrix columns (docs/method.md).

:mod:`~trainable.generators.nets` — the U-Net generators (L2L-DA's with class-conditional
BN and z, L2L*'s); :mod:`~trainable.generators.rollout` — the recursive stochastic attack
(Eq. 5) and the input gradient it reads; :mod:`~trainable.generators.losses` — L_cls and
L_div (Eqs. 6–7) and the generator's ascent step.
"""
from trainable.generators.losses import diversity_loss, generator_step, l2lda_losses, l2lstar_loss
from trainable.generators.nets import (CondBatchNorm2d, Generator, L2LStarGenerator, PlainBatchNorm2d, UNet,
                                       build_generator)
from trainable.generators.rollout import (GRAD_STABILISER, input_gradient, normalize_grad, recursive_attack,
                                          rollout)

__all__ = ["GRAD_STABILISER", "CondBatchNorm2d", "Generator", "L2LStarGenerator", "PlainBatchNorm2d", "UNet",
           "build_generator", "diversity_loss", "generator_step", "input_gradient", "l2lda_losses", "l2lstar_loss",
           "normalize_grad", "recursive_attack", "rollout"]
