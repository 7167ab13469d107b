"""The trusted side of grading: the learner's storylib, seen through a process boundary.

The tests run in the grader's own process. `import storylib...` there does not load the learner's code: it
gives proxies (`RemoteModule`, `Remote`) whose every use is a request to the worker process (grading/worker.py)
that holds the learner's package. What comes back is data (grading/wire.py): numbers, strings, lists, dicts,
tensors and arrays by value, and references to objects that stay in the worker. So the assertions, the
oracles and the report live where the learner's code cannot reach them, and a crash, a hang or an exit of
the learner's code is one failed test, never the grader's.

Semantics a test author should know:
- Tensors not in an autograd graph travel by value; tensors that require grad stay in the worker (a
  `RemoteTensor`: `.backward()`, `.grad`, `.item()` run there; torch functions and numpy see its value).
- Tensors, arrays and generators a test passes in are copied; when the learner's code changes them in place,
  the change is written back into the test's object when the call returns.
- Exceptions come back as the builtin type they derive from (NotImplementedError, ValueError, ...); the
  learner's own exception classes become local classes of the same name. KeyboardInterrupt and SystemExit
  raised by learner code are plain failures here.
- A function of the test handed to the learner's code runs here, called back with values.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import os
import random
import select
import signal
import subprocess
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterator

import torch

try:  # the grader's private copy of these modules, or the course's
    from . import wire
except ImportError:  # pragma: no cover
    from grading import wire

LEARNER_PACKAGES = ("storylib", "cuda_labs")
MAX_CRASHES = 3  # after this many crashes in one run, the remaining tests fail at once
SAFE_BUILTINS = {
    "ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError", "AttributeError", "AssertionError",
    "NotImplementedError", "ZeroDivisionError", "ArithmeticError", "LookupError", "StopIteration", "OverflowError",
    "FileNotFoundError", "FileExistsError", "OSError", "ImportError", "ModuleNotFoundError", "MemoryError",
    "RecursionError", "UnicodeError", "NameError", "EOFError", "PermissionError", "IsADirectoryError",
    "NotADirectoryError", "TimeoutError", "ConnectionError", "BufferError", "StopAsyncIteration",
    "FloatingPointError", "UnboundLocalError", "Exception",
}


class WorkerCrashed(RuntimeError):
    """The learner's code ended or broke the worker process."""


class WorkerTimeout(RuntimeError):
    """The learner's code did not answer in time; the worker was stopped."""


class LearnerInterrupt(RuntimeError):
    """The learner's code raised KeyboardInterrupt or SystemExit: a failure like any other."""


_synthetic: dict[tuple[str, str], type] = {}


def exception_class(name: str, module: str, bases: list[str]) -> type[BaseException]:
    """A local stand-in for an exception class of the learner's code: same name, a builtin base."""
    if module == "builtins" and name in SAFE_BUILTINS:
        return getattr(builtins, name)
    if module == "builtins" or name in ("KeyboardInterrupt", "SystemExit", "GeneratorExit"):
        return LearnerInterrupt
    key = (module, name)
    if key not in _synthetic:
        base = next((getattr(builtins, b) for b in bases if b in SAFE_BUILTINS), RuntimeError)
        _synthetic[key] = type(name, (base,), {"__module__": module})
    return _synthetic[key]


def local_exception(info: dict) -> BaseException:
    cls = exception_class(str(info.get("type")), str(info.get("module")), list(info.get("bases", [])))
    message = str(info.get("message", ""))
    if cls is LearnerInterrupt:
        message = f"the learner's code raised {info.get('type')}: {message}"
    try:
        e = cls(message)
    except Exception:  # a builtin exception that wants other arguments
        e = RuntimeError(f"{info.get('type')}: {message}")
    for key, value in dict(info.get("attrs", {})).items():  # e.g. an HTTP error's status and param
        if not hasattr(e, key):
            setattr(e, key, value)
    tb = str(info.get("traceback", "")).strip()
    if tb:
        e.add_note("raised in the learner's code:\n" + tb)
    return e


# ------------------------------------------------------------------------------------------- the channel


class Connection(wire.Peer):
    """The trusted end of the channel to one worker process, restarted after a crash or a timeout."""

    def __init__(self, start: Callable[[], tuple[subprocess.Popen, int, int]],
                 stop: Callable[[subprocess.Popen], None]):
        super().__init__(-1, -1)
        self._start, self._stop = start, stop
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.crashes = 0
        self.last_crash = ""
        self.deadline: float | None = None
        self.timeout_s: float | None = None
        self.callbacks: dict[int, Callable] = {}
        self.release: list[int] = []
        self.methods: dict[tuple[int, int], frozenset[str]] = {}  # (generation, type key) -> method names
        self.module_attrs: dict[tuple[int, str, str], object] = {}  # functions and classes of learner modules
        self.mirrors: dict[int, Mirror] = {}  # the test's parameters that the worker shares, by worker id
        self.mirror_of: dict[int, Mirror] = {}  # ... by id() of the test's tensor
        self._tokens: dict[int, object] = {}
        self._new_mirrors: dict[int, torch.Tensor] = {}
        self.proxies: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.storage: dict[int, tuple[weakref.ref, int]] = {}  # id(tensor) -> (tensor, its memory in the worker)
        self._in_flight: list[dict[int, object]] = []  # the objects sent with each request still waiting a reply

    # ------------------------------------------------------------------ process

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.crashes >= MAX_CRASHES:
            raise WorkerCrashed(f"not run: your code stopped the worker {self.crashes} times "
                                f"(last: {self.last_crash})")
        self.proc, self.fd_in, self.fd_out = self._start()
        self.generation += 1
        self.release.clear()
        self.mirrors.clear()
        self.mirror_of.clear()

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(timeout=2) if self.proc else None
        except subprocess.TimeoutExpired:
            return None

    def kill(self, reason: str) -> None:
        if self.proc is None:
            return
        self._stop(self.proc)
        for fd in (self.fd_in, self.fd_out):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc, self.fd_in, self.fd_out = None, -1, -1
        self.crashes += 1
        self.last_crash = reason

    def on_value(self, v: dict, value) -> None:
        if v.get("$") == "tensor" and "sid" in v:
            if len(self.storage) > 100_000:  # forget the dead ones now and then
                self.storage = {k: e for k, e in self.storage.items() if e[0]() is not None}
            self.storage[id(value)] = (weakref.ref(value), int(v["sid"]))

    def storage_ptr(self, t: torch.Tensor) -> int:
        """Where a tensor that came from the learner's code lives in the worker's memory (for tests of views)."""
        ref, sid = self.storage.get(id(t), (None, None))
        return sid if ref is not None and ref() is t else t.untyped_storage().data_ptr()

    def repeat(self, n: int, fn, *args, **kwargs) -> list:
        """[fn(*args, **kwargs) for _ in range(n)], run in the worker as one request (the same objects each time)."""
        return self.call("repeat", obj=fn, n=int(n), args=list(args), kwargs=kwargs)

    def module(self, name: str) -> Remote:
        """Any module inside the worker (e.g. `grading.testmodels`), for objects that must live next to the
        learner's."""
        return self.call("import", name=name)

    def shared(self, t: torch.Tensor) -> RemoteTensor:
        """The worker's copy of a parameter of the test (e.g. to register a hook that fires in the worker)."""
        return self.call("handle", obj=t)

    def close(self) -> None:
        if self.proc is not None:
            self.kill("closed")

    def wait_readable(self) -> None:
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0 or not select.select([self.fd_in], [], [], remaining)[0]:
            raise WorkerTimeout(f"took longer than {self.timeout_s:g} s (an endless loop?); the worker was stopped")

    # ------------------------------------------------------------------ requests

    def call(self, op: str, **fields):
        self.ensure()
        outer = self._tokens, self._new_mirrors
        self._tokens, self._new_mirrors = {}, {}
        enc = wire.Encoder(self.as_ref, self.track, self.special)
        # The test's grad mode and thread count hold for the learner's code too.
        header = {"op": op, "grad": torch.is_grad_enabled(), "threads": torch.get_num_threads(),
                  **{k: enc(v) for k, v in fields.items()}}
        header["sync"] = self.sync_out(enc)
        if self.release:
            header["release"], self.release = self.release, []
        tokens, new_mirrors = self._tokens, self._new_mirrors
        self._tokens, self._new_mirrors = outer
        self._in_flight.append(tokens)  # callbacks during this request may hand back the test's objects
        try:
            reply, blobs = self.request(header, enc.blobs)
        except WorkerTimeout as e:
            self.kill(str(e))
            raise
        except (EOFError, OSError, wire.WireError, ValueError) as e:
            code = self.exit_code()
            self.kill(f"worker ended (exit code {code})")
            why = "" if isinstance(e, EOFError) else f": {e}"
            raise WorkerCrashed(f"your code ended the worker process that runs it (exit code {code}: os._exit, a "
                                f"crash, or a limit of memory or CPU){why}") from None
        except BaseException:
            self.kill("interrupted")  # mid-request: the channel is out of step
            raise
        finally:
            self._in_flight.pop()
        return self.result(reply, blobs, tokens, new_mirrors)

    def result(self, reply: dict, blobs: list[bytes], tokens: dict[int, object], new_mirrors: dict):
        self._in_flight.append(tokens)
        try:
            return self._result(reply, blobs, new_mirrors)
        finally:
            self._in_flight.pop()

    def _result(self, reply: dict, blobs: list[bytes], new_mirrors: dict):
        tokens = self._in_flight[-1]
        dec = wire.Decoder(blobs, self.from_ref, self.on_value)
        for tok, oid in reply.get("mirrors", []):
            if tok in new_mirrors:
                self.add_mirror(new_mirrors[tok], int(oid))
        for tok, value in reply.get("writeback", []):
            write_back(tokens.get(tok), dec(value))
        self.sync_in(reply.get("sync", []), dec)
        if "error" in reply:
            raise local_exception(reply["error"])
        return dec(reply.get("ok"))

    # ------------------------------------------------------------------ shared parameters

    def add_mirror(self, t: torch.Tensor, oid: int) -> None:
        m = Mirror(weakref.ref(t), oid, self.generation)
        m.mark(t)
        self.mirrors[oid] = m
        self.mirror_of[id(t)] = m
        weakref.finalize(t, self.drop_mirror, self.generation, oid, id(t))

    def drop_mirror(self, generation: int, oid: int, key: int) -> None:
        if generation == self.generation:
            self.mirrors.pop(oid, None)
            if self.mirror_of.get(key) is not None and self.mirror_of[key].oid == oid:
                del self.mirror_of[key]
            self.release.append(oid)

    def sync_out(self, enc: wire.Encoder) -> list:
        """The test's changes to shared parameters (values, gradients) since the worker last saw them."""
        out = []
        for m in list(self.mirrors.values()):
            t = m.ref()
            if t is None:
                continue
            e = {"id": m.oid}
            if not _same(t, m.version):
                e["value"] = enc.raw_tensor(t)
            if not _same(t.grad, m.grad_key):
                e["grad"] = None if t.grad is None else enc.raw_tensor(t.grad)
            if len(e) > 1:
                out.append(e)
                m.mark(t)
        return out

    def sync_in(self, entries: list, dec: wire.Decoder) -> None:
        """The learner's changes to shared parameters, copied into the test's tensors."""
        for e in entries:
            m = self.mirrors.get(int(e["id"]))
            t = None if m is None else m.ref()
            if t is None:
                continue
            with torch.no_grad():
                if "value" in e:
                    t.data.copy_(dec(e["value"]))
                if "grad" in e:
                    g = dec(e["grad"])
                    t.grad = None if g is None else g.to(t.dtype)
            m.mark(t)

    def special(self, v, enc: wire.Encoder) -> dict | None:
        """How the test's objects travel: proxies as references, parameters shared, torch modules pickled."""
        if isinstance(v, Remote):
            return v._wire()
        if isinstance(v, RemoteMethod):
            return v.resolve()._wire()
        if type(v) is not RemoteTensor and isinstance(v, torch.Tensor) and v.requires_grad and v.is_leaf:
            return self.share(v, enc)
        if isinstance(v, torch.nn.Module) or type(v).__module__ == "grading.testmodels":
            return self.ship_module(v, enc)
        if isinstance(v, Iterator):
            return {"$": "iter", "items": [enc(x) for x in v]}
        return None

    def share(self, t: torch.Tensor, enc: wire.Encoder) -> dict:
        """A leaf tensor that requires grad (a parameter) is shared: the worker keeps one copy for the whole run,
        and values and gradients are synchronised both ways at every request."""
        m = self.mirror_of.get(id(t))
        if m is not None and m.ref() is t and m.generation == self.generation:
            return {"$": "ref", "id": m.oid}
        for tok, other in self._new_mirrors.items():
            if other is t:
                return {"$": "ref", "id": -tok}  # the same new parameter twice in one message
        tok = len(self._new_mirrors) + 1
        self._new_mirrors[tok] = t
        out = enc.raw_tensor(t)
        out["mirror"], out["param"] = tok, isinstance(t, torch.nn.Parameter)
        if t.grad is not None:
            out["grad"] = enc.raw_tensor(t.grad)
        return out

    def ship_module(self, module, enc: wire.Encoder) -> dict:
        """A torch module (or a grading.testmodels object) of the test, pickled for the worker; its parameters are
        shared, so what the learner's code does to them shows here."""
        import io
        import pickle

        shared: list[torch.Tensor] = []

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf:
                    shared.append(obj)
                    return str(len(shared) - 1)
                return None

        buf = io.BytesIO()
        Pickler(buf).dump(module)  # pickle goes one way only, to the worker: nothing unpickles the worker's bytes
        return {"$": "module", "b": enc.blob(buf.getvalue()), "tensors": [enc(t) for t in shared]}

    def handle(self, msg: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        """A callback: the learner's code calls a function the test gave it."""
        if msg.get("op") != "callback" or msg.get("id") not in self.callbacks:
            raise wire.WireError("the worker may only call back functions it was given")
        dec = wire.Decoder(blobs, self.from_ref)
        value = self.callbacks[msg["id"]](*dec(msg.get("args", [])), **dec(msg.get("kwargs", {"$": "dict",
                                                                                            "items": []})))
        enc = wire.Encoder(self.as_ref, special=self.special)
        return {"ok": enc(value)}, enc.blobs

    # ------------------------------------------------------------------ references

    def as_ref(self, obj) -> dict:
        if isinstance(obj, RemoteModule):
            return {"$": "ref", "module": obj.__name__}
        if callable(obj):  # a function of the test: the learner's code may call it back, with values
            cid = next((k for k, f in self.callbacks.items() if f is obj), len(self.callbacks) + 1)
            self.callbacks[cid] = obj
            return {"$": "callback", "id": cid}
        raise wire.WireError(f"a {type(obj).__name__} cannot be sent to the learner's code (only values, tensors, "
                             "arrays, functions and objects that came from it)")

    def track(self, obj, out: dict) -> None:
        tok = len(self._tokens) + 1
        self._tokens[tok] = obj
        out["tok"] = tok

    def from_ref(self, v: dict, dec: wire.Decoder):
        if v["$"] == "arg":  # the learner handed back the test's own object
            return self._in_flight[-1][int(v["tok"])]
        if v["$"] == "view":
            base = self._in_flight[-1][int(v["tok"])]
            return base.as_strided([int(x) for x in v["shape"]], [int(x) for x in v["stride"]], int(v["offset"]))
        if v.get("mirror"):
            m = self.mirrors.get(int(v["id"]))
            if m is not None and m.ref() is not None:
                return m.ref()
        if int(v["id"]) in self.release:  # a new proxy owns it again
            self.release.remove(int(v["id"]))
        kind = v.get("kind")
        if kind == "module" and str(v.get("name", "")).split(".")[0] in LEARNER_PACKAGES:
            self.release.append(int(v["id"]))
            return importlib.import_module(str(v["name"]))
        if kind == "exception_class":
            self.release.append(int(v["id"]))
            return exception_class(str(v["name"]), str(v["module"]), list(v.get("bases", [])))
        if "methods" in v:
            self.methods[(self.generation, v.get("tkey"))] = frozenset(v["methods"])
        key = (self.generation, int(v["id"]))
        proxy = self.proxies.get(key)
        if proxy is None:  # one proxy per worker object, so `a is b` means what it means there
            proxy = {"tensor": RemoteTensor, "iterator": RemoteIterator}.get(kind, Remote)(self, v)
            self.proxies[key] = proxy
        return proxy

    def module_attr(self, module: str, name: str):
        key = (self.generation, module, name)
        if key in self.module_attrs:
            return self.module_attrs[key]
        value = self.call("modattr", module=module, name=name)
        if isinstance(value, Remote) and value._info.get("kind") in ("class", "object") and value._info.get("callable"):
            self.module_attrs[(self.generation, module, name)] = value  # a function or class: it stays put
        return value

    def forget(self, generation: int, oid: int) -> None:
        if generation == self.generation:
            self.release.append(oid)


class Mirror:
    """A parameter of the test shared with the worker, and what the other side last saw of it."""

    def __init__(self, ref: weakref.ref, oid: int, generation: int):
        self.ref, self.oid, self.generation = ref, oid, generation
        self.version, self.grad_key = None, None  # the values the worker has (see mark)

    def mark(self, t: torch.Tensor) -> None:
        self.version, self.grad_key = _content(t), _content(t.grad)


def _content(t: torch.Tensor | None):
    """What tells whether a shared tensor changed: a copy of its values (its version counter misses changes made
    through `.data`, as torch.autograd.gradcheck makes them)."""
    return None if t is None else t.detach().clone()


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach(), b)


def write_back(local, value) -> None:
    """Copy the learner's in-place change of an argument into the test's own object."""
    import numpy as np

    if isinstance(local, torch.Tensor) and isinstance(value, torch.Tensor) and local.shape == value.shape:
        with torch.no_grad():
            local.copy_(value)
    elif isinstance(local, np.ndarray) and isinstance(value, np.ndarray) and local.shape == value.shape:
        if local.flags.writeable:
            local[...] = value
    elif isinstance(local, torch._C.Generator) and isinstance(value, torch._C.Generator):
        local.set_state(value.get_state())
    elif isinstance(local, random.Random) and isinstance(value, random.Random):
        local.setstate(value.getstate())
    elif isinstance(local, list) and isinstance(value, list):
        local[:] = value
    elif isinstance(local, dict) and isinstance(value, dict):
        local.clear()
        local.update(value)


# ------------------------------------------------------------------------------------------- proxies


# The learner's classes whose operators the tests use (micrograd's Value is built on them). Any other object
# of the learner's that meets an operator is refused: a result that answers `==` or `-` with whatever makes a
# test pass must not stand in for the value the test asked for.
OPERATOR_TYPES = {"storylib.micrograd.Value"}
# Operators that only ask about the object (its length, membership, items), never compare or compute a value.
_CONTAINER_OPS = {"len", "contains", "getitem", "setitem", "delitem", "iter", "next", "truth"}


def _op(name: str, reflected: bool = False):
    def forward(self, *args):
        if name not in _CONTAINER_OPS and self._info.get("type") not in OPERATOR_TYPES:
            raise TypeError(f"the learner's code returned a {self._info.get('type')} where the test expected a "
                            f"value (a number, a string, a tensor...): {name} is not applied to it")
        operands = [args[0], self] if reflected else [self, *args]
        return self._conn.call("operator", name=name, args=operands)

    return forward


_LOCAL_ONLY = {"_pytestfixturefunction", "_fixture_function_marker", "__test__", "pytestmark", "__pytest_wrapped__",
               "__getstate__", "__setstate__", "__reduce__", "__reduce_ex__", "__fspath__", "__await__",
               "__aiter__", "__anext__", "_ipython_canary_method_should_not_exist_", "__length_hint__"}


class Remote:
    """An object that lives in the worker. Attribute access, calls and operators are requests."""

    __slots__ = ("_conn", "_gen", "_id", "_info", "__weakref__")

    def __init__(self, conn: Connection, info: dict):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_gen", conn.generation)
        object.__setattr__(self, "_id", int(info["id"]))
        object.__setattr__(self, "_info", info)
        weakref.finalize(self, conn.forget, conn.generation, int(info["id"]))

    def _wire(self) -> dict:
        if self._gen != self._conn.generation:
            raise WorkerCrashed("this object was lost when the worker was restarted after an earlier crash")
        return {"$": "ref", "id": self._id}

    def __getattr__(self, name: str):
        if name in _LOCAL_ONLY:
            raise AttributeError(name)
        if name in self._conn.methods.get((self._gen, self._info.get("tkey")), ()):
            return RemoteMethod(self, name)
        return self._conn.call("getattr", obj=self, name=name)

    def __setattr__(self, name: str, value) -> None:
        self._conn.call("setattr", obj=self, name=name, value=value)

    def __delattr__(self, name: str) -> None:
        self._conn.call("delattr", obj=self, name=name)

    def __call__(self, *args, **kwargs):
        return self._conn.call("call", obj=self, args=list(args), kwargs=kwargs)

    def __repr__(self) -> str:
        try:
            return self._conn.call("operator", name="repr", args=[self])
        except Exception:
            return f"<{self._info.get('type', 'object')} in the learner's worker>"

    def __str__(self) -> str:
        return self._conn.call("operator", name="str", args=[self])

    def __format__(self, spec: str) -> str:
        return self._conn.call("operator", name="format", args=[self, spec])

    __hash__ = object.__hash__

    def __iter__(self):
        return self._conn.call("operator", name="iter", args=[self])

    def __enter__(self):
        return self._conn.call("method", obj=self, name="__enter__")

    def __exit__(self, *exc) -> bool:
        return bool(self._conn.call("method", obj=self, name="__exit__", args=[None, None, None]))

    def __deepcopy__(self, memo):
        return self._conn.call("method", obj=self._conn.call("import", name="copy"), name="deepcopy", args=[self])

    def __copy__(self):
        return self._conn.call("method", obj=self._conn.call("import", name="copy"), name="copy", args=[self])

    def __instancecheck__(self, instance) -> bool:
        return bool(self._conn.call("operator", name="isinstance", args=[instance, self]))

    def __subclasscheck__(self, cls) -> bool:
        return bool(self._conn.call("operator", name="issubclass", args=[cls, self]))

    def __dir__(self):
        return self._conn.call("operator", name="dir", args=[self])


for _name in ("len", "contains", "getitem", "setitem", "delitem", "neg", "pos", "invert", "abs", "index", "float",
              "int", "complex", "round", "reversed"):
    setattr(Remote, f"__{_name}__", _op(_name))
Remote.__bool__ = _op("truth")
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Remote, f"__{_name}__", _op(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lshift", "rshift", "and", "or",
              "xor", "divmod"):
    op_name = {"and": "and_", "or": "or_"}.get(_name, _name)
    setattr(Remote, f"__{_name}__", _op(op_name))
    setattr(Remote, f"__r{_name}__", _op(op_name, reflected=True))
    if _name != "divmod":
        setattr(Remote, f"__i{_name}__", _op("i" + op_name))


class RemoteMethod:
    """`obj.name` for a method of a worker object: calling it is one request."""

    __slots__ = ("_obj", "_name")

    def __init__(self, obj: Remote, name: str):
        self._obj, self._name = obj, name

    def __call__(self, *args, **kwargs):
        return self._obj._conn.call("method", obj=self._obj, name=self._name, args=list(args), kwargs=kwargs)

    def resolve(self) -> Remote:
        return self._obj._conn.call("getattr", obj=self._obj, name=self._name)

    def __getattr__(self, name: str):
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        return f"<method {self._name} of {self._obj!r}>"


class RemoteIterator(Remote):
    __slots__ = ()

    def __iter__(self):
        return self

    def __next__(self):
        return self._conn.call("operator", name="next", args=[self])


def _flatten(value):
    if isinstance(value, list | tuple):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def _fetch_all(value):
    if isinstance(value, RemoteTensor):
        return value._conn.call("fetch", obj=value)
    if isinstance(value, list | tuple):
        return type(value)(_fetch_all(v) for v in value)
    if isinstance(value, dict):
        return {k: _fetch_all(v) for k, v in value.items()}
    return value


# A RemoteTensor's autograd graph lives in the worker, so the operations a test applies to it run there too (a
# later .backward() needs them). But every *value* the test sees is computed here, on values fetched by value:
# the learner's code could patch torch in the worker, and must never compute a number an assertion looks at.
_GRAPH_NAMES = {"backward", "register_hook", "retain_grad", "requires_grad_", "grad", "is_leaf", "grad_fn",
                "requires_grad", "retains_grad", "register_post_accumulate_grad_hook"}


class RemoteTensor(Remote):
    """A tensor in the worker's autograd graph: its graph there, its value (checked or computed) here."""

    __slots__ = ("_pinned",)

    # Not an instance of torch.Tensor: torch's C functions must never be handed one. torch treats it as a
    # tensor-like (torch.overrides.is_tensor_like), and tests check tensors that way.

    def _value(self) -> torch.Tensor:
        pinned = getattr(self, "_pinned", None)
        if pinned is not None:
            return pinned
        value = self._conn.call("fetch", obj=self)
        if type(value) is not torch.Tensor:
            raise TypeError(f"the learner's tensor came back as a {type(value).__name__}")
        return value

    def _both(self, local: Callable, remote: Callable):
        """The value computed here; the graph, when there is one to keep, built in the worker."""
        value = local()
        if not (torch.is_grad_enabled() and isinstance(value, torch.Tensor) and value.is_floating_point()):
            return value
        result = remote()
        if isinstance(result, RemoteTensor):
            object.__setattr__(result, "_pinned", value)
            return result
        return value

    def __getattr__(self, name: str):
        if name in _LOCAL_ONLY or name == "_pinned":
            raise AttributeError(name)
        if name in _GRAPH_NAMES or name.endswith("_") and not name.startswith("_"):
            object.__setattr__(self, "_pinned", None)  # an in-place change: fetch the value again next time
            return Remote.__getattr__(self, name)
        attr = getattr(self._value(), name)
        if not callable(attr):
            return attr
        return lambda *a, **k: self._both(lambda: attr(*_fetch_all(a), **_fetch_all(k)),
                                          lambda: self._conn.call("method", obj=self, name=name, args=list(a),
                                                                  kwargs=k))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        remote = next(a for a in _flatten([args, list(kwargs.values())]) if isinstance(a, RemoteTensor))
        conn = remote._conn
        if func in (torch.autograd.grad, torch.autograd.backward):  # the graph is in the worker: so is backward
            return conn.call("getattr", obj=conn.module("torch.autograd"), name=func.__name__)(*args, **kwargs)
        where = getattr(func, "__module__", None)
        if not where or not where.startswith("torch") or not hasattr(sys.modules.get(where), func.__name__):
            return func(*_fetch_all(args), **_fetch_all(kwargs))
        return remote._both(lambda: func(*_fetch_all(args), **_fetch_all(kwargs)),
                            lambda: conn.call("getattr", obj=conn.module(where), name=func.__name__)(*args, **kwargs))

    def __array__(self, dtype=None, copy=None):
        value = self._value().numpy()
        return value if dtype is None else value.astype(dtype)

    def __setitem__(self, key, value) -> None:
        object.__setattr__(self, "_pinned", None)
        self._conn.call("operator", name="setitem", args=[self, key, value])

    def __repr__(self) -> str:
        try:
            return repr(self._value())
        except Exception:
            return "<a tensor in the learner's worker>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(self._value(), spec)

    def __iter__(self):
        return iter(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __bool__(self) -> bool:
        return bool(self._value())

    def __float__(self) -> float:
        return float(self._value())

    def __int__(self) -> int:
        return int(self._value())

    def __index__(self) -> int:
        return self._value().__index__()


def _local_op(name: str, operator_name: str, reflected: bool):
    fn = getattr(torch.Tensor, f"__{name}__")

    def apply(self, *args):
        operands = [args[0], self] if reflected else [self, *args]
        return self._both(lambda: fn(self._value(), *_fetch_all(args)),
                          lambda: self._conn.call("operator", name=operator_name, args=operands))

    return apply


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    _opname = {"and": "and_", "or": "or_"}.get(_name, _name)
    setattr(RemoteTensor, f"__{_name}__", _local_op(_name, _opname, False))
    setattr(RemoteTensor, f"__r{_name}__", _local_op(f"r{_name}", _opname, True))
for _name in ("neg", "pos", "abs", "invert", "getitem", "eq", "ne", "lt", "le", "gt", "ge"):
    setattr(RemoteTensor, f"__{_name}__", _local_op(_name, _name, False))


class RemoteModule(types.ModuleType):
    """A module of the learner's package, as the tests import it: its attributes are fetched from the worker."""

    def __init__(self, name: str, conn: Connection):
        super().__init__(name)
        object.__setattr__(self, "_conn", conn)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") or name in _LOCAL_ONLY:
            raise AttributeError(name)
        return self._conn.module_attr(self.__name__, name)


class RemoteImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """First on sys.meta_path of the grader: `storylib` and `cuda_labs` come from the worker, never from disk;
    except the given modules in `trusted` (name -> the course's file), whose stories and strings the tests feed
    to the learner's code: those are the course's own, so the learner cannot choose the inputs."""

    def __init__(self, conn: Connection, packages: tuple[str, ...] = LEARNER_PACKAGES,
                 trusted: dict[str, str] | None = None):
        self.conn, self.packages, self.trusted = conn, packages, trusted or {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.trusted:
            return importlib.util.spec_from_file_location(fullname, self.trusted[fullname])
        if fullname.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return RemoteModule(spec.name, self.conn)

    def exec_module(self, module) -> None:
        module.__path__ = []
        self.conn.call("import", name=module.__name__)  # the learner's import errors surface here

    def install(self) -> None:
        for name in [m for m in sys.modules if m.split(".")[0] in self.packages]:
            del sys.modules[name]
        sys.meta_path.insert(0, self)


def seed_both(conn: Connection) -> None:
    """`torch.manual_seed` in a test seeds the worker too: the learner's code draws its random numbers there
    (a model's initial weights, say), and a test that seeds expects the same numbers every run."""
    local = torch.manual_seed

    def manual_seed(seed):
        generator = local(seed)
        conn.call("seed", value=torch.initial_seed())  # the seed as salted here (grading/seeds.py)
        return generator

    torch.manual_seed = manual_seed


def stop_process_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
