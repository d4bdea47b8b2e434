"""The OpenVLA architecture in plain torch + transformers' Llama, under OpenVLA's parameter names.

    OpenVLAModel
      vision_backbone.featurizer.*        ViT (DINOv2-reg4 in OpenVLA-7B), timm's names
      vision_backbone.fused_featurizer.*  ViT (SigLIP so400m), timm's names
      projector.fc1 / fc2 / fc3           MLP: vision_dim -> 4 vision_dim -> llm -> llm, GELU
      language_model.*                    transformers LlamaForCausalLM (model.*, lm_head)

Each tower gives the patch tokens of its second-to-last block (no final norm, prefix tokens
dropped), the two are concatenated on the feature axis, projected, and inserted after <BOS>.
No timm and no remote code: the towers are written here from their specs (config.ViTSpec).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qail_ros.openvla.config import OpenVLAConfig, ViTSpec

__all__ = ['ViT', 'VisionBackbone', 'Projector', 'OpenVLAModel']


class LayerScale(nn.Module):
    """timm LayerScale as OpenVLA patches it: the parameter is named `scale_factor`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = 'tanh' if act == 'gelu_tanh' else 'none'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=spec.eps)
        self.attn = Attention(d, spec.num_heads)
        self.ls1 = LayerScale(d) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=spec.eps)
        self.mlp = Mlp(d, spec.mlp_dim, spec.act)
        self.ls2 = LayerScale(d) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, spec.patch_size, spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class AttentionPool(nn.Module):
    """SigLIP's MAP head (timm AttentionPoolLatent): its parameters are in the checkpoint,
    OpenVLA never runs it (it uses patch tokens), so neither do we."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        d = spec.embed_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=spec.eps)
        self.mlp = Mlp(d, spec.mlp_dim, spec.act)


class ViT(nn.Module):
    """A timm-layout VisionTransformer whose forward returns the second-to-last block's
    patch tokens (what OpenVLA's get_intermediate_layers patch returns)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(spec)
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if spec.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, d))
        pos_len = spec.num_patches + (0 if spec.no_embed_class else spec.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, d))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=spec.eps)       # unused by OpenVLA, kept for the names
        if spec.attn_pool:
            self.attn_pool = AttentionPool(spec)         # unused by OpenVLA, kept for the names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        prefix = []
        if self.spec.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.spec.reg_tokens:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.spec.no_embed_class:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        for blk in self.blocks[:len(self.blocks) - 1]:   # up to the second-to-last block
            x = blk(x)
        return x[:, self.spec.num_prefix_tokens:]


class VisionBackbone(nn.Module):
    """featurizer (+ fused_featurizer): pixel_values (B, 3 or 6, H, W) -> (B, patches, dim)."""

    def __init__(self, specs: list[ViTSpec]):
        super().__init__()
        self.featurizer = ViT(specs[0])
        self.fused_featurizer = ViT(specs[1]) if len(specs) > 1 else None
        self.embed_dim = sum(s.embed_dim for s in specs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values)
        a, b = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(a), self.fused_featurizer(b)], dim=2)


class Projector(nn.Module):
    """OpenVLA's 'gelu-mlp' projector (fused: three layers, else two)."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(x)) if self.fused else x


class OpenVLAModel(nn.Module):
    """Vision towers + projector + Llama; `generate_actions` is OpenVLA's greedy decode."""

    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        from transformers import LlamaForCausalLM
        self.config = config
        self.vision_backbone = VisionBackbone(config.vit_specs)
        llama_cfg = config.llama_config()
        self.projector = Projector(config.use_fused_vision_backbone, config.vision_dim,
                                   llama_cfg.hidden_size)
        self.language_model = LlamaForCausalLM(llama_cfg)
        #: an OrtLlamaDecoder running language_model's decoder (precision int4_ort), or None
        self.decoder = None
        #: an engine (qail_ros.openvla.vision_engine) running the towers + projector, or None
        self.vision_engine = None

    def init_random(self, seed: int = 0, std: float = 0.02) -> OpenVLAModel:
        """Seeded random weights (the tiny test checkpoint): normal(0, std) matrices, zero
        biases, unit norms and layer scales."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith('scale_factor') or (p.dim() == 1 and 'norm' in name):
                    p.fill_(1.0)
                elif p.dim() == 1 and name.endswith('bias'):
                    p.normal_(0.0, std, generator=g)
                else:
                    p.normal_(0.0, std if p.dim() > 1 else 1.0 / math.sqrt(p.numel()),
                              generator=g)
        return self

    def multimodal_embeddings(self, pixel_values: torch.Tensor,
                              input_ids: torch.Tensor) -> torch.Tensor:
        """[emb(<BOS>), projected patches, emb(rest of the prompt)] (B, L, hidden)."""
        if self.vision_engine is not None:     # batch-1 engine: one call per image
            patches = torch.cat([torch.from_numpy(self.vision_engine.infer(
                {'pixel_values': pixel_values[b:b + 1].float().numpy()})['patches'])
                for b in range(pixel_values.shape[0])])
        else:
            patches = self.projector(self.vision_backbone(pixel_values))
        emb = self.language_model.get_input_embeddings()(input_ids)
        return torch.cat([emb[:, :1], patches.to(emb.dtype), emb[:, 1:]], dim=1)

    def use_vision_engine(self, engine) -> None:
        """Run the towers + projector on `engine` from now on and free the torch towers."""
        self.vision_engine = engine
        self.vision_backbone = None
        self.projector = None

    @torch.no_grad()
    def generate_actions(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decode of `n_tokens` tokens (argmax over the whole vocabulary, as
        predict_action's generate(do_sample=False)) with a KV cache: one prefill, then one token
        per step. Every prompt of the batch has the same length (no padding). Returns token ids
        (B, n) and their logits (B, n, V)."""
        lm = self.language_model
        embeds = self.multimodal_embeddings(pixel_values, input_ids)
        if self.decoder is not None:
            return self._generate_on_decoder(embeds, n_tokens)
        out = lm(inputs_embeds=embeds, use_cache=True)
        tokens, logits = [], []
        for i in range(n_tokens):
            step_logits = out.logits[:, -1].float()
            tok = step_logits.argmax(-1)
            tokens.append(tok)
            logits.append(step_logits)
            if i + 1 < n_tokens:
                out = lm(input_ids=tok[:, None], past_key_values=out.past_key_values,
                         use_cache=True)
        return torch.stack(tokens, 1), torch.stack(logits, 1)

    def _generate_on_decoder(self, embeds: torch.Tensor,
                             n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """generate_actions on the onnxruntime decoder graph (batch 1 at a time)."""
        dec = self.decoder
        tokens, logits = [], []
        for b in range(embeds.shape[0]):
            dec.reset()
            step_logits = dec.step(embeds[b:b + 1])
            toks, lgts = [], []
            for i in range(n_tokens):
                tok = step_logits[0].argmax(-1)
                toks.append(tok)
                lgts.append(step_logits[0])
                if i + 1 < n_tokens:
                    step_logits = dec.step(dec.embed(tok))
            tokens.append(torch.stack(toks))
            logits.append(torch.stack(lgts))
        return torch.stack(tokens), torch.stack(logits)
