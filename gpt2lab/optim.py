"""The optimizers, their parameter groups, and the learning-rate schedule.

Two recipes, chosen by ``optim.optimizer``:

- ``adamw`` (GPT-2, as GPT-3 describes it): one ``torch.optim.AdamW`` with two groups, weight
  decay on 2-D tensors (matmul weights, embeddings) only.
- ``muon`` (the nanoGPT speedrun's): :class:`MuonAdamW`, **one optimizer object** whose groups
  are Muon for the blocks' 2-D weight matrices and AdamW for the embeddings, an untied LM head,
  and the gains and biases, each group with its own peak learning rate. One object keeps the
  trainer, the gradient clipping and the checkpoint as they are: ``optimizer.state_dict()``
  holds both optimizers' states, and ``checkpoint.check_optimizer_state`` checks every group.

Refinements, each a switch of ``optim``, off by default: ``muon_ns=polar_express`` (Newton-Schulz
with the Polar Express coefficients), ``muon_normuon`` (NorMuon's per-neuron normalisation) and
``cautious_wd`` (weight decay only where update and weight agree in sign); with ``cautious_wd`` the
adamw recipe runs as :class:`MuonAdamW` with AdamW groups only.

The schedule (:func:`lr_at`) gives the learning rate of ``optim.lr``; :func:`set_lr` makes it a
multiplier of each group's own peak learning rate (``optimizer.base_lrs``), so a group whose
peak is ``optim.lr`` gets exactly ``lr_at``'s value, as GPT-2's single rate did.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim.adam import adam

from .config import OptimConfig
from .device import emulated_bf16
from .errors import UserError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on 2-D tensors (matmul weights, embeddings) only; not on biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def muon_param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups for :class:`MuonAdamW`, each parameter in exactly one: ``muon`` (the Linear weights
    inside the blocks), ``embed`` (token, position and value embeddings; the tied head is the token
    embedding), ``head`` (an untied LM head), ``scalar`` (gains, biases, the value embeddings' mixing
    weights, the U-net skips' weights). Empty groups are left out."""
    named = {}
    for name, p in model.named_parameters():  # tied weights appear once, under their first name
        if p.requires_grad:
            named[name] = p
    groups: dict[str, list] = {"muon": [], "embed": [], "head": [], "scalar": []}
    for name, p in named.items():
        if name.startswith("transformer.h.") and name.endswith(".weight") and p.dim() >= 2:
            if p.dim() != 2:
                raise UserError(f"config key 'optim.optimizer': muon orthogonalises 2-D matrices, but {name} has "
                                f"{p.dim()} dimensions; use optim.optimizer=adamw")
            groups["muon"].append(p)
        elif name.startswith(("transformer.wte.", "transformer.wpe.", "value_embeds.")):
            groups["embed"].append(p)
        elif name.startswith("lm_head."):
            groups["head"].append(p)
        else:
            groups["scalar"].append(p)
    lr = {"muon": cfg.muon_lr, "embed": cfg.embed_lr or cfg.lr, "head": cfg.head_lr or cfg.lr,
          "scalar": cfg.scalar_lr or cfg.lr}
    decay = {"muon": cfg.muon_weight_decay, "embed": cfg.weight_decay, "head": cfg.weight_decay, "scalar": 0.0}
    return [{"params": ps, "kind": kind, "lr": lr[kind], "weight_decay": decay[kind]}
            for kind, ps in groups.items() if ps]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """The optimizer of ``optim.optimizer``, with ``base_lrs``: each group's peak learning rate."""
    # Fused AdamW runs the update as one kernel (CUDA, and CPU since PyTorch 2.4); optim.fused is
    # "auto", True or False (the config types it).
    use_fused = cfg.fused is True or (cfg.fused == "auto" and device_type in ("cuda", "cpu"))
    if cfg.optimizer == "muon" or cfg.cautious_wd:
        groups = muon_param_groups(model, cfg) if cfg.optimizer == "muon" else param_groups(model, cfg.weight_decay)
        opt = MuonAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, momentum=cfg.muon_momentum,
                        nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps, ns=cfg.muon_ns,
                        normuon=cfg.muon_normuon, normuon_beta2=cfg.muon_beta2, cautious_wd=cfg.cautious_wd,
                        fused=use_fused)
    else:
        opt = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=use_fused,
        )
    opt.base_lrs = [g["lr"] for g in opt.param_groups]  # type: ignore[attr-defined]  # the config's, not a checkpoint's
    return opt


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each parameter group's settings (all but its parameters): what :func:`restore_group_settings` puts back."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def restore_group_settings(optimizer: torch.optim.Optimizer, saved: list[dict]) -> None:
    """Put ``saved`` settings (this run's, from its config) back after loading a checkpoint's optimizer
    state, which brings the checkpoint's betas, eps, weight decay, fused and Muon settings with its
    moments and steps: a resumed run uses what its config.yaml says. Step counts go where this
    group's kernels take them, as torch's AdamW puts them: on the parameters' device when fused (or
    capturable), else on the CPU, whatever the checkpoint's group was."""
    for group, own in zip(optimizer.param_groups, saved):
        group.update(own)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                where = p.device if own.get("fused") or own.get("capturable") else torch.device("cpu")
                state["step"] = state["step"].to(device=where, dtype=torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, cfg: OptimConfig) -> None:
    """Each group's learning rate: ``lr`` (the schedule's value for optim.lr) times the group's peak
    over optim.lr; exactly ``lr`` for a group whose peak is optim.lr (x * 1.0 == x)."""
    for group, base in zip(optimizer.param_groups, optimizer.base_lrs):
        group["lr"] = lr * (base / cfg.lr)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then decay to lr * min_lr_ratio.

    ``wsd`` (warmup-stable-decay, trapezoidal) holds lr after warmup and decays linearly over the
    last ``decay_fraction`` of the steps, reaching lr * min_lr_ratio at the last step, also when the
    warm-up reaches into that window (the lower of the two then: a run always ends annealed).
    """
    min_lr = cfg.lr * cfg.min_lr_ratio
    warm = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * max_steps))
        start = max_steps - decay_steps
        if step < start:
            return warm
        progress = min(1.0, (step + 1 - start) / decay_steps)
        return min(warm, cfg.lr - progress * (cfg.lr - min_lr))
    if step < cfg.warmup_steps:
        return warm
    if cfg.schedule == "constant" or max_steps <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / (max_steps - cfg.warmup_steps))
    if cfg.schedule == "linear":
        coeff = 1.0 - progress
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (cfg.lr - min_lr)


# Coefficients of the quintic Newton-Schulz iteration (Keller Jordan's Muon): chosen to push every
# singular value of a matrix scaled to norm <= 1 quickly into about [0.7, 1.2], not exactly to 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel et al. 2025), the coefficients modded-nanogpt runs: a triple per iteration, each the
# minimax-best odd quintic for where the iterations before it left the singular values (computed for 5
# iterations, a safety factor of 2e-2 and a cushion of 2). Every singular value in [1e-3, 1] lands in about
# [0.86, 1.14]. Iterations past the fifth run (15/8, -10/8, 3/8), the Newton-Schulz polynomial that fixes 1.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_TAIL = (1.875, -1.25, 0.375)


def ns_coefficients(kind: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of ``steps`` iterations: ``quintic`` (the same each time) or ``polar_express``."""
    if kind == "polar_express":
        return [POLAR_EXPRESS[i] if i < len(POLAR_EXPRESS) else POLAR_EXPRESS_TAIL for i in range(steps)]
    if kind != "quintic":
        raise ValueError(f"Newton-Schulz kind must be quintic or polar_express, got {kind!r}")
    return [NS_COEFFS] * steps


def ns_dtype(device: torch.device) -> torch.dtype:
    """Newton-Schulz's dtype: bf16 where it is fast; fp32 on a CPU that emulates bf16 (100x slower there)."""
    return torch.float32 if emulated_bf16(torch.bfloat16, device) else torch.bfloat16


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  kind: str = "quintic") -> torch.Tensor:
    """An approximate ``U V^T`` of ``g = U S V^T`` for a matrix or a batch of them (..., m, n), in ``dtype``.

    The iteration X <- a X + (b A + c A^2) X with A = X X^T is an odd polynomial in X: it keeps
    the singular vectors and maps each singular value s to p(s), which after a few steps lies near
    1 for any s in (0, 1]. Run on the shorter side (X X^T is min(m, n) square). bf16 is enough: the
    result is only a direction (and bf16 matmuls are the fast ones). ``kind``: see :func:`ns_coefficients`;
    Polar Express scales by the norm times 1.02, the safety margin its coefficients were made for.
    """
    x = g.to(dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    norm = x.norm(dim=(-2, -1), keepdim=True)  # Frobenius norm >= spectral: singular values <= 1
    x = x / (norm * 1.02 + 1e-6) if kind == "polar_express" else x / (norm + 1e-7)
    for a, b, c in ns_coefficients(kind, steps):
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return x if wide else x.mT


def normuon(o: torch.Tensor, second_moment: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon (Li et al. 2025; modded-nanogpt's and nanochat's form): each neuron's part of the orthogonalised
    update ``o`` (a row; a column of a wide matrix) divided by its RMS over recent steps (``second_moment``,
    updated in place, fp32), then the whole scaled back to ``o``'s Frobenius norm, so Muon's rate keeps its meaning."""
    of = o.float()
    second_moment.lerp_(of.square().mean(dim=-1 if o.size(-2) >= o.size(-1) else -2, keepdim=True), 1 - beta2)
    scaled = of * second_moment.clamp_min(1e-10).rsqrt()
    return scaled * (of.norm() / scaled.norm().clamp_min(1e-10))


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups whose ``kind`` is ``"muon"``, AdamW (decoupled weight decay) for the others.

    Muon (Keller Jordan, 2024): keep a momentum of the gradient (Nesterov by default), replace it
    by its nearest semi-orthogonal matrix (:func:`orthogonalize`, a few Newton-Schulz steps in bf16,
    matrices of one shape stacked into one batched call), scale by sqrt(max(1, rows / cols)) so
    every matrix's update has about the same RMS per element, and step by ``lr``. Every direction
    of the matrix moves alike, which is what speeds up training of the hidden layers; embeddings
    and the head are lookups and classifiers, for which AdamW stays better.

    The AdamW groups run ``torch.optim.adam.adam`` (the functional form of AdamW) (fused where ``fused``) with the state
    ``torch.optim.AdamW`` keeps (``step``, ``exp_avg``, ``exp_avg_sq``); Muon's state is
    ``momentum_buffer`` (and NorMuon's ``second_moment``, a column or a row). Each is computed the same on
    every process (DDP replicas stay equal).
    Under FSDP2 a matrix is a DTensor sharded by rows: its momentum stays sharded, the update is
    gathered whole (one all-gather per matrix, in the same order on every rank), orthogonalised
    on every rank alike, and each rank keeps its own rows of it.

    Group settings: ``ns`` (``quintic`` or ``polar_express``), ``normuon`` with ``normuon_beta2``, and
    ``cautious_wd``: weight decay only on the coordinates where the update u (the step is -lr u) and the
    weight have the same sign (Chen et al. 2025), in Muon and AdamW groups alike.
    """

    def __init__(self, params, *, lr: float = 1e-3, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, ns: str = "quintic",
                 normuon: bool = False, normuon_beta2: float = 0.95, cautious_wd: bool = False, fused: bool = False):
        # fused is a group setting, as in torch's AdamW: load_state_dict puts a fused group's step
        # counts on the parameters' device by it
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns=ns, normuon=normuon, normuon_beta2=normuon_beta2,
                        cautious_wd=cautious_wd, kind="adamw", fused=fused)
        super().__init__(params, defaults)
        for g in self.param_groups:
            if g["kind"] == "muon" and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon groups take 2-D matrices only")
            if g["kind"] == "muon" and g["normuon"] and any(isinstance(p, DTensor) for p in g["params"]):
                raise ValueError("NorMuon keeps a whole matrix's statistics: it does not run on FSDP2 shards")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict) -> None:
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        by_shape: dict[tuple, list] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)  # buf = mom * buf + (1 - mom) * grad
            update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
            # FSDP2 holds a shard: gather the whole matrix (in the same order on every rank)
            if isinstance(update, DTensor):
                update = update.full_tensor()
            by_shape[tuple(p.shape)].append((p, update))
        for (rows, cols), items in by_shape.items():
            stacked = torch.stack([u for _, u in items])
            ortho = orthogonalize(stacked, group["ns_steps"], dtype=ns_dtype(stacked.device), kind=group["ns"])
            scale = max(1.0, rows / cols) ** 0.5
            for (p, _), o in zip(items, ortho):
                if group["normuon"]:
                    o = normuon(o, self._second_moment(p), group["normuon_beta2"])
                o = o.to(p.dtype)
                if isinstance(p, DTensor):  # every rank computed the whole update: keep this rank's shard of it
                    o = distribute_tensor(o, p.device_mesh, p.placements, src_data_rank=None)
                if wd and group["cautious_wd"]:  # the update is scale * o
                    p.sub_(p * (o * p >= 0), alpha=lr * wd)
                elif wd:
                    p.mul_(1 - lr * wd)
                p.add_(o, alpha=-lr * scale)

    def _second_moment(self, p: torch.Tensor) -> torch.Tensor:
        """NorMuon's second moment of matrix ``p``: a column (rows, 1), or for a wide matrix a row (1, cols)."""
        state = self.state[p]
        if "second_moment" not in state:
            rows, cols = p.shape
            shape = (rows, 1) if rows >= cols else (1, cols)
            state["second_moment"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        return state["second_moment"]

    def _adamw(self, group: dict) -> None:
        fused = group["fused"]
        params, grads, avgs, sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        if wd and group["cautious_wd"]:
            # AdamW's update u has the sign of the new first moment, and decoupled decay comes first, as torch's does
            for p, g, m in zip(params, grads, avgs):
                p.sub_(p * (m.lerp(g, 1 - beta1) * p >= 0), alpha=group["lr"] * wd)
            wd = 0.0
        adam(params, grads, avgs, sqs, [], steps, foreach=False if fused else None, fused=fused or None,
             decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=wd, eps=group["eps"], maximize=False)
