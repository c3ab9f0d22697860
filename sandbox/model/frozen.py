"""Frozen dataclasses without importing `dataclasses` on the start-up path.

`import dataclasses` pulls in `inspect`, `re` and `enum`: about 13 ms here,
more than twice bubblewrap's whole cold run.  Type checkers see the real
`dataclasses.dataclass` (so mypy checks fields, defaults and `replace`); at
run time this module supplies the small subset sbx uses: keyword or positional
construction with defaults, immutability, equality, hashing, `repr`,
`replace`, `fields` and `field(default=..., metadata=...)`.  Defaults must be
immutable (tuples, frozensets, None, numbers, strings); `field(default_factory=...)`
is not supported.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
    from dataclasses import field as field
    from dataclasses import fields as fields
    from dataclasses import replace as replace
else:
    _MISSING = object()

    class FrozenInstanceError(AttributeError):
        pass

    MISSING = _MISSING

    class _Field:
        """A field as `fields()` gives it: its name, default (MISSING: none) and metadata."""

        __slots__ = ("name", "default", "metadata")

        def __init__(self, name, default=_MISSING, metadata=None):
            self.name = name
            self.default = default
            self.metadata = {} if metadata is None else metadata

    def field(*, default=_MISSING, metadata=None):
        return _Field("", default, metadata)

    def _field_spec(cls):
        names = []
        defaults = {}
        metadata = {}
        for klass in reversed(cls.__mro__):
            for name, ann in klass.__dict__.get("__annotations__", {}).items():
                if isinstance(ann, str) and ann.startswith(("ClassVar", "typing.ClassVar")):
                    continue
                if name not in names:
                    names.append(name)
                value = klass.__dict__.get(name, _MISSING)
                if isinstance(value, _Field):
                    metadata[name] = value.metadata
                    value = value.default
                    if value is _MISSING and name in cls.__dict__:
                        delattr(cls, name)  # a required field: no class attribute
                    elif name in cls.__dict__:
                        setattr(cls, name, value)
                if value is not _MISSING:
                    defaults[name] = value
        return tuple(names), defaults, metadata

    # One shared set of methods for every class: a class costs only its field scan, not a
    # closure per method (dozens of these classes load on every start-up).
    def _init(self, *args, **kwargs):
        cls = self.__class__
        names = cls.__sbx_fields__
        defaults = cls.__sbx_spec__[0]
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments")
        if args:
            values = dict(zip(names, args))
            for key in kwargs:
                if key in values:
                    raise TypeError(f"{cls.__name__}() got multiple values for {key!r}")
            values.update(kwargs)
        else:
            values = kwargs  # replace() and keyword construction: no copy
        if len(values) != len(names) or not cls.__sbx_names__.issuperset(values):
            unknown = [key for key in values if key not in cls.__sbx_names__]
            if unknown:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {unknown[0]!r}")
            missing = [n for n in names if n not in values and n not in defaults]
            if missing:
                raise TypeError(f"{cls.__name__}() missing arguments: {', '.join(missing)}")
            values = {**defaults, **values}
        setattr_ = object.__setattr__
        for name in names:
            setattr_(self, name, values[name])
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def _key(self):
        return tuple(getattr(self, n) for n in self.__sbx_fields__)

    def _repr(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__sbx_fields__)
        return f"{self.__class__.__qualname__}({inner})"

    def _eq(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        if self.__class__.__hash__ is _hash:
            # The instances' dicts hold their fields and, once hashed, the hash: compared in C.
            try:
                return hash(self) == hash(other) and self.__dict__ == other.__dict__
            except TypeError:
                pass  # a field that cannot be hashed (a dict): field by field
        return _key(self) == _key(other)

    def _hash(self):
        # Cached: a run's Spec is a key of the Runner's and the pool's dicts several times a run,
        # and hashing it afresh walks every nested spec (its mounts, limits, ...) each time.
        cached = self.__dict__.get("__sbx_hash__")
        if cached is None:
            cached = hash(_key(self))
            object.__setattr__(self, "__sbx_hash__", cached)
        return cached

    def _getstate(self):
        # Without the cached hash: a string's hash differs in another process (the zygote).
        return {n: getattr(self, n) for n in self.__sbx_fields__}

    def _setattr(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def _delattr(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def dataclass(cls=None, /, *, frozen=False, **_ignored):
        def wrap(cls):
            names, defaults, metadata = _field_spec(cls)
            cls.__init__ = _init
            cls.__repr__ = _repr
            cls.__eq__ = _eq
            cls.__sbx_fields__ = names
            cls.__sbx_names__ = frozenset(names)
            cls.__sbx_spec__ = (defaults, metadata)  # fields() builds its _Field values on demand
            if frozen:
                cls.__setattr__ = _setattr
                cls.__delattr__ = _delattr
                cls.__hash__ = _hash
                cls.__getstate__ = _getstate
            else:
                cls.__hash__ = None
            return cls

        return wrap if cls is None else wrap(cls)

    def fields(obj):
        cls = obj if isinstance(obj, type) else type(obj)
        info = cls.__dict__.get("__sbx_field_info__")
        if info is None:
            defaults, metadata = cls.__sbx_spec__
            info = tuple(_Field(n, defaults.get(n, _MISSING), metadata.get(n)) for n in cls.__sbx_fields__)
            cls.__sbx_field_info__ = info
        return info

    def replace(obj, /, **changes):
        values = {n: getattr(obj, n) for n in obj.__sbx_fields__}
        values.update(changes)
        return obj.__class__(**values)
