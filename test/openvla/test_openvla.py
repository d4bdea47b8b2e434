"""OpenVLA loader, action tokens, un-normalisation and INT4 backbone on the shipped tiny model."""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from qail_ros.openvla import ActionTokenizer, OpenVLAError, read_config, unnormalize
from qail_ros.openvla.action_tokenizer import normalize, select_stats

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'models' / 'openvla-tiny'
torch = pytest.importorskip('torch')
pytest.importorskip('transformers', reason='the Llama backbone needs transformers')
INSTRUCTION = 'pick up the red block'


@pytest.fixture(scope='module')
def frame():
    return np.random.default_rng(3).integers(0, 256, (120, 160, 3), np.uint8)


@pytest.fixture(scope='module')
def policy():
    from qail_ros.openvla.policy import OpenVLAPolicy
    return OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')


# -- action tokenizer ---------------------------------------------------------------------------
def test_bin_edges_and_centres_are_openvlas():
    tok = ActionTokenizer(vocab_size=32000)
    assert tok.bins.shape == (256,) and tok.bins[0] == -1.0 and tok.bins[-1] == 1.0
    assert np.allclose(np.diff(tok.bins), 2 / 255)
    assert tok.bin_centers.shape == (255,)
    assert tok.bin_centers[0] == pytest.approx(-1 + 1 / 255)
    # the last 256 ids of Llama's 32000 are the action tokens
    assert tok.first_token_id == 31744
    assert tok.encode(np.array([-1.0]))[0] == 31999      # digitize(-1) = 1 -> 32000 - 1
    assert tok.encode(np.array([1.0]))[0] == 31744       # digitize(1) = 256
    assert tok.encode(np.array([5.0, -7.0])).tolist() == [31744, 31999]  # clipped first
    # an edge belongs to the bin above it (numpy.digitize, right=False)
    assert tok.discretize(np.array([tok.bins[10]]))[0] == 11
    assert tok.discretize(np.array([np.nextafter(tok.bins[10], -2)]))[0] == 10


def test_round_trip_lands_on_the_bin_centre():
    tok = ActionTokenizer(vocab_size=448)
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.999, 0.999, 1000)
    back = tok.decode(tok.encode(a))
    assert np.all(np.abs(back - a) <= (1 / 255) + 1e-12)   # half a bin
    assert np.allclose(tok.decode(tok.encode(tok.bin_centers)), tok.bin_centers)
    # the top value (d = 256) and non-action ids clip into range, as predict_action does
    assert tok.decode(np.array([tok.first_token_id]))[0] == tok.bin_centers[-1]
    assert tok.decode(np.array([3]))[0] == tok.bin_centers[-1]
    assert tok.decode(np.array([447]))[0] == tok.bin_centers[0]
    assert tok.is_action_token(np.array([191, 192, 447, 448])).tolist() == [
        False, True, True, False]


def test_unnormalize_with_mask_on_hand_computed_numbers():
    stats = {'q01': [-1.0, 0.0, 2.0], 'q99': [1.0, 4.0, 6.0], 'mask': [True, True, False]}
    a = np.array([0.5, -1.0, 0.25])
    # 0.5 (a + 1) (q99 - q01) + q01: 0.75 * 2 - 1 = 0.5; 0 * 4 + 0 = 0; masked out: 0.25
    assert unnormalize(a, stats).tolist() == [0.5, 0.0, 0.25]
    nomask = {'q01': [0.0, 0.0, 0.0], 'q99': [2.0, 2.0, 2.0]}
    assert unnormalize(np.array([1.0, 0.0, -1.0]), nomask).tolist() == [2.0, 1.0, 0.0]
    assert np.allclose(normalize(unnormalize(a, stats), stats), a)
    with pytest.raises(OpenVLAError, match='2 values, the statistics 3'):
        unnormalize(np.zeros(2), stats)


def test_unnorm_key_must_be_chosen_when_there_are_several():
    cfg = read_config(TINY)
    with pytest.raises(OpenVLAError, match=r"unnorm_key to one of \['bridge_orig', 'tiny_sim'\]"):
        select_stats(cfg.norm_stats, None)
    with pytest.raises(OpenVLAError, match="'nope' is not in"):
        select_stats(cfg.norm_stats, 'nope')
    key, stats = select_stats({'only': {'action': {'q01': [0], 'q99': [1]}}}, '')
    assert key == 'only'


# -- loading errors -----------------------------------------------------------------------------
def test_wrong_model_directories_name_what_is_missing(tmp_path):
    from qail_ros.openvla.checkpoint import load_model
    with pytest.raises(OpenVLAError, match='is not a directory'):
        read_config(tmp_path / 'nope')
    with pytest.raises(OpenVLAError, match='no config.json'):
        read_config(tmp_path)
    d = tmp_path / 'ckpt'
    shutil.copytree(TINY, d)
    (d / 'SHA256SUMS').unlink()   # the loader's own checks (SHA256SUMS: test_integrity.py)
    (d / 'model-00002-of-00002.safetensors').unlink()
    with pytest.raises(OpenVLAError, match=r"shard files \['model-00002-of-00002"):
        load_model(d)
    shutil.copy(TINY / 'model-00002-of-00002.safetensors', d)
    from safetensors.torch import load_file, save_file
    shard = load_file(str(d / 'model-00001-of-00002.safetensors'))
    del shard['vision_backbone.featurizer.cls_token']
    shard['language_model.extra.weight'] = torch.zeros(1)
    save_file(shard, str(d / 'model-00001-of-00002.safetensors'))
    with pytest.raises(OpenVLAError, match=r"missing \['vision_backbone.featurizer.cls_token'\]"
                                           r".*unexpected \['language_model.extra.weight'\]"):
        load_model(d)
    (d / 'model.safetensors.index.json').unlink()
    with pytest.raises(OpenVLAError, match='the weights are missing'):
        load_model(d)
    cfg = json.loads((TINY / 'config.json').read_text())
    del cfg['norm_stats']
    (d / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(OpenVLAError, match=r"missing \['norm_stats'\]"):
        read_config(d)


def test_shipped_tiny_checkpoint_layout_and_size():
    names = sorted(p.name for p in TINY.iterdir())
    assert {'config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors',
            'model-00002-of-00002.safetensors', 'tokenizer.json'} <= set(names)
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 5e6
    cfg = json.loads((TINY / 'config.json').read_text())
    assert cfg['model_type'] == 'openvla' and cfg['n_action_bins'] == 256
    weight_map = json.loads((TINY / 'model.safetensors.index.json').read_text())['weight_map']
    for name in ('vision_backbone.featurizer.blocks.0.ls1.scale_factor',
                 'vision_backbone.featurizer.reg_token',
                 'vision_backbone.fused_featurizer.attn_pool.latent', 'projector.fc3.weight',
                 'language_model.model.layers.1.self_attn.q_proj.weight',
                 'language_model.lm_head.weight'):
        assert name in weight_map, name


def test_tiny_checkpoint_is_rebuilt_identically(tmp_path):
    from safetensors.torch import load_file
    from qail_ros.openvla.tiny import make_tiny_checkpoint
    out = make_tiny_checkpoint(tmp_path / 'tiny')
    for shard in ('model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'):
        a, b = load_file(str(TINY / shard)), load_file(str(out / shard))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / 'tokenizer.json').read_text() == (TINY / 'tokenizer.json').read_text()


# -- the reference forward pass -----------------------------------------------------------------
def _ref_vit(w, p, spec, x):
    """timm ViT, written out: patches + pos, prefix tokens, blocks up to the second-to-last."""
    F = torch.nn.functional
    x = F.conv2d(x, w[p + 'patch_embed.proj.weight'], w[p + 'patch_embed.proj.bias'],
                 stride=spec['patch_size'])
    x = x.flatten(2).transpose(1, 2)
    prefix = []
    if spec['class_token']:
        prefix.append(w[p + 'cls_token'])
    if spec['reg_tokens']:
        prefix.append(w[p + 'reg_token'])
    if spec['no_embed_class']:
        x = torch.cat(prefix + [x + w[p + 'pos_embed']], 1)
    else:
        x = torch.cat(prefix + [x], 1) + w[p + 'pos_embed']
    d, h = spec['embed_dim'], spec['num_heads']
    approx = 'tanh' if spec['act'] == 'gelu_tanh' else 'none'
    for i in range(spec['depth'] - 1):
        b = f'{p}blocks.{i}.'
        y = F.layer_norm(x, (d,), w[b + 'norm1.weight'], w[b + 'norm1.bias'], 1e-6)
        qkv = y @ w[b + 'attn.qkv.weight'].T + w[b + 'attn.qkv.bias']
        q, k, v = qkv.split(d, -1)
        q, k, v = (t.reshape(1, -1, h, d // h).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), -1) @ v
        y = att.transpose(1, 2).reshape(1, -1, d) @ w[b + 'attn.proj.weight'].T
        y = y + w[b + 'attn.proj.bias']
        x = x + (y * w[b + 'ls1.scale_factor'] if spec['layer_scale'] else y)
        y = F.layer_norm(x, (d,), w[b + 'norm2.weight'], w[b + 'norm2.bias'], 1e-6)
        y = F.gelu(y @ w[b + 'mlp.fc1.weight'].T + w[b + 'mlp.fc1.bias'], approximate=approx)
        y = y @ w[b + 'mlp.fc2.weight'].T + w[b + 'mlp.fc2.bias']
        x = x + (y * w[b + 'ls2.scale_factor'] if spec['layer_scale'] else y)
    return x[:, int(spec['class_token']) + spec['reg_tokens']:]


def _ref_llama_logits(w, tc, x):
    """Llama-2 decoder on embeddings x (1, L, H), written out; returns the last logits."""
    hdim, heads = tc['hidden_size'], tc['num_attention_heads']
    hd, n = hdim // heads, x.shape[1]

    def rms(t, g):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + tc['rms_norm_eps']) * g

    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.arange(n).double()[:, None] * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()

    def rope(t):
        t1, t2 = t[..., :hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    causal = torch.full((n, n), float('-inf')).triu(1)
    for i in range(tc['num_hidden_layers']):
        b = f'language_model.model.layers.{i}.'
        y = rms(x, w[b + 'input_layernorm.weight'])
        q, k, v = (y @ w[b + f'self_attn.{m}_proj.weight'].T for m in 'qkv')
        q, k, v = (t.reshape(1, n, heads, hd).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(hd) + causal, -1)
        y = (att @ v).transpose(1, 2).reshape(1, n, hdim) @ w[b + 'self_attn.o_proj.weight'].T
        x = x + y
        y = rms(x, w[b + 'post_attention_layernorm.weight'])
        gate = torch.nn.functional.silu(y @ w[b + 'mlp.gate_proj.weight'].T)
        x = x + (gate * (y @ w[b + 'mlp.up_proj.weight'].T)) @ w[b + 'mlp.down_proj.weight'].T
    x = rms(x, w['language_model.model.norm.weight'])
    return x[0, -1] @ w['language_model.lm_head.weight'].T


def test_actions_match_a_plain_reference_forward(policy, frame):
    from qail_ros.openvla.checkpoint import load_state_dict
    cfg = json.loads((TINY / 'config.json').read_text())
    w = {k: v.float() for k, v in load_state_dict(TINY).items()}
    pixels = policy.pixel_values(frame)
    ids = policy.prompt_ids(INSTRUCTION)[0].tolist()
    assert ids[0] == 1 and ids[-1] == policy.empty_token_id  # <BOS> ... '\u2581'
    dino, sig = cfg['vit_specs']
    with torch.no_grad():
        patches = torch.cat([_ref_vit(w, 'vision_backbone.featurizer.', dino, pixels[:, :3]),
                             _ref_vit(w, 'vision_backbone.fused_featurizer.', sig,
                                      pixels[:, 3:])], -1)
        g = torch.nn.functional.gelu
        proj = g(patches @ w['projector.fc1.weight'].T + w['projector.fc1.bias'])
        proj = g(proj @ w['projector.fc2.weight'].T + w['projector.fc2.bias'])
        proj = proj @ w['projector.fc3.weight'].T + w['projector.fc3.bias']
        emb = w['language_model.model.embed_tokens.weight']
        seq = list(ids)
        tokens, logits = [], []
        for _ in range(7):  # greedy, recomputing the whole sequence each step (no cache)
            e = emb[torch.tensor(seq)][None]
            x = torch.cat([e[:, :1], proj, e[:, 1:]], 1)
            step = _ref_llama_logits(w, cfg['text_config'], x)
            tokens.append(int(step.argmax()))
            logits.append(step)
            seq.append(tokens[-1])
    vocab = cfg['text_config']['vocab_size'] - cfg['pad_to_multiple_of']
    centres = np.linspace(-1, 1, 256)
    centres = (centres[:-1] + centres[1:]) / 2
    norm = centres[np.clip(vocab - np.array(tokens) - 1, 0, 254)]
    stats = cfg['norm_stats']['bridge_orig']['action']
    lo, hi = np.array(stats['q01']), np.array(stats['q99'])
    expected = np.where(stats['mask'], 0.5 * (norm + 1) * (hi - lo) + lo, norm)

    result = policy.predict(frame, INSTRUCTION)
    assert result.tokens.tolist() == tokens
    assert np.allclose(result.action, expected, atol=1e-9)
    ref_bins = torch.stack(logits)[:, vocab - 1 - np.arange(256)].numpy()
    assert np.allclose(result.bin_logits, ref_bins, atol=1e-4, rtol=1e-4)
    assert result.bin_logits.shape == (7, 256)


def test_prompt_format(policy):
    assert policy.prompt('open the drawer') == \
        'In: What action should the robot take to open the drawer?\nOut:'
    text = policy.tokenizer.decode(policy.prompt_ids('open the drawer')[0])
    expected = '<s>In:Whatactionshouldtherobottaketoopenthedrawer?\nOut:\u2581'
    assert text.replace(' ', '') == expected


def test_bf16_runs_and_stays_close(policy, frame):
    from qail_ros.openvla.policy import OpenVLAPolicy
    bf = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='bf16')
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    r32, r16 = policy.predict(frame, INSTRUCTION), bf.predict(frame, INSTRUCTION)
    assert r16.bin_logits.shape == (7, 256)
    # random weights give near-flat logits; bf16 must stay within bf16 rounding of fp32's
    assert np.abs(r16.bin_logits[0] - r32.bin_logits[0]).max() < 0.05


# -- INT4 weight-only backbone ------------------------------------------------------------------
@pytest.mark.parametrize('scheme', ['rtn', 'awq'])
def test_int4_quantize_save_load_gives_identical_actions(tmp_path, frame, scheme):
    from qail_ros.openvla.policy import OpenVLAPolicy
    a = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    a.quantize_int4(scheme, group_size=128)
    assert a.int4_details == {'scheme': scheme, 'group_size': 64}
    ra = a.predict(frame, INSTRUCTION)
    path = a.save_int4(tmp_path / 'backbone_int4.safetensors')
    b = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig')
    b.load_int4(path)
    rb = b.predict(frame, INSTRUCTION)
    assert np.array_equal(ra.tokens, rb.tokens) and np.array_equal(ra.action, rb.action)
    assert np.array_equal(ra.bin_logits, rb.bin_logits)
    # on the int4 kernels: both converted the same way -> identical again
    a.convert_int4()
    b.convert_int4()
    ka, kb = a.predict(frame, INSTRUCTION), b.predict(frame, INSTRUCTION)
    assert np.array_equal(ka.bin_logits, kb.bin_logits)
    # bf16 kernel vs fake quant: close at the first step (later steps may pick another token)
    assert np.abs(ka.bin_logits[0] - ra.bin_logits[0]).max() < 0.05
    # the node's path: precision='int4' with the saved file
    c = OpenVLAPolicy.from_pretrained(TINY, unnorm_key='bridge_orig', precision='int4',
                                      int4_weights=path)
    assert np.array_equal(c.predict(frame, INSTRUCTION).bin_logits, ka.bin_logits)
    kinds = {type(m).__name__ for m in c.model.language_model.modules()}
    assert 'Int4WeightOnlyLinear' in kinds
    assert type(c.model.language_model.lm_head).__name__ == 'Linear'   # lm_head stays float


def test_bad_precision_and_missing_int4_file(tmp_path):
    from qail_ros.openvla.policy import OpenVLAPolicy
    with pytest.raises(OpenVLAError, match='precision'):
        OpenVLAPolicy.from_pretrained(TINY, precision='int3', unnorm_key='bridge_orig')
    with pytest.raises(OpenVLAError, match='do not exist'):
        OpenVLAPolicy.from_pretrained(TINY, precision='int4', unnorm_key='bridge_orig',
                                      int4_weights=tmp_path / 'x.safetensors')


def test_import_is_lean():
    import subprocess
    import sys
    code = ('import sys, qail_ros.openvla; '
            'assert "torch" not in sys.modules and "transformers" not in sys.modules')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, '-c', code], check=True, env=env)


def test_real_7b_config_builds_openvla_7b_on_the_meta_device():
    """The real checkpoint's config (timm ids, no vit_specs, Llama defaults for the keys its
    text_config leaves out) gives OpenVLA-7B's architecture: 7.54 B parameters, 256 patches of
    1024 + 1152 features, a 32064-row vocabulary; built on the meta device (no memory)."""
    from qail_ros.openvla.config import OpenVLAConfig
    from qail_ros.openvla.modeling import OpenVLAModel
    raw = {k: v for k, v in json.loads((TINY / 'config.json').read_text()).items()
           if k != 'vit_specs'}
    raw.update(image_sizes=[224, 224], text_config={'model_type': 'llama', 'vocab_size': 32064,
                                                    'pad_token_id': 32000})
    cfg = OpenVLAConfig.from_dict(raw)
    assert cfg.vision_dim == 2176 and cfg.num_patches == 256 and cfg.vocab_size == 32000
    with torch.device('meta'):
        model = OpenVLAModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e7) == 754, n      # 7,541,237,184 here
    sd = model.state_dict()
    assert tuple(sd['projector.fc1.weight'].shape) == (8704, 2176)
    assert tuple(sd['vision_backbone.featurizer.reg_token'].shape) == (1, 4, 1024)
    assert tuple(sd['vision_backbone.fused_featurizer.pos_embed'].shape) == (1, 256, 1152)
    assert tuple(sd['language_model.lm_head.weight'].shape) == (32064, 4096)
    assert len(model.language_model.model.layers) == 32
    unknown = dict(raw, timm_model_ids=['vit_large_patch14_clip_224.openai'],
                   use_fused_vision_backbone=False)
    with pytest.raises(OpenVLAError, match='not supported'):
        OpenVLAConfig.from_dict(unknown)


def test_actions_depend_on_the_image_and_the_instruction(policy, frame):
    a = policy.predict(frame, INSTRUCTION)
    other_frame = policy.predict(np.zeros_like(frame), INSTRUCTION)
    other_text = policy.predict(frame, 'open the drawer')
    assert not np.allclose(a.bin_logits[0], other_frame.bin_logits[0])
    assert not np.allclose(a.bin_logits[0], other_text.bin_logits[0])
    assert np.array_equal(policy.predict(frame, INSTRUCTION).bin_logits, a.bin_logits)
