"""The L2L-DA method's learned attackers: generator nets, the recursive rollout (Eq. 5) and its losses."""
from trainable.generators.nets import (GRAD_STABILISER, CondBatchNorm2d, Generator, L2LStarGenerator, PlainBatchNorm2d,
                                       UNet, build_generator, diversity_loss, input_gradient, normalize_grad,
                                       recursive_attack, rollout)
