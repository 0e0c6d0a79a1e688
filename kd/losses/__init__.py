"""The distillation losses: Hinton's (2015) and three successors that read nothing but the
teacher's logits, so they fit the cached soft targets and the online teacher alike.

Each is the whole training loss as its authors train it, cross-entropy with the labels (CE)
included, chosen by `distill.loss`; every knob but kd's is named after its loss (`dkd_beta`).

- kd: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
  arXiv:1503.02531, section 2 / eq. 2: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
  (1 - alpha) * CE, with the top-level `T` and `alpha` (`alpha = 1`, function matching, reads no
  label).
  - KL is averaged over the batch (`reduction="batchmean"`); `"mean"` would also divide by the
    number of classes and silently shrink the soft term.
  - T^2 keeps the soft term's gradient scale independent of T: d/ds of the soft term is
    T * (softmax(s/T) - softmax(t/T)) / batch, which tends to (s - t) / (classes * batch) at high
    T for zero-mean logits (the paper's logit-matching limit).
- dkd: Zhao et al. (2022), "Decoupled Knowledge Distillation", CVPR, eq. 7, as the authors'
  mdistiller trains it: dkd_ce * CE + warm-up * (dkd_alpha * TCKD + dkd_beta * NCKD) at
  temperature dkd_T, the second term ramped up linearly over the first `dkd_warmup` share of the
  epochs (mdistiller: CE weight 1, alpha 1, beta 8, T 4, 20 of 240 epochs on CIFAR-100).
  TCKD is KD on the binary split (target class, all others); NCKD is KD among the non-target
  classes alone. KD itself is TCKD + (1 - p_target of the teacher) * NCKD (their eq. 5), which
  couples the non-target term to the teacher's confidence; DKD weighs the two freely.
- ls: Sun et al. (2024), "Logit Standardization in Knowledge Distillation", CVPR, as their code
  trains KD with it: ls_ce * CE + ls_kd * T^2 * KL on each row's z-scores (logits minus their mean,
  over their sample standard deviation) at base temperature ls_T (theirs on CIFAR-100: CE weight
  1, KD weight 9, base temperature 2), so the student matches the teacher's logit *relations*, not
  their range.
- dist: Huang et al. (2022), "Knowledge Distillation from A Stronger Teacher", NeurIPS, as the
  authors' classification code trains it: CE + tau^2 * (dist_beta * (1 - mean Pearson correlation
  of each image's class probabilities) + dist_gamma * (1 - mean Pearson correlation of each
  class's probabilities over the batch)), probabilities at temperature dist_tau (theirs: 1, so no
  temperature; beta = gamma = 1). The second (intra-class) term is not a mean over images: under
  torchrun it is each rank's share of the batch, as in the authors' own multi-GPU training.

Adding a loss: write its whole loss below, add it to `LOSS`, and add its name and keys to the
`distill` section of kd/config/params.py (and its default values to conf/config.yaml).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kd.config.params import LOSSES, Distill
from kd.train.cross_entropy import hard_loss

EPS = 1e-7  # LS's guard for a row whose logits are all equal (standard deviation 0)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / T, dim=1)
    p_teacher = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)


def _kl_rows(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each row, from log-probabilities: (N, K) -> (N,)."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)


def _split(logits: torch.Tensor, labels: torch.Tensor, T: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """At temperature T: log (p_target, 1 - p_target) per row (N, 2), and the log-softmax over the
    non-target classes alone (N, K - 1), in class order."""
    z = logits / T
    target = F.one_hot(labels, z.shape[1]).bool()
    others = z[~target].view(len(z), -1)
    total = torch.logsumexp(z, 1, keepdim=True)
    binary = torch.cat([z[target].unsqueeze(1), torch.logsumexp(others, 1, keepdim=True)], 1) - total
    return binary, F.log_softmax(others, 1)


def tckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
         T: float) -> torch.Tensor:
    """DKD's target-class term per row: T^2 * KL of the binary (target, non-target) split."""
    return _kl_rows(_split(student_logits, labels, T)[0], _split(teacher_logits, labels, T)[0]) * T * T


def nckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
         T: float) -> torch.Tensor:
    """DKD's non-target-class term per row: T^2 * KL among the non-target classes."""
    return _kl_rows(_split(student_logits, labels, T)[1], _split(teacher_logits, labels, T)[1]) * T * T


Hard = Callable[[], torch.Tensor]  # the cross-entropy with the labels, computed when asked for


def _weighted(weight: float, term: Hard) -> torch.Tensor | float:
    """weight * term(), without computing the term (nor reading a label) at weight 0."""
    return weight * term() if weight else 0.0


def dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, T: float, alpha: float,
        cfg: Distill, epoch: int) -> torch.Tensor:
    span = cfg.dkd_warmup * cfg.epochs  # in epochs, counted from 1 as mdistiller counts them
    warm = min(epoch / span, 1.0) if span else 1.0
    decoupled = cfg.dkd_alpha * tckd(s, t, y, cfg.dkd_T) + cfg.dkd_beta * nckd(s, t, y, cfg.dkd_T)
    return _weighted(cfg.dkd_ce, ce) + warm * decoupled.mean()


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Each row's z-scores: minus the row's mean, over its sample (n - 1) standard deviation."""
    return (logits - logits.mean(1, keepdim=True)) / (EPS + logits.std(1, keepdim=True))


def ls(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, T: float, alpha: float,
       cfg: Distill, epoch: int) -> torch.Tensor:
    return _weighted(cfg.ls_ce, ce) + cfg.ls_kd * soft_loss(standardize(s), standardize(t), cfg.ls_T)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: (N, K) -> (N,)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def dist(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, T: float, alpha: float,
         cfg: Distill, epoch: int) -> torch.Tensor:
    tau = cfg.dist_tau
    p_s, p_t = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()  # each image: its classes' probabilities
    intra = 1 - _pearson_rows(p_s.T, p_t.T).mean()  # each class: its probability over the batch
    return ce() + tau * tau * (cfg.dist_beta * inter + cfg.dist_gamma * intra)


def kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, ce: Hard, T: float, alpha: float,
       cfg: Distill | None, epoch: int) -> torch.Tensor:
    if alpha == 1:  # function matching: no label is read
        return soft_loss(s, t, T)
    if alpha == 0:
        return ce()
    return alpha * soft_loss(s, t, T) + (1 - alpha) * ce()


# name -> whole loss(student logits, teacher logits, labels, CE, T, alpha, the distill section,
# epoch from 1)
LOSS: dict[str, Callable[..., torch.Tensor]] = {"kd": kd, "dkd": dkd, "ls": ls, "dist": dist}
if set(LOSS) != set(LOSSES):  # the params schema names exactly the losses written here
    raise ImportError(f"kd.losses writes {sorted(LOSS)} but kd.config.params allows {sorted(LOSSES)}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, T: float, alpha: float,
                      partner_labels: torch.Tensor | None = None,
                      lam: torch.Tensor | None = None, *, cfg: Distill | None = None,
                      epoch: int = 1) -> torch.Tensor:
    """`cfg.loss`'s whole training loss (kd, Hinton eq. 2, without a cfg); T and alpha are kd's.
    The cross-entropy is mixup's mix of the two labels' where the batch is mixed."""
    def ce() -> torch.Tensor:
        return hard_loss(student_logits, labels, partner_labels, lam)
    loss = LOSS[cfg.loss if cfg is not None else "kd"]
    return loss(student_logits, teacher_logits, labels, ce, T, alpha, cfg, epoch)
