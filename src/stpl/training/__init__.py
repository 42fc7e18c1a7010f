"""Training policy kept outside the models: sampling curricula, their masks, and the losses.

The predictor (:class:`stpl.EncoderStackDecoder`) runs ``T - 1`` steps on ``frames: (B, T, C,
H, W)``; step ``t`` predicts frame ``t + 1``. For ``t >= context`` its input is::

    mask[:, t-1] * frames[:, t] + (1 - mask[:, t-1]) * previous_prediction

with ``mask: (B, T-2)`` (entry ``j`` belongs to step ``j + 1``; 1 feeds the true frame).
This module builds that ``mask`` and the matching ``context`` for the three curricula of the
reference code, on the device, with torch ops only:

* PredRNN scheduled sampling (:class:`ScheduledSampling`, ``context = T_in``),
* MoDeRNN's linear schedule (:class:`LinearScheduledSampling`, ``context = T_in``),
* PredRNN-V2 reverse scheduled sampling (:class:`ReverseScheduledSampling`, ``context = 1``),

plus PredRNN-V2's decoupling loss and the MSE/L1 losses of the reference trainers, and the
balanced MSE + MAE loss of precipitation nowcasting (:func:`balanced_loss`, HKO-7). The
formulas are those of ``thuml/predrnn-pytorch`` ``run.py`` and ``czh-98/MoDeRNN``
``trainers/frame_prediction_trainer.py``; ``docs/training.md`` writes them out.

Typical loop::

    sched = ReverseScheduledSampling()
    for frames in loader:                                  # (B, T, C, H, W)
        mask, context = sched.mask(frames.shape[0], frames.shape[1], 10, device=frames.device)
        out = model(frames, context=context, mask=mask)
        loss = predrnn_loss(out.predictions, frames, out.decouple_loss)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
"""

from stpl.training.hierarchical import (
    HierarchicalLoss,
    gaussian_kl,
    hierarchical_loss,
    latent_kl,
    level_outputs,
    mspred_loss,
)
from stpl.training.losses import (
    Adapter,
    LossReduction,
    decoupling_loss,
    decoupling_term,
    modernn_loss,
    mse_l1_loss,
    predrnn_loss,
)
from stpl.training.nowcasting import (
    TemporalWeighting,
    balanced_loss,
    temporal_weights,
)
from stpl.training.physics import moment_loss, phycell_moment_loss, phydnet_loss
from stpl.training.sampling import (
    LinearScheduledSampling,
    ReverseScheduledSampling,
    SamplingMask,
    SamplingSchedule,
    ScheduledSampling,
    inference_mask,
    linear_sampling_eta,
    reverse_scheduled_sampling_mask,
    reverse_scheduled_sampling_probs,
    scheduled_sampling_eta,
    scheduled_sampling_mask,
)
from stpl.training.teacher_forcing import BatchTeacherForcing, teacher_forcing_ratio

__all__ = [
    "Adapter",
    "BatchTeacherForcing",
    "HierarchicalLoss",
    "LinearScheduledSampling",
    "LossReduction",
    "ReverseScheduledSampling",
    "SamplingMask",
    "SamplingSchedule",
    "ScheduledSampling",
    "TemporalWeighting",
    "balanced_loss",
    "decoupling_loss",
    "decoupling_term",
    "gaussian_kl",
    "hierarchical_loss",
    "inference_mask",
    "latent_kl",
    "level_outputs",
    "linear_sampling_eta",
    "modernn_loss",
    "moment_loss",
    "mse_l1_loss",
    "mspred_loss",
    "phycell_moment_loss",
    "phydnet_loss",
    "predrnn_loss",
    "reverse_scheduled_sampling_mask",
    "reverse_scheduled_sampling_probs",
    "scheduled_sampling_eta",
    "scheduled_sampling_mask",
    "teacher_forcing_ratio",
    "temporal_weights",
]
