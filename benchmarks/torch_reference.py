"""The PyTorch reference of ``train_step.py``: the benchmark's architectures written in torch
(NCHW, mirroring ``nt_robust.models``), the augmentation, and the torch worker that times one
SGD step with the TRADES reference semantics (model.eval() during the attack from
x + 0.001·N(0, I), model.train() for CE(clean) + 6·KL(batchmean), SGD with momentum 0.9 and
weight decay 2e-4)::

    MLP, SmallCNN, WideResNet = torch_models()
    result = torch_worker(spec)    # {"framework": "torch", "images_per_s": ..., ...}

PyTorch is optional: ``torch_worker`` returns ``{"skipped": ...}`` where it cannot be imported.
"""

from __future__ import annotations

import os
from typing import Any

from harness import (ATTACK_STEPS, BETA, EPS, LR, MODELS, MOMENTUM, NUM_CLASSES, START_STD, STEP_SIZE,
                     WEIGHT_DECAY, PeakMemory, malloc_note, measure)


def torch_models():
    """The benchmark's architectures in PyTorch (NCHW), mirroring nt_robust.models."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def init_(module):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    class MLP(nn.Module):
        def __init__(self, in_features: int, width: int, depth: int):
            super().__init__()
            layers, features = [], in_features
            for _ in range(depth):
                layers += [nn.Linear(features, width), nn.ReLU()]
                features = width
            self.body = nn.Sequential(*layers, nn.Linear(features, NUM_CLASSES))

        def forward(self, x):
            return self.body(torch.flatten(x, 1))

    class SmallCNN(nn.Module):
        """conv 32-32, pool, conv 64-64, pool, dense 200-200 (× width), SAME padding."""

        def __init__(self, in_channels: int, height: int, width_px: int, width: int):
            super().__init__()
            layers, channels = [], in_channels
            for stage in (32, 64):
                for _ in range(2):
                    layers += [nn.Conv2d(channels, stage * width, 3, padding=1), nn.ReLU()]
                    channels = stage * width
                layers.append(nn.MaxPool2d(2, 2))
            flat = channels * (height // 4) * (width_px // 4)
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 200 * width), nn.ReLU(),
                                      nn.Linear(200 * width, 200 * width), nn.ReLU(),
                                      nn.Linear(200 * width, NUM_CLASSES))
            init_(self)

        def forward(self, x):
            return self.head(self.features(x))

    class BasicBlock(nn.Module):
        """TRADES WideResNet pre-activation block (BN-ReLU shared with a 1x1 shortcut)."""

        def __init__(self, in_planes: int, out_planes: int, stride: int):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_planes)
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.equal_in_out = in_planes == out_planes and stride == 1
            self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

        def forward(self, x):
            activated = F.relu(self.bn1(x))
            out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
            return (x if self.equal_in_out else self.shortcut(activated)) + out

    class WideResNet(nn.Module):
        def __init__(self, in_channels: int, depth: int, width: int):
            super().__init__()
            n = (depth - 4) // 6
            self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            blocks, planes = [], 16
            for channels, stride in ((16, 1), (32, 2), (64, 2)):
                for block in range(n):
                    blocks.append(BasicBlock(planes, channels * width, stride if block == 0 else 1))
                    planes = channels * width
            self.blocks = nn.Sequential(*blocks)
            self.bn = nn.BatchNorm2d(planes)
            self.fc = nn.Linear(planes, NUM_CLASSES)
            init_(self)

        def forward(self, x):
            out = F.relu(self.bn(self.blocks(self.stem(x))))
            return self.fc(out.mean(dim=(2, 3)))

    return MLP, SmallCNN, WideResNet


def torch_augment(x, pad: int = 4):
    """Per-example random crop of the zero-padded batch + random horizontal flip."""
    import torch
    from torch.nn import functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1))
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(n, h, w)
    flip = torch.rand(n, 1, 1) < 0.5
    cols = torch.where(flip, cols.flip(-1), cols)
    batch = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("torch_malloc"):  # the same glibc tuning as the JAX side: a like-for-like comparison
        from nt_robust.cpu.malloc import tune_malloc
        tune_malloc()
    try:
        import torch
        from torch.nn import functional as F
    except Exception as error:  # noqa: BLE001 (optional dependency: any import failure skips it)
        return {"framework": "torch", "skipped": f"import torch failed: {error!r}"}
    memory = PeakMemory()
    threads = spec.get("torch_threads") or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if spec.get("torch_cuda") and torch.cuda.is_available() else "cpu")
    MLP, SmallCNN, WideResNet = torch_models()
    h, w, c = spec["input"]
    fields = MODELS[spec["model"]]
    if fields["arch"] == "mlp":
        model = MLP(h * w * c, fields["width"], fields["depth"])
    elif fields["arch"] == "cnn":
        model = SmallCNN(c, h, w, fields["width"])
    else:
        model = WideResNet(c, fields["depth"], fields["width"])
    model = model.to(device)
    if spec.get("torch_channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (spec["batch"], c, h, w), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (spec["batch"],), generator=generator).to(device)
    trades, reference = spec["objective"] == "trades", spec.get("torch_variant") == "reference"

    def kl(adv_logits, clean_logits, reduction):
        return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction=reduction)

    def run_step():
        x = images.float().div_(255)
        if spec["augment"]:
            x = torch_augment(x)
        if spec.get("torch_channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        if trades:
            model.eval()
            if not reference:  # clean target computed once (what the JAX step does)
                with torch.no_grad():
                    clean_target = model(x)
            x_adv = x.detach() + START_STD * torch.randn_like(x)
            for _ in range(ATTACK_STEPS):
                x_adv.requires_grad_()
                with torch.enable_grad():
                    target = model(x) if reference else clean_target  # reference: re-run every step
                    loss_kl = kl(model(x_adv), target, "sum")
                grad = torch.autograd.grad(loss_kl, [x_adv])[0]
                x_adv = x_adv.detach() + STEP_SIZE * torch.sign(grad.detach())
                x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp_(0.0, 1.0)
            model.train()
            x_adv = x_adv.detach()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        if trades:
            clean_for_kl = model(x) if reference else logits  # reference: a second clean pass
            loss = loss + BETA * kl(model(x_adv), clean_for_kl, "batchmean")
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {
        "framework": "torch", "parameters": sum(p.numel() for p in model.parameters()), **measure(run_step, spec),
        "step_peak_rss_mb": memory.peak_mb(), "memory_method": memory.method,
        "torch_threads": torch.get_num_threads(), "torch_variant": spec.get("torch_variant") or "matched",
        "device": str(device), "malloc": malloc_note(),
    }
    if device.type == "cuda":
        result["peak_bytes_in_use"] = torch.cuda.max_memory_allocated()
        result["memory_method"] = "torch.cuda.max_memory_allocated()"
    return result


