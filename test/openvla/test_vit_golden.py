"""Golden test of the OpenVLA vision towers (qail_ros.openvla.modeling.ViT) against an independent
implementation on the same random weights.

The towers are written from timm's VisionTransformer (OpenVLA runs timm's
vit_large_patch14_reg4_dinov2 and vit_so400m_patch14_siglip). timm itself cannot be installed
beside the pinned CPU torch here: it needs torchvision, and PyPI's torchvision wheels (0.28.0
and 0.29.1 both) fail to import against torch 2.13.0+cpu with `RuntimeError: operator
torchvision::nms does not exist`. The reference is therefore transformers'
Dinov2WithRegistersModel / Dinov2Model / SiglipVisionModel (a pinned dependency), run with eager
attention, their own default activation and LayerNorm eps, on small configs that keep every
flag of the real towers (config.TIMM_SPECS): class and register tokens, where the position
embedding applies, layer scale, the GELU variant, the MAP head's parameters.

The weight mapping is the one timm applies to DINOv2 checkpoints: registers become `reg_token`,
the class token absorbs its position embedding (timm's reg4 model has `no_embed_class`), q/k/v
stack into one `qkv` linear. Every parameter of both models is mapped (strict loading), and
every block's output, OpenVLA's second-to-last-block patch tokens and the final norm are
compared at float32 tolerance.
"""
from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip('torch', reason='the vision towers are torch modules')
transformers = pytest.importorskip('transformers', reason='the reference towers come from '
                                   'transformers (pip install -r requirements.txt)')

from qail_ros.openvla.config import TIMM_SPECS  # noqa: E402
from qail_ros.openvla.modeling import ViT, VisionBackbone  # noqa: E402

DINO_ID = 'vit_large_patch14_reg4_dinov2.lvd142m'
SIGLIP_ID = 'vit_so400m_patch14_siglip_224'
ATOL = RTOL = 1e-5


def small(timm_id: str, **sizes):
    """The spec OpenVLA's config names, every flag kept, at a size that runs in milliseconds."""
    spec = TIMM_SPECS[timm_id](56)             # 56 px at patch 14: 16 patches
    return dataclasses.replace(spec, **{'embed_dim': 32, 'depth': 3, 'num_heads': 4, **sizes})


def randomize(model, seed: int) -> None:
    """Every parameter random (LayerNorm scales and layer scales around 1, not at their init
    values), so a parameter the mapping drops or misplaces changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            around_one = name.endswith(('lambda1', 'layernorm.weight', 'layer_norm1.weight',
                                        'layer_norm2.weight', 'norm1.weight', 'norm2.weight',
                                        'post_layernorm.weight'))
            p.copy_(1.0 + 0.2 * noise if around_one else 0.2 * noise)


def _qkv(attn, prefix: str) -> dict:
    return {f'{prefix}.qkv.weight': torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                               attn.v_proj.weight]),
            f'{prefix}.qkv.bias': torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                             attn.v_proj.bias])}


def _lin(state: dict, name: str, module) -> None:
    state[f'{name}.weight'] = module.weight
    if getattr(module, 'bias', None) is not None:
        state[f'{name}.bias'] = module.bias


def dinov2_to_ours(hf, spec) -> dict:
    """transformers Dinov2(WithRegisters)Model state -> our ViT's (timm's DINOv2 conversion)."""
    emb = hf.embeddings
    s: dict = {}
    _lin(s, 'patch_embed.proj', emb.patch_embeddings.projection)
    pos = emb.position_embeddings                       # (1, 1 + patches, d): cls + patches
    if spec.no_embed_class:                             # timm reg4: pos embed on patches only
        s['cls_token'] = emb.cls_token + pos[:, :1]
        s['pos_embed'] = pos[:, 1:]
    else:
        s['cls_token'] = emb.cls_token
        s['pos_embed'] = pos
    if spec.reg_tokens:
        s['reg_token'] = emb.register_tokens
    for i, layer in enumerate(hf.encoder.layer):
        b = f'blocks.{i}'
        _lin(s, f'{b}.norm1', layer.norm1)
        s.update(_qkv(layer.attention, f'{b}.attn'))
        _lin(s, f'{b}.attn.proj', layer.attention.o_proj)
        s[f'{b}.ls1.scale_factor'] = layer.layer_scale1.lambda1
        _lin(s, f'{b}.norm2', layer.norm2)
        _lin(s, f'{b}.mlp.fc1', layer.mlp.fc1)
        _lin(s, f'{b}.mlp.fc2', layer.mlp.fc2)
        s[f'{b}.ls2.scale_factor'] = layer.layer_scale2.lambda1
    _lin(s, 'norm', hf.layernorm)
    return s


def siglip_to_ours(hf) -> dict:
    """transformers SiglipVisionModel state -> our ViT's (timm's names, MAP head included)."""
    emb = hf.embeddings
    s: dict = {}
    _lin(s, 'patch_embed.proj', emb.patch_embedding)
    s['pos_embed'] = emb.position_embedding.weight[None]
    for i, layer in enumerate(hf.encoder.layers):
        b = f'blocks.{i}'
        _lin(s, f'{b}.norm1', layer.layer_norm1)
        s.update(_qkv(layer.self_attn, f'{b}.attn'))
        _lin(s, f'{b}.attn.proj', layer.self_attn.out_proj)
        _lin(s, f'{b}.norm2', layer.layer_norm2)
        _lin(s, f'{b}.mlp.fc1', layer.mlp.fc1)
        _lin(s, f'{b}.mlp.fc2', layer.mlp.fc2)
    _lin(s, 'norm', hf.post_layernorm)
    head, d = hf.head, hf.config.hidden_size
    s['attn_pool.latent'] = head.probe
    s['attn_pool.q.weight'] = head.attention.in_proj_weight[:d]
    s['attn_pool.q.bias'] = head.attention.in_proj_bias[:d]
    s['attn_pool.kv.weight'] = head.attention.in_proj_weight[d:]
    s['attn_pool.kv.bias'] = head.attention.in_proj_bias[d:]
    _lin(s, 'attn_pool.proj', head.attention.out_proj)
    _lin(s, 'attn_pool.norm', head.layernorm)
    _lin(s, 'attn_pool.mlp.fc1', head.mlp.fc1)
    _lin(s, 'attn_pool.mlp.fc2', head.mlp.fc2)
    return s


def hf_dinov2(spec, seed: int):
    """The reference DINOv2 tower (with registers when the spec has them), eager attention,
    transformers' defaults for everything the sizes do not set (GELU, eps, qkv bias)."""
    assert spec.mlp_dim % spec.embed_dim == 0          # transformers takes an integer ratio
    common = dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth,
                  num_attention_heads=spec.num_heads, mlp_ratio=spec.mlp_dim // spec.embed_dim,
                  image_size=spec.image_size, patch_size=spec.patch_size,
                  attn_implementation='eager')
    if spec.reg_tokens:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=spec.reg_tokens,
                                                        **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    randomize(model, seed)
    return model.eval()


def hf_siglip(spec, seed: int):
    config = transformers.SiglipVisionConfig(
        hidden_size=spec.embed_dim, intermediate_size=spec.mlp_dim,
        num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
        image_size=spec.image_size, patch_size=spec.patch_size, attn_implementation='eager')
    model = transformers.SiglipVisionModel(config)
    randomize(model, seed)
    return model.eval()


def ours_from(spec, state: dict) -> ViT:
    vit = ViT(spec).eval()
    missing, unexpected = vit.load_state_dict({k: v.detach().clone() for k, v in state.items()},
                                              strict=False)
    assert not missing and not unexpected, (missing, unexpected)   # every parameter mapped
    return vit


def block_outputs(vit: ViT, pixels):
    """Our forward (second-to-last block's patch tokens) and every block's full token output,
    the last block and the final norm run on our modules after the forward stops."""
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o)) for blk in vit.blocks]
    try:
        out = vit(pixels)
        seen.append(vit.blocks[-1](seen[-1]))
    finally:
        for h in hooks:
            h.remove()
    return out, seen[:len(vit.blocks)], vit.norm(seen[-1])


def reference_outputs(hf, pixels):
    res = hf(pixel_values=pixels, output_hidden_states=True)
    return res.hidden_states, res.last_hidden_state


def compare(vit, hf, spec, pixels):
    with torch.no_grad():
        ours, blocks, final = block_outputs(vit, pixels)
        hidden, last = reference_outputs(hf, pixels)
    depth = spec.depth
    assert len(hidden) == depth + 1 and len(blocks) == depth   # embeddings + each layer
    for i in range(depth):
        torch.testing.assert_close(blocks[i], hidden[i + 1], atol=ATOL, rtol=RTOL,
                                   msg=lambda m, i=i: f'block {i}: {m}')
    torch.testing.assert_close(final, last, atol=ATOL, rtol=RTOL)
    # what OpenVLA takes: the second-to-last block's output without the prefix tokens
    torch.testing.assert_close(ours, hidden[depth - 1][:, spec.num_prefix_tokens:],
                               atol=ATOL, rtol=RTOL)
    assert ours.shape == (pixels.shape[0], spec.num_patches, spec.embed_dim)
    return ours


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(7))


def test_dinov2_reg4_tower_matches_transformers(pixels):
    spec = small(DINO_ID, mlp_dim=128)
    assert spec.reg_tokens == 4 and spec.no_embed_class and spec.layer_scale
    hf = hf_dinov2(spec, seed=0)
    assert spec.eps == hf.config.layer_norm_eps and hf.config.hidden_act == 'gelu'
    compare(ours_from(spec, dinov2_to_ours(hf, spec)), hf, spec, pixels)


def test_dinov2_tower_without_registers_matches_transformers(pixels):
    """The other position-embedding layout: the class token's position embedded too."""
    spec = small(DINO_ID, mlp_dim=128, reg_tokens=0, no_embed_class=False)
    hf = hf_dinov2(spec, seed=1)
    assert isinstance(hf, transformers.Dinov2Model)
    compare(ours_from(spec, dinov2_to_ours(hf, spec)), hf, spec, pixels)


def test_siglip_tower_matches_transformers(pixels):
    spec = small(SIGLIP_ID, mlp_dim=72)
    assert spec.act == 'gelu_tanh' and spec.num_prefix_tokens == 0 and spec.attn_pool
    hf = hf_siglip(spec, seed=2)
    assert spec.eps == hf.config.layer_norm_eps
    assert hf.config.hidden_act == 'gelu_pytorch_tanh'   # SigLIP's own activation
    compare(ours_from(spec, siglip_to_ours(hf)), hf, spec, pixels)


def test_a_wrong_activation_or_token_layout_is_caught(pixels):
    """The comparison has teeth: exact GELU in the SigLIP tower, or the DINOv2 class token's
    position embedding left out, moves the output well past the tolerance."""
    spec = small(SIGLIP_ID, mlp_dim=72)
    hf = hf_siglip(spec, seed=2)
    wrong = ours_from(dataclasses.replace(spec, act='gelu'), siglip_to_ours(hf))
    with pytest.raises(AssertionError):
        compare(wrong, hf, spec, pixels)
    spec = small(DINO_ID, mlp_dim=128)
    hf = hf_dinov2(spec, seed=0)
    state = dinov2_to_ours(hf, spec)
    state['cls_token'] = hf.embeddings.cls_token           # without its position embedding
    with pytest.raises(AssertionError):
        compare(ours_from(spec, state), hf, spec, pixels)


def test_fused_backbone_concatenates_both_towers(pixels):
    """VisionBackbone (OpenVLA's dinosiglip): channels 0-2 to DINOv2, 3-5 to SigLIP, patch
    features concatenated: the two references' second-to-last-layer patch tokens."""
    dino_spec = small(DINO_ID, mlp_dim=128)
    siglip_spec = small(SIGLIP_ID, embed_dim=24, mlp_dim=72)
    dino, siglip = hf_dinov2(dino_spec, seed=3), hf_siglip(siglip_spec, seed=4)
    backbone = VisionBackbone([dino_spec, siglip_spec]).eval()
    state = {f'featurizer.{k}': v for k, v in dinov2_to_ours(dino, dino_spec).items()}
    state.update({f'fused_featurizer.{k}': v for k, v in siglip_to_ours(siglip).items()})
    backbone.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    second = pixels.flip(0) * 0.5
    with torch.no_grad():
        got = backbone(torch.cat([pixels, second], dim=1))
        a = reference_outputs(dino, pixels)[0][dino_spec.depth - 1][:, 5:]
        b = reference_outputs(siglip, second)[0][siglip_spec.depth - 1]
    assert backbone.embed_dim == 32 + 24
    torch.testing.assert_close(got, torch.cat([a, b], dim=2), atol=ATOL, rtol=RTOL)
