"""OpenVLA without remote code: config, architecture, checkpoint loading, action tokens.

    from qail_ros.openvla import OpenVLAPolicy
    policy = OpenVLAPolicy.from_pretrained('path/to/openvla-7b', precision='int4',
                                           unnorm_key='bridge_orig')
    result = policy.predict(rgb_uint8, 'put the carrot on the plate')   # result.action (7,)

Modules: config (config.json, ViT specs), action_tokenizer (numpy: bins, un-normalisation),
modeling (ViT towers, projector, Llama via transformers), checkpoint (sharded safetensors in
the HF layout), policy (preprocessing, prompt, greedy decode, INT4 backbone), tiny (the test
checkpoint). `import qail_ros.openvla` imports neither torch nor transformers.
"""
from qail_ros.openvla.action_tokenizer import ActionTokenizer, select_stats, unnormalize
from qail_ros.openvla.config import (PROMPT_TEMPLATE, OpenVLAConfig, OpenVLAError, ViTSpec,
                                     read_config)

__all__ = ['ActionTokenizer', 'select_stats', 'unnormalize', 'OpenVLAConfig', 'OpenVLAError',
           'ViTSpec', 'read_config', 'PROMPT_TEMPLATE', 'OpenVLAPolicy', 'TINY_MODEL']

#: The shipped tiny checkpoint, relative to the package share directory.
TINY_MODEL = 'models/openvla-tiny'


def __getattr__(name):
    if name == 'OpenVLAPolicy':
        from qail_ros.openvla.policy import OpenVLAPolicy
        return OpenVLAPolicy
    raise AttributeError(name)
