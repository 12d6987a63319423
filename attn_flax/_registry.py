from attn_common.registry import make_registry

MODULES, register = make_registry(framework_args=("dtype", "param_dtype", "rngs"))
