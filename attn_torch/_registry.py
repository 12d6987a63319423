from attn_common.registry import make_registry

MODULES, register = make_registry(framework_args=("device", "dtype"))
