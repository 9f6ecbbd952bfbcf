"""The GPU paths (``pytest -m cuda``): on a machine with CUDA they run on the GPU, checked against
the CPU in fp32; without one they run the very same code on the CPU, so they cannot rot between
the sessions that have a GPU. ``benchmarks/gpu_check.py`` runs them first on a GPU machine.

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%), so a bf16 step differs
from the fp32 one by about 1% in the loss and a few percent in single gradients; a bug (a wrong
mask, a missing scale, a dropped gradient) moves them by far more.
"""

import contextlib
import copy
import json

import pytest
import torch
import torch.distributed as dist

from cli_helpers import ckpt_cfg, gpt2lab, needs_fast_bf16, quiet, socket_port
from gpt2lab.config import from_dict
from gpt2lab.device import autocast_for, set_backends
from gpt2lab.distributed import DistInfo, full_state_dict, load_sharded_state, shard_model, sharded_state
from gpt2lab.evals.hellaswag import evaluate_hellaswag
from gpt2lab.generate import Decoder, generate
from gpt2lab.metrics import read_metrics
from gpt2lab.model import GPT
from gpt2lab.optim import build_optimizer
from gpt2lab.train import train, train_step

pytestmark = pytest.mark.cuda
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# bf16 where the device has it (every CUDA GPU gpt2lab supports; CPUs with AVX-512 or AMX emulate it)
BF16 = torch.bfloat16
PROMPTS = [[464, 3290, 318], [40, 716, 257, 1913, 2746, 11]]


def micro(seed: int = 0, **switches) -> GPT:
    torch.manual_seed(seed)
    return GPT(from_dict({"model": {"preset": "micro", "dropout": 0.0, **switches}}).model)


def batch(model: GPT, b: int = 4, t: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, model.config.vocab_size, (b, t + 1), generator=g)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def one_step(model: GPT, x, y, device: str, autocast, train_model=None) -> tuple[float, float, dict]:
    """One real training step (gpt2lab.train.train_step); (loss, grad norm, gradients by name)."""
    model.train()
    opt = build_optimizer(model, from_dict({}).optim, device)
    loss, norm = train_step(model if train_model is None else train_model, model, opt,
                            iter([(x.to(device), y.to(device))]), accum=1, autocast=autocast, clip=1.0,
                            info=DistInfo(device=device))
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), norm.item(), grads


def cosine(a: dict, b: dict) -> float:
    va = torch.cat([a[k].flatten() for k in sorted(a)])
    vb = torch.cat([b[k].flatten() for k in sorted(b)])
    return torch.nn.functional.cosine_similarity(va, vb, dim=0).item()


@needs_fast_bf16
def test_bf16_step_on_the_device_matches_the_cpu_fp32_step():
    set_backends(DEVICE)
    ref, dev = micro(), micro()
    x, y = batch(ref)
    loss_ref, norm_ref, grads_ref = one_step(ref, x, y, "cpu", contextlib.nullcontext())
    loss, norm, grads = one_step(dev.to(DEVICE), x, y, DEVICE, autocast_for(DEVICE, BF16))
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    assert abs(loss - loss_ref) < 0.01 * loss_ref, (loss, loss_ref)
    assert abs(norm - norm_ref) < 0.03 * norm_ref, (norm, norm_ref)
    assert cosine(grads, grads_ref) > 0.99
    after_ref = {n: p.detach().cpu() for n, p in ref.named_parameters()}
    moved = max((p.detach().cpu() - after_ref[n]).abs().max().item() for n, p in dev.named_parameters())
    assert moved < 0.05, moved  # the same AdamW step (lr 6e-4 moves each weight by at most ~lr per step)


@needs_fast_bf16
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's own code
def test_compiled_step_matches_eager():
    set_backends(DEVICE)
    eager, compiled = micro().to(DEVICE), micro().to(DEVICE)
    x, y = batch(eager)
    autocast = autocast_for(DEVICE, BF16)
    loss_e, norm_e, grads_e = one_step(eager, x, y, DEVICE, autocast)
    loss_c, norm_c, grads_c = one_step(compiled, x, y, DEVICE, autocast, train_model=torch.compile(compiled))
    torch._dynamo.reset()
    assert abs(loss_c - loss_e) < 0.005 * loss_e and abs(norm_c - norm_e) < 0.02 * norm_e
    assert cosine(grads_c, grads_e) > 0.995


@pytest.mark.parametrize("switches", [{}, {"rotary": True, "qk_norm": True, "norm": "rmsnorm"}],
                         ids=["gpt2", "speedrun"])
def test_attention_runs_on_the_flash_kernel(switches):
    """The model's attention is flash-eligible (causal, no explicit mask) in training and scoring:
    restricted to the flash backend it runs, and matches the math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = micro(**switches).to(DEVICE).eval()
    x, _ = batch(model, t=128)
    x = x.to(DEVICE)
    dtype = BF16 if ON_GPU else torch.float32  # flash needs fp16/bf16 on GPUs; the CPU kernel takes fp32 too
    with torch.no_grad(), autocast_for(DEVICE, dtype):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            flash, _ = model(x)
        with sdpa_kernel([SDPBackend.MATH]):
            math, _ = model(x)
    v = model.config.vocab_size  # the padded columns are -inf in both
    flash, math = flash[..., :v].float(), math[..., :v].float()
    assert torch.isfinite(flash).all()
    assert (flash - math).abs().max().item() < (0.02 if ON_GPU else 1e-4) * math.abs().max().item()


@pytest.fixture
def restore_determinism():
    """train.deterministic switches PyTorch's process-wide flag on; later tests here run without it."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@needs_fast_bf16
def test_checkpoint_resume_on_the_device_is_exact(small_shards, tmp_path, restore_determinism):
    """6 steps straight against 3, a checkpoint, and 3 more after --resume, on the device in bf16
    with deterministic kernels: the same losses and the same final weights, bit for bit."""
    # a constant schedule: the 3-step run takes the same steps as the first 3 of the 6-step one
    extra = [f"train.device={DEVICE}", "train.dtype=bfloat16", "train.deterministic=true", "model.dropout=0.1",
             "optim.schedule=constant"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(ckpt_cfg(small_shards, straight, 6, *extra), log=quiet)
    train(ckpt_cfg(small_shards, resumed, 3, *extra), log=quiet)
    train(ckpt_cfg(small_shards, resumed, 6, *extra), resume=True, log=quiet)
    losses = [[r["loss"] for r in read_metrics(run, "train")] for run in (straight, resumed)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    from gpt2lab.checkpoint import load_model

    a, b = load_model(straight)[0].state_dict(), load_model(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def process_group():
    """A process group of one on this device (nccl on a GPU, gloo on a CPU): FSDP2 needs one even unsharded."""
    kwargs = {"device_id": torch.device("cuda", 0)} if ON_GPU else {}
    with socket_port() as port:
        pass
    dist.init_process_group("nccl" if ON_GPU else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()


@needs_fast_bf16
def test_fsdp2_mixed_precision_on_one_device(process_group, tmp_path):
    """FSDP2 (fully_shard per block, bf16 mixed precision, fp32 reductions and master weights) on one
    device trains like bf16 autocast without it, and its sharded checkpoint loads back exactly."""
    from torch.distributed.checkpoint import save
    from torch.distributed.device_mesh import init_device_mesh

    set_backends(DEVICE)
    mesh = init_device_mesh(DEVICE, (1,))
    plain, sharded = micro().to(DEVICE), shard_model(micro().to(DEVICE), mesh, BF16)
    cfg = from_dict({}).optim
    opts = [build_optimizer(m, cfg, DEVICE) for m in (plain, sharded)]
    info = DistInfo(device=DEVICE)
    for step in range(3):
        x, y = (t.to(DEVICE) for t in batch(plain, seed=step))
        lp, _ = train_step(plain, plain, opts[0], iter([(x, y)]), accum=1, autocast=autocast_for(DEVICE, BF16),
                           clip=1.0, info=info)
        ls, _ = train_step(sharded, sharded, opts[1], iter([(x, y)]), accum=1, autocast=contextlib.nullcontext(),
                           clip=1.0, info=info)
        assert abs(ls.item() - lp.item()) < 0.01 * lp.item(), (step, ls.item(), lp.item())
    full, ref = full_state_dict(sharded), plain.state_dict()
    assert all(full[k].dtype == torch.float32 for k in full)  # master weights stay fp32
    assert max((full[k].to(DEVICE) - ref[k]).abs().max().item() for k in ref) < 0.01
    save(sharded_state(sharded, opts[1]), checkpoint_id=str(tmp_path / "dcp"))
    again = shard_model(micro(seed=5).to(DEVICE), mesh, BF16)
    opt_again = build_optimizer(again, cfg, DEVICE)
    load_sharded_state(again, opt_again, tmp_path / "dcp")
    back = full_state_dict(again)
    assert all(torch.equal(back[k], full[k]) for k in full)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_generation_cached_and_compiled_equal_uncached():
    model = micro().to(DEVICE).eval()
    ref = [generate(model, p, 24, temperature=0.0, use_cache=False)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, 24, temperature=0.0) == ref, "cached decoding differs from uncached"
    dec = Decoder(model, compile=True)
    assert [generate(dec, p, 24, temperature=0.0)[0] for p in PROMPTS] == ref, "compiled decoder differs"
    torch._dynamo.reset()


@needs_fast_bf16
def test_hellaswag_on_the_device_predicts_as_cpu_fp32(small_data):
    """The packed scorer on the device, under the bf16 autocast `eval hellaswag` uses there, against the
    plain scorer on the CPU in fp32: every prediction whose fp32 margin exceeds bf16's noise agrees."""
    with open(small_data / "hellaswag_val_120.jsonl") as f:
        items = [json.loads(line) for line in f][:60]
    model = micro(seed=3)
    _, ref = evaluate_hellaswag(copy.deepcopy(model), items, "cpu", plain=True)
    _, dev = evaluate_hellaswag(model.to(DEVICE), items, DEVICE, autocast_for(DEVICE, BF16))
    diffs, clear, agree = [], 0, 0
    for r, d in zip(ref, dev, strict=True):
        lp_r, lp_d = r["completion"]["logprob"], d["completion"]["logprob"]
        diffs += [abs(a - b) / max(1.0, abs(a)) for a, b in zip(lp_r, lp_d)]
        ntok = r["completion"]["tokens"]
        means = sorted(lp / n for lp, n in zip(lp_r, ntok))
        if means[-1] - means[-2] > 0.02:  # the best ending leads by more than bf16 can move a mean log-prob
            clear += 1
            agree += r["completion"]["pred_mean"] == d["completion"]["pred_mean"]
    assert max(diffs) < 0.02, max(diffs)
    assert clear >= 20 and agree == clear, (agree, clear)


def test_cli_on_the_device(small_shards, small_data, tmp_path):
    """The command line end to end on the device: train (compiled on a GPU) with every evaluator and a
    checkpoint, resume, sample, eval loss, HellaSwag and LAMBADA."""
    run = tmp_path / "run"
    common = [f"data.dir={small_shards}", f"train.run_dir={run}", "model.preset=micro", f"train.device={DEVICE}",
              "train.micro_batch=8", "train.seq_len=64", f"train.compile={str(ON_GPU).lower()}", "eval.every=4",
              "eval.val_tokens=4096", f"eval.hellaswag_data={small_data / 'hellaswag_val_120.jsonl'}",
              "eval.hellaswag_items=20", "eval.hellaswag_every=4",
              f"eval.lambada_data={small_data / 'lambada_test_plain_text_head.txt'}", "eval.lambada_items=20",
              "eval.lambada_every=4", "eval.sample_tokens=8", "eval.sample_every=4", "optim.warmup_steps=2"]
    for extra in (["train.max_steps=4", "train.ckpt_every=4"], ["train.max_steps=6", "--resume"]):
        r = gpt2lab("train", *common, *extra, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [m["step"] for m in read_metrics(run, "train")] == list(range(1, 7))
    for args in (["sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "1"], ["eval", "loss", run],
                 ["eval", "hellaswag", run, "--data", small_data / "hellaswag_val_120.jsonl", "--limit", "20"],
                 ["eval", "lambada", run, "--data", small_data / "lambada_test_plain_text_head.txt", "--limit", "20"]):
        r = gpt2lab(*args, "--device", DEVICE, timeout=600)
        assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-3000:])
