"""A tiny, randomly initialised OpenVLA checkpoint in the real layout (tests, demos, the launch).

Same structure as openvla/openvla-7b: fused DINOv2-reg4-style + SigLIP-style towers (the
spec flags of the real ones, e.g. register tokens, layer scale, tanh GELU, MAP head; tiny
sizes in config.json's `vit_specs`), the three-layer GELU projector, a 2-layer Llama, the
Hugging Face files (config.json with norm_stats, sharded safetensors + index, tokenizer.json +
tokenizer_config.json). The weights are seeded random: the actions are meaningless.

The tokenizer is a deterministic character-level WordLevel tokenizer (tokenizers library):
<unk> <s> </s>, the empty piece '\u2581' (Llama's 29871 role), every printable ASCII character
and newline, then filler pieces up to `vocab_size`; its last 256 ids are the action tokens, as
the last 256 of Llama's 32000 are OpenVLA's. <BOS> is prepended by its post-processor.
"""
from __future__ import annotations

import json
from pathlib import Path

from qail_ros.openvla.config import OpenVLAConfig, ViTSpec

__all__ = ['tiny_config', 'build_tiny_tokenizer', 'make_tiny_checkpoint', 'TINY_NORM_STATS']

#: Two data sets, as the real checkpoint has many: forces unnorm_key handling in tests.
TINY_NORM_STATS = {
    'bridge_orig': {'action': {
        'mean': [0.0002, 0.0001, -0.0001, 0.0, 0.0, 0.0, 0.58],
        'std': [0.0097, 0.0135, 0.0127, 0.0284, 0.0304, 0.0768, 0.4974],
        'max': [0.4157, 0.2585, 0.2934, 0.5, 0.7, 1.0, 1.0],
        'min': [-0.4007, -0.2975, -0.3302, -0.5, -0.7, -1.0, 0.0],
        'q01': [-0.0290, -0.0418, -0.0262, -0.0805, -0.0917, -0.2082, 0.0],
        'q99': [0.0287, 0.0409, 0.0405, 0.0788, 0.0823, 0.2066, 1.0],
        'mask': [True, True, True, True, True, True, False]}},
    'tiny_sim': {'action': {
        'q01': [-0.05, -0.05, -0.05, -0.2, -0.2, -0.2, 0.0],
        'q99': [0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 1.0],
        'mask': [True, True, True, True, True, True, False]}},
}

SPECIAL = ['<unk>', '<s>', '</s>', '\u2581']


def tiny_config(tokenizer_vocab: int = 448, image_size: int = 56, *, patch_size: int = 14,
                llm_hidden: int = 64, llm_layers: int = 2, llm_heads: int = 4,
                max_positions: int = 256) -> OpenVLAConfig:
    """An OpenVLA config of a few hundred thousand parameters (< 2 MB in float32) by default;
    the keyword sizes make the small trainable VLA of the manipulation benchmark."""
    dino = ViTSpec(image_size=image_size, patch_size=patch_size, embed_dim=64, depth=3,
                   num_heads=2, mlp_dim=128, class_token=True, reg_tokens=4,
                   no_embed_class=True, layer_scale=True, act='gelu')
    siglip = ViTSpec(image_size=image_size, patch_size=patch_size, embed_dim=48, depth=3,
                     num_heads=2, mlp_dim=96, act='gelu_tanh', attn_pool=True,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    text = {'model_type': 'llama', 'vocab_size': tokenizer_vocab + 64,
            'hidden_size': llm_hidden, 'intermediate_size': 2 * llm_hidden,
            'num_hidden_layers': llm_layers, 'num_attention_heads': llm_heads,
            'num_key_value_heads': llm_heads, 'max_position_embeddings': max_positions,
            'rms_norm_eps': 1e-6,
            'pad_token_id': tokenizer_vocab, 'torch_dtype': 'float32'}
    raw = {'architectures': ['OpenVLAForActionPrediction'], 'model_type': 'openvla',
           'vision_backbone_id': 'dinosiglip-vit-so-224px', 'llm_backbone_id': 'llama2-7b-pure',
           'arch_specifier': 'no-align+fused-gelu-mlp', 'image_resize_strategy': 'resize-naive',
           'llm_max_length': 2048, 'pad_token_id': tokenizer_vocab, 'output_projector_states':
           False, 'timm_model_ids': ['vit_large_patch14_reg4_dinov2.lvd142m',
                                     'vit_so400m_patch14_siglip_224'],
           'timm_override_act_layers': [None, None], 'image_sizes': [image_size, image_size],
           'torch_dtype': 'float32', 'qail_ros_note': 'tiny random OpenVLA for tests; '
           'vit_specs overrides the tower sizes the timm ids would give'}
    cfg = OpenVLAConfig(vit_specs=[dino, siglip], text_config=text, norm_stats=TINY_NORM_STATS,
                        n_action_bins=256, pad_to_multiple_of=64, use_fused_vision_backbone=True,
                        raw=raw)
    cfg.raw['vit_specs'] = [s.to_dict() for s in cfg.vit_specs]
    return cfg


def build_tiny_tokenizer(vocab_size: int):
    """The deterministic character tokenizer (a tokenizers.Tokenizer)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    pieces = SPECIAL + [chr(c) for c in range(32, 127)] + ['\n']
    if vocab_size < len(pieces) + 256:
        raise ValueError(f'vocab_size {vocab_size} < {len(pieces) + 256} (characters + 256 '
                         'action tokens)')
    pieces += [f'<extra_{i}>' for i in range(vocab_size - len(pieces))]
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A $B',
                                                       special_tokens=[('<s>', 1)])
    return tok


def make_tiny_checkpoint(path: str | Path, *, seed: int = 0, shards: int = 2,
                         std: float = 0.1, **sizes) -> Path:
    """Write the tiny checkpoint directory; same seed -> same tensors. `std` 0.1 (not the
    usual 0.02) so that the random model's greedy tokens depend on the image and the
    instruction, as a trained model's do (at 0.02 they hardly change). `sizes`: tiny_config's
    keywords (image_size, llm_hidden, llm_layers, llm_heads, max_positions) for larger random
    checkpoints of the same layout, e.g. to time the policy where kernels, not Python, cost."""
    import torch
    from qail_ros.openvla.checkpoint import save_checkpoint
    from qail_ros.openvla.modeling import OpenVLAModel
    path = Path(path)
    cfg = tiny_config(**sizes)
    torch.manual_seed(seed)
    model = OpenVLAModel(cfg).init_random(seed, std=std)
    save_checkpoint(model, path, shards=shards)
    tok = build_tiny_tokenizer(cfg.vocab_size)
    tok.save(str(path / 'tokenizer.json'))
    (path / 'tokenizer_config.json').write_text(json.dumps({
        'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>',
        'unk_token': '<unk>', 'pad_token': '<unk>', 'model_max_length': 2048,
        'add_bos_token': True, 'clean_up_tokenization_spaces': False}, indent=2) + '\n')
    (path / 'README.md').write_text(
        '# openvla-tiny\n\nA tiny **randomly initialised** OpenVLA checkpoint in the Hugging '
        'Face layout of openvla/openvla-7b (config.json with norm_stats, sharded safetensors '
        '+ index, tokenizer). Its actions are meaningless: it exists so that the loader, the '
        '`vla_policy` node and the orin_vla launch run end to end without the 15 GB model.\n\n'
        f'Made by `python scripts/openvla/make_tiny_checkpoint.py` (seed {seed}, std {std}'
        f'{", " + str(sizes) if sizes else ""}); see docs/openvla.md.\n')
    return path
