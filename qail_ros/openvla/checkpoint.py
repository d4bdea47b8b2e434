"""Read and write OpenVLA checkpoint directories (Hugging Face layout, sharded safetensors).

`load_model(path)` builds OpenVLAModel on the meta device (no 28 GB random init for the 7B
model), reads every shard named by model.safetensors.index.json and assigns the tensors under
their own names: `vision_backbone.featurizer.*`, `vision_backbone.fused_featurizer.*`,
`projector.fc{1,2,3}.*`, `language_model.model.*`, `language_model.lm_head.weight`. A tensor
the model lacks, or a model parameter no shard holds, is an error naming them.

Integrity: where the directory has a SHA256SUMS (`qail-ros verify DIR --write`; written by
`save_checkpoint`), every file it lists must still match it, else an error names the changed
files. A truncated or corrupt shard is an error naming the file and the fix, never a raw
safetensors traceback.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from qail_ros.openvla.config import (CONFIG_FILE, INDEX_FILE, OpenVLAConfig, OpenVLAError,
                                     read_config)

__all__ = ['load_state_dict', 'load_model', 'save_checkpoint', 'shard_name']


def shard_name(i: int, n: int) -> str:
    return f'model-{i:05d}-of-{n:05d}.safetensors'


def _shards(path: Path) -> dict[str, str]:
    """weight name -> shard file name, from the index (or a single model.safetensors)."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())['weight_map']
        except (json.JSONDecodeError, KeyError) as exc:
            raise OpenVLAError(f'{index}: not a safetensors index ({exc!r}); it needs a '
                               "'weight_map' {tensor name: shard file}") from None
    elif (path / 'model.safetensors').is_file():
        from safetensors import safe_open
        with _readable(path, 'model.safetensors'):
            with safe_open(str(path / 'model.safetensors'), 'pt') as f:
                weight_map = {k: 'model.safetensors' for k in f.keys()}
    else:
        raise OpenVLAError(f'{path}: no {INDEX_FILE} (nor model.safetensors): the weights are '
                           'missing. Fix: copy the whole checkpoint directory (config.json, the '
                           'index and every model-*.safetensors shard)')
    missing = sorted({s for s in weight_map.values() if not (path / s).is_file()})
    if missing:
        raise OpenVLAError(f'{path}: shard files {missing} named by {INDEX_FILE} are missing '
                           '(an interrupted download?); copy them into the directory')
    return weight_map


@contextlib.contextmanager
def _readable(path: Path, shard: str):
    """A shard safetensors cannot read becomes an OpenVLAError naming it and the fix."""
    try:
        yield
    except OpenVLAError:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, a bad header...
        size = (path / shard).stat().st_size if (path / shard).is_file() else 0
        raise OpenVLAError(
            f'{path / shard}: not a readable safetensors file ({type(exc).__name__}: '
            f'{str(exc).splitlines()[0] if str(exc) else "no detail"}; {size} bytes): it is '
            'truncated or corrupt (an interrupted download or copy?). Fix: copy that shard '
            f'again from the source checkpoint; qail-ros verify {path} checks every file '
            'against its SHA256SUMS') from None


def load_state_dict(path: str | Path) -> dict:
    """Every tensor of the checkpoint directory, by name (as stored: bf16 for OpenVLA-7B).

    Checks the files against the directory's SHA256SUMS first, where there is one.
    """
    from safetensors.torch import load_file

    from qail_ros.engines.manifest import check_checksums
    path = Path(path)
    check_checksums(path, error=OpenVLAError)
    weight_map = _shards(path)
    state = {}
    for shard in sorted(set(weight_map.values())):
        with _readable(path, shard):
            state.update(load_file(str(path / shard)))
    return state


def _fresh_rotary(model) -> None:
    """Non-persistent buffers (Llama's rotary inv_freq) are not in any checkpoint: after a
    meta-device build they must be made again on the CPU."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    inner = model.language_model.model
    inner.rotary_emb = LlamaRotaryEmbedding(config=model.language_model.config)


def load_model(path: str | Path, dtype=None, config: OpenVLAConfig | None = None):
    """OpenVLAModel with the checkpoint's weights (cast to `dtype` if given), in eval mode."""
    import torch
    try:
        import transformers  # noqa: F401 - the Llama backbone
    except ModuleNotFoundError:
        raise OpenVLAError('OpenVLA needs the transformers package for its Llama backbone: '
                           'pip install -r requirements.txt (transformers==5.23.0)') from None
    from qail_ros.openvla.modeling import OpenVLAModel
    path = Path(path)
    config = config or read_config(path)
    state = load_state_dict(path)
    with torch.device('meta'):
        model = OpenVLAModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        def show(names):
            return f'{names[:8]}{" ..." if len(names) > 8 else ""} ({len(names)})'
        raise OpenVLAError(
            f'{path}: the weights do not match the architecture its {CONFIG_FILE} describes: '
            + (f'missing {show(missing)}' if missing else '')
            + ('; ' if missing and unexpected else '')
            + (f'unexpected {show(unexpected)}' if unexpected else '')
            + '. Fix: use an OpenVLA checkpoint (openvla/openvla-7b layout) with its own '
            'config.json')
    shapes = [(k, tuple(v.shape), tuple(state[k].shape)) for k, v in model.state_dict().items()
              if tuple(v.shape) != tuple(state[k].shape)]
    if shapes:
        raise OpenVLAError(f'{path}: tensor shapes differ from {CONFIG_FILE}: {shapes[:5]} '
                           '(name, model, checkpoint)')
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    _fresh_rotary(model)
    return model.eval()


def save_checkpoint(model, path: str | Path, *, shards: int = 2, tokenizer_dir=None) -> Path:
    """Write config.json + sharded safetensors + index, the layout `load_model` reads."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    target, groups, size = total / max(shards, 1), [[]], 0
    for name in names:
        if size >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        size += state[name].numel() * state[name].element_size()
    n = len(groups)
    weight_map = {}
    for old in path.glob('model-*-of-*.safetensors'):
        old.unlink()
    for i, group in enumerate(groups, 1):
        fname = shard_name(i, n)
        save_file({k: state[k] for k in group}, str(path / fname), metadata={'format': 'pt'})
        weight_map.update({k: fname for k in group})
    (path / INDEX_FILE).write_text(json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2) + '\n')
    (path / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + '\n')
    from qail_ros.engines.manifest import write_checksums
    # What load_state_dict checks: the files written here (`qail-ros verify --write` covers
    # files added later, such as the tokenizer).
    write_checksums(path, [CONFIG_FILE, INDEX_FILE] + sorted(set(weight_map.values())))
    return path
