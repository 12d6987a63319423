"""A name -> class registry that remembers each instance's constructor arguments.

Both packages build their ``MODULES`` table with :func:`make_registry`. The
recorded ``init_kwargs`` let the converter build a module's twin in the other
framework with the same hyper-parameters; the framework tail (``device``,
``dtype``, ``param_dtype``, ``rngs``) is left out because it does not carry over.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=type)


def _plain_int(value: Any) -> Any:
    """A NumPy (or other ``__index__``) integer as a Python int, so that modules and their
    recorded arguments (checkpoint metadata, JSON) hold plain ints; anything else unchanged."""
    if isinstance(value, int) or not hasattr(type(value), "__index__") or getattr(value, "shape", ()) != ():
        return value
    if "bool" in type(value).__name__:  # np.bool_: left for the argument checks to refuse
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def make_registry(framework_args: tuple[str, ...]) -> tuple[dict[str, type], Callable[..., Any]]:
    """Return ``(MODULES, register)``; ``@register`` adds a class under its name.

    ``@register(name="timm.ResNet")`` adds it under an explicit key instead (a family
    prefix for a class whose name another family already uses); the key is kept as
    the class attribute ``registry_name``, which the converter looks up.
    """
    modules: dict[str, type] = {}

    def register(cls: T | None = None, *, name: str | None = None) -> Any:
        if cls is None:
            return lambda c: register(c, name=name)
        name = name or cls.__name__
        if name in modules:
            raise ValueError(f"module name {name!r} is registered twice")
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
            args = tuple(_plain_int(a) for a in args)
            kwargs = {k: _plain_int(v) for k, v in kwargs.items()}
            init(self, *args, **kwargs)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for key, value in list(bound.arguments.items())[1:]:
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif key not in framework_args:
                    recorded[key] = value
            # Only the outermost registered class records (ResNet holds SE blocks).
            if type(self) is cls:
                self.init_kwargs = recorded

        cls.__init__ = recording_init
        cls.registry_name = name
        modules[name] = cls
        return cls

    return modules, register
