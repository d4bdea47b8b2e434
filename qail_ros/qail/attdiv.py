"""AttDiv: how differently a quantized policy and its FP teacher look at their input.

`AttDiv(pi_q, pi_fp) = KL(S_q || S_fp)`, where S_q and S_fp are the two policies' saliency maps
(from `qail_ros.qail.saliency`) of the same input, each normalised into a probability
distribution over its grid points (or state parts). Lower is closer; 0 for identical maps.
`save_saliency_png` writes maps side by side as one PNG (matplotlib, Agg backend) for reports.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ['normalize_map', 'attdiv', 'save_saliency_png']


def normalize_map(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Each map (B, ...) as a distribution: clamp at 0, add `eps`, divide by its sum."""
    m = maps.reshape(maps.shape[0], -1).double().clamp_min(0) + eps
    return m / m.sum(1, keepdim=True)


def attdiv(s_q: Tensor, s_fp: Tensor, *, eps: float = 1e-8, reduction: str = 'mean') -> Tensor:
    """KL(S_q || S_fp) between normalised saliency maps, per sample ('none') or averaged."""
    if s_q.shape != s_fp.shape:
        raise ValueError(f'saliency maps differ in shape: {tuple(s_q.shape)} vs '
                         f'{tuple(s_fp.shape)}; compute both on the same inputs and grid')
    if s_q.dim() < 2:
        raise ValueError('saliency maps must have a batch axis: (B, ...) with B >= 1')
    p, q = normalize_map(s_q, eps), normalize_map(s_fp, eps)
    kl = (p * (p.log() - q.log())).sum(1).clamp_min(0)
    if reduction == 'none':
        return kl.float()
    if reduction == 'mean':
        return kl.mean().float()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def save_saliency_png(maps: Sequence[Tensor], path: str | Path, *,
                      titles: Sequence[str] | None = None,
                      image: Tensor | None = None, suptitle: str | None = None) -> Path:
    """Write saliency maps (each (H, W), or (D,) for a state) side by side as one PNG.

    With `image` (C, H, W in [0, 1]) the maps are upsampled and overlaid on it, as in the
    saliency figures of the papers; without it they are drawn as heat maps / bar charts.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    maps = [torch.as_tensor(m).detach().float().cpu() for m in maps]
    titles = list(titles) if titles is not None else [f'map {i}' for i in range(len(maps))]
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
    for ax, m, title in zip(axes[0], maps, titles):
        if m.dim() == 1:
            ax.bar(range(m.numel()), m.numpy(), color='tab:red')
            ax.set_xlabel('state part')
        else:
            if image is not None:
                img = torch.as_tensor(image).float().cpu()
                up = torch.nn.functional.interpolate(m[None, None], size=img.shape[-2:],
                                                     mode='bilinear', align_corners=False)[0, 0]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.imshow(up.numpy(), cmap='jet', alpha=0.5)
            else:
                ax.imshow(m.numpy(), cmap='jet')
            ax.axis('off')
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
