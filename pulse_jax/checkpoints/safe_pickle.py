"""One bounded, isolated pickle reader for every foreign checkpoint format.

The torch reader, the NVIDIA readers and any future reader decode pickles here. The
pickle is parsed by a small opcode interpreter of its own, not by `pickle.Unpickler`:
nothing it names is imported, looked up or called unless the reader allowed it, and no
value it builds is shared with another read.

How a reader plugs in:

1. Declare a `Policy`: the globals a file may name, each a `Global` whose `call` (for
   REDUCE) or `new` (for NEWOBJ) is a pure function building a *fresh* value from the
   already-built arguments (a `Global` with neither is an inert token the reader can
   recognise by its `tag`, e.g. a storage type); a `build(obj, state)` hook if the
   format needs the BUILD opcode (it may only ever see objects its own `call`/`new`
   returned in this read, each once, before they were used anywhere; without a hook
   BUILD is refused); and how refusals of other globals are worded.
2. Per file, open a `Session(path, file_size, limits)` and call
   `session.unpickle(data, policy, start=..., persistent_load=...)`. Materialise arrays
   with `session.array(...)` and read zip members with `session.zip_member(...)`, so
   that every byte the read allocates counts against one budget, `limits.expansion`
   times the file's size (plus `limits.slack`). Pass `Limits(expansion=...)` for a
   legitimate file that needs more.
3. Raise `Refusal(message)` in hooks for a value that is not what the format holds; the
   session turns it, and any decoding failure, into a one-line `CheckpointError` naming
   the file. Describe attacker values with `describe`, never with `repr`.

What the interpreter bounds: nesting depth, the memo, the number of objects any value
expands to when walked as a tree (a DAG of shared tuples counts every path, so walking,
hashing or printing a result is bounded too), the size of integers, and wall time.
Dict keys and set items are scalars only (hashing them is linear), containers are sealed
once placed inside another (so sizes are final and cycles impossible), sets are refused
unless the policy allows them (`Policy.sets`), and extension codes, old-style instances
and out-of-band buffers are always refused.

Time: every step costs a bounded amount per byte of the file. Hash flooding cannot make
one opcode slow: a container (dict, set, a set a policy builds with `check_keys`) refuses
more than `MAX_SAME_HASH` distinct keys of one hash value, so one insertion probes at most
that many equal-hash keys, and the deadline (`Limits.max_seconds`) is checked every 4096
opcodes and every 4096 items inside one opcode. Memory: every object the interpreter makes
counts against the read's byte budget (`Session.take`): containers and their entries
(`OBJECT_BYTES`, `ENTRY_BYTES`), strings, bytes and big integers (their size), memo
entries, arrays and zip members, so a read holds at most the budget
(`expansion` x file size + `slack`) beyond the file's own bytes and a few bytes per
pushed scalar.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import struct
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pulse_jax.checkpoints import CheckpointError


class Refusal(ValueError):
    """Raised by a reader's hooks: the value is not what the format holds (one line)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on one read. The defaults fit every honest checkpoint the project reads."""

    max_depth: int = 64  # nesting of containers and constructed values
    max_objects: int = 2_000_000  # nodes of any value walked as a tree
    max_memo: int = 1_000_000
    max_int_bytes: int = 64
    max_seconds: float = 300.0
    expansion: float = 8.0  # bytes allocated (arrays, zip members) per byte of file
    slack: int = 16 << 20  # bytes allowed on top of the expansion, for tiny files


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, eq=False)
class Global:
    """A global a reader allows, named `module.qualname` in the file.

    `call(*args)` answers REDUCE, `new(*args)` answers NEWOBJ (`cls.__new__(cls, *args)`);
    both must return fresh values. With neither, the global is an inert token that can
    only be passed as an argument; `tag` is the reader's own data about it.
    """

    name: str
    call: Callable[..., Any] | None = None
    new: Callable[..., Any] | None = None
    tag: Any = None

    def __repr__(self) -> str:
        return f"<global {self.name}>"


@dataclasses.dataclass(frozen=True)
class Policy:
    """What one file format may contain (see the module docstring)."""

    globals: Mapping[str, Global]
    refuse_global: Callable[[str], str]  # message for a global outside `globals`
    build: Callable[[Any, Any], Any] | None = None
    encoding: str = "utf-8"  # of Python 2 strings (`bytes` keeps them as bytes)
    sets: bool = False  # whether sets of scalars (EMPTY_SET, ADDITEMS, FROZENSET) may appear


def describe(value: Any, width: int = 60) -> str:
    """A bounded description of any value a file produced, safe for an error message."""
    if value is None or isinstance(value, bool | int | float):
        text = str(value) if not isinstance(value, int) or value.bit_length() < 128 else "a big int"
        return text[:width]
    if isinstance(value, str | bytes):
        head = value[:width]
        cut = "..." if len(value) > width else ""
        return f"{type(value).__name__} {head!r}{cut}"
    if isinstance(value, tuple | list | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, np.ndarray):
        return f"an array {value.dtype.str} of shape {value.shape}"[: width + 40]
    if isinstance(value, Global):
        return f"the global {value.name[:width]}"
    return f"a {type(value).__name__}"


_SCALARS = (str, int, float, bool, bytes, type(None))
# Distinct keys of one hash value one container may hold: honest files never repeat a
# full hash (the CPython hashes of distinct small ints and of strings differ), a hostile
# file with thousands (`k * (2**61 - 1)` all hash to 0) would make insertion quadratic.
MAX_SAME_HASH = 8
# What the interpreter charges the byte budget for what it makes: a tracked value (the
# object, its bookkeeping entries), one entry of a container, one memo entry.
OBJECT_BYTES = 256
ENTRY_BYTES = 96
MEMO_BYTES = 128
_ITEMS_PER_TIME_CHECK = 4096


def check_keys(keys, counts: dict[int, int] | None = None, existing=()) -> dict[int, int]:
    """Refuses keys (dict keys, set items) of which more than `MAX_SAME_HASH` distinct ones
    share one hash value; `counts` (hash -> distinct keys so far) carries over between calls
    for one container, `existing` is the container (keys already in it are not new).

    Raises:
      Refusal: naming the flood.
    """
    counts = {} if counts is None else counts
    for key in keys:
        h = hash(key)
        if key in existing:
            continue
        n = counts.get(h, 0) + 1
        if n > MAX_SAME_HASH:
            raise Refusal(
                f"has more than {MAX_SAME_HASH} distinct keys with one hash value in one "
                "container (a hash flood)"
            )
        counts[h] = n
    return counts


_MARK = object()
_SET_OPCODES = (0x8F, 0x90, 0x91)  # EMPTY_SET, ADDITEMS, FROZENSET: only with `Policy.sets`
_HANDLERS: dict[int, Callable[[Any, int], None]] = {}  # opcode -> `_Unpickler` method


def _opcodes(*codes: int):
    """Registers an `_Unpickler` method as the handler of these opcodes."""

    def register(handler):
        _HANDLERS.update(dict.fromkeys(codes, handler))
        return handler

    return register


class _Unpickler:
    """The opcode interpreter; one instance per pickle."""

    def __init__(self, session: Session, data, policy: Policy, start: int, persistent_load):
        self.s = session
        self.buf = data if isinstance(data, bytes) else bytes(data)
        self.data = memoryview(self.buf)
        self.pos = start
        self.at = start  # where the opcode being run starts
        self.policy = policy
        self.persistent_load = persistent_load
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, Any] = {}
        self.info: dict[int, tuple[int, int]] = {}  # id -> (tree size, depth)
        self.sealed: set[int] = set()
        self.fresh: set[int] = set()  # reader-made values BUILD may still act on
        self.replaced: dict[int, Any] = {}  # id of a built object -> what BUILD made of it
        self.keep: list = []  # every tracked object stays alive, so ids stay unique
        self.hashes: dict[int, dict[int, int]] = {}  # id of a dict/set -> its key hash counts
        self.items = 0  # items handled since the last time check

    # -- reading bytes -----------------------------------------------------------------

    def read(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise Refusal(f"is truncated: a pickle needs {n} bytes at byte {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.read(n), "little")

    def line(self) -> bytes:
        end = self.buf.find(b"\n", self.pos, self.pos + (1 << 16))
        if end < 0:
            raise Refusal(f"is truncated or corrupt: a pickle text line at byte {self.pos}")
        text = self.buf[self.pos : end]
        self.pos = end + 1
        return text

    # -- tracking values ---------------------------------------------------------------

    def track(self, obj, size: int, depth: int, fresh: bool = False):
        limits = self.s.limits
        if depth > limits.max_depth:
            raise Refusal(f"nests deeper than {limits.max_depth} levels")
        if size > limits.max_objects:
            raise Refusal(f"holds a value that expands to more than {limits.max_objects} objects")
        key = id(obj)
        if key not in self.info:
            self.s.take(OBJECT_BYTES, "the pickle's objects")
            self.keep.append(obj)
        self.info[key] = (size, depth)
        if fresh:
            self.fresh.add(id(obj))
        return obj

    def child(self, value):
        """A value about to go inside another: resolved, sealed; returns it, size, depth."""
        value = self.replaced.get(id(value), value)
        if value is _MARK:
            raise Refusal("is corrupt: a pickle mark used as a value")
        key = id(value)
        self.sealed.add(key)
        self.fresh.discard(key)
        size, depth = self.info.get(key, (1, 0))
        return value, size, depth

    def grow(self, container, added: int, depth: int) -> None:
        key = id(container)
        if key in self.sealed:
            raise Refusal("changes a container after it was used (not a pickle Python writes)")
        size, old_depth = self.info.get(key, (1, 0))
        self.track(container, size + added, max(old_depth, depth + 1))

    def pop(self):
        if not self.stack:
            raise Refusal("is corrupt: a pickle pops an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.marks:
            raise Refusal("is corrupt: a pickle closes a mark it never opened")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def tick(self, items: int) -> None:
        """Counts `items` handled inside one opcode, checking the deadline every 4096."""
        self.items += items
        if self.items >= _ITEMS_PER_TIME_CHECK:
            self.items = 0
            self.s.check_time()

    def keys(self, target, keys: list) -> None:
        """Refuses a hash flood among `keys` about to go into `target` (a dict or a set)."""
        counts = self.hashes.setdefault(id(target), {})
        for start in range(0, len(keys), _ITEMS_PER_TIME_CHECK):
            chunk = keys[start : start + _ITEMS_PER_TIME_CHECK]
            check_keys(chunk, counts, target)
            self.tick(len(chunk))

    def scalar(self, value):
        """Charges a string, bytes or big integer the file made; returns it."""
        self.s.take(sys.getsizeof(value), "the pickle's strings")
        return value

    def children(self, items) -> tuple[list, int, int]:
        """Values about to go inside one new value (`child` each): the values, their summed
        size plus one, and their deepest depth."""
        values, size, depth = [], 1, 0
        self.tick(len(items))
        self.s.take(ENTRY_BYTES * len(items), "the pickle's containers")
        for item in items:
            v, n, d = self.child(item)
            values.append(v)
            size += n
            depth = max(depth, d)
        return values, size, depth

    def make_tuple(self, items: list) -> tuple:
        values, size, depth = self.children(items)
        result = tuple(values)
        if not result:
            return result
        return self.track(result, size, depth + 1)

    def set_items(self, target, items: list) -> None:
        target = self.replaced.get(id(target), target)
        if not isinstance(target, dict):
            raise Refusal(f"sets items on {describe(target)}, not a dict")
        if len(items) % 2:
            raise Refusal("is corrupt: a pickle sets a key without a value")
        added, depth = 0, 0
        keys = [self.replaced.get(id(k), k) for k in items[0::2]]
        for key in keys:
            if not isinstance(key, _SCALARS):
                raise Refusal(f"has a dict key that is {describe(key)}, not a string or number")
        self.keys(target, keys)
        self.s.take(ENTRY_BYTES * len(keys), "the pickle's containers")
        for i in range(0, len(items), 2):
            key, n1, _ = self.child(items[i])
            value, n2, d = self.child(items[i + 1])
            target[key] = value
            added += n1 + n2
            depth = max(depth, d)
        self.grow(target, added, depth)

    def append(self, target, items: list) -> None:
        target = self.replaced.get(id(target), target)
        if type(target) is not list:
            raise Refusal(f"appends to {describe(target)}, not a list")
        values, size, depth = self.children(items)
        if any(value is target for value in values):
            raise Refusal("holds a list that contains itself")
        target.extend(values)
        self.grow(target, size - 1, depth)

    def add_items(self, target, items: list) -> None:
        target = self.replaced.get(id(target), target)
        if type(target) is not set:
            raise Refusal(f"adds set items to {describe(target)}, not a set")
        values = [self.child(item)[0] for item in items]
        for value in values:
            if not isinstance(value, _SCALARS):
                raise Refusal(f"has a set item that is {describe(value)}, not a string or number")
        self.keys(target, values)
        self.s.take(ENTRY_BYTES * len(values), "the pickle's containers")
        target.update(values)
        self.grow(target, len(items), 0)

    def construct(self, function, args, how: str):
        function = self.replaced.get(id(function), function)
        if not isinstance(function, Global):
            raise Refusal(f"calls {describe(function)}, which is not an allowed global")
        maker = function.call if how == "call" else function.new
        if maker is None:
            raise Refusal(f"calls {function.name}, which this format never calls that way")
        if not isinstance(args, tuple):
            raise Refusal(f"calls {function.name} with {describe(args)}, not a tuple")
        values, size, depth = self.children(args)
        self.child(args)
        result = maker(*values)
        if isinstance(result, _SCALARS) or isinstance(result, Global):
            return result
        return self.track(result, size, depth + 1, fresh=True)

    # -- the interpreter ---------------------------------------------------------------

    def load(self):
        """Runs the pickle to its STOP; returns (value, position after STOP)."""
        count = 0
        while True:
            count += 1
            if count & 0xFFF == 0:
                self.s.check_time()
            if self.pos >= len(self.data):
                raise Refusal("is truncated: a pickle ends before its STOP opcode")
            op = self.data[self.pos]
            self.at = self.pos
            self.pos += 1
            if op == 0x2E:  # STOP
                return self.child(self.pop())[0], self.pos
            handler = _HANDLERS.get(op)
            if handler is None or (op in _SET_OPCODES and not self.policy.sets):
                name = _OPCODE_NAMES.get(op, f"0x{op:02x}")
                raise Refusal(f"refused: pickle opcode {name} at byte {self.at}")
            handler(self, op)

    # Each handler runs one opcode (named in its comment), its byte code `op` read.

    @_opcodes(0x80)  # PROTO
    def _proto(self, op):
        if self.uint(1) > 5:
            raise Refusal("uses a pickle protocol above 5")

    @_opcodes(0x95)  # FRAME
    def _frame(self, op):
        self.uint(8)

    @_opcodes(0x28)  # MARK
    def _mark(self, op):
        if len(self.marks) >= self.s.limits.max_depth:
            raise Refusal(f"nests deeper than {self.s.limits.max_depth} levels")
        self.marks.append(self.stack)
        self.stack = []

    @_opcodes(0x30)  # POP
    def _pop(self, op):
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    @_opcodes(0x31)  # POP_MARK
    def _pop_mark(self, op):
        self.pop_mark()

    @_opcodes(0x32)  # DUP
    def _dup(self, op):
        value = self.pop()
        self.stack += [value, value]

    @_opcodes(0x4E, 0x88, 0x89, 0x29)  # NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE
    def _constant(self, op):
        self.stack.append({0x4E: None, 0x88: True, 0x89: False, 0x29: ()}[op])

    @_opcodes(0x4A, 0x4B, 0x4D)  # BININT, BININT1, BININT2
    def _binint(self, op):
        if op == 0x4A:
            self.stack.append(int.from_bytes(self.read(4), "little", signed=True))
        else:
            self.stack.append(self.uint(1 if op == 0x4B else 2))

    @_opcodes(0x8A, 0x8B)  # LONG1, LONG4
    def _long(self, op):
        n = self.uint(1 if op == 0x8A else 4)
        if n > self.s.limits.max_int_bytes:
            raise Refusal(f"holds an integer of {n} bytes")
        self.stack.append(self.scalar(int.from_bytes(self.read(n), "little", signed=True)))

    @_opcodes(0x49, 0x4C)  # INT, LONG (text)
    def _text_int(self, op):
        text = self.line().rstrip(b"L")
        if len(text) > 3 * self.s.limits.max_int_bytes:
            raise Refusal(f"holds an integer of {len(text)} digits")
        if op == 0x49 and text in (b"00", b"01"):
            self.stack.append(text == b"01")
        else:
            self.stack.append(int(text))

    @_opcodes(0x46, 0x47)  # FLOAT, BINFLOAT
    def _float(self, op):
        if op == 0x46:
            self.stack.append(float(self.line()))
        else:
            self.stack.append(struct.unpack(">d", self.read(8))[0])

    @_opcodes(0x8C, 0x58, 0x8D, 0x56)  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, UNICODE
    def _unicode(self, op):
        if op == 0x56:
            text = self.line().decode("raw-unicode-escape")
        else:
            n = self.uint({0x8C: 1, 0x58: 4, 0x8D: 8}[op])
            text = str(self.read(n), "utf-8", "surrogatepass")
        self.stack.append(self.scalar(text))

    @_opcodes(0x43, 0x42, 0x8E)  # SHORT_BINBYTES, BINBYTES, BINBYTES8
    def _bytes(self, op):
        n = self.uint({0x43: 1, 0x42: 4, 0x8E: 8}[op])
        self.stack.append(self.scalar(bytes(self.read(n))))

    @_opcodes(0x55, 0x54, 0x53)  # SHORT_BINSTRING, BINSTRING, STRING (Python 2 str)
    def _py2_string(self, op):
        if op == 0x53:
            text = self.line()
            if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
                raise Refusal("is corrupt: a pickle STRING is not quoted")
            raw = codecs.escape_decode(text[1:-1])[0]
        else:
            n = self.uint(1) if op == 0x55 else int.from_bytes(self.read(4), "little")
            raw = bytes(self.read(n))
        self.stack.append(self.scalar(self.py2_string(raw)))

    @_opcodes(0x5D, 0x7D, 0x8F)  # EMPTY_LIST, EMPTY_DICT, EMPTY_SET
    def _empty(self, op):
        self.stack.append(self.track({0x5D: list, 0x7D: dict, 0x8F: set}[op](), 1, 1))

    @_opcodes(0x6C, 0x64)  # LIST, DICT
    def _list_or_dict(self, op):
        items = self.pop_mark()
        if op == 0x6C:
            result = self.track([], 1, 1)
            self.append(result, items)
        else:
            result = self.track({}, 1, 1)
            self.set_items(result, items)
        self.stack.append(result)

    @_opcodes(0x74, 0x85, 0x86, 0x87)  # TUPLE, TUPLE1, TUPLE2, TUPLE3
    def _tuple(self, op):
        if op == 0x74:
            items = self.pop_mark()
        else:
            n = op - 0x84
            if len(self.stack) < n:
                raise Refusal("is corrupt: a pickle tuple lacks its items")
            items = self.stack[-n:]
            del self.stack[-n:]
        self.stack.append(self.make_tuple(items))

    @_opcodes(0x61, 0x65, 0x73, 0x75, 0x90)  # APPEND, APPENDS, SETITEM, SETITEMS, ADDITEMS
    def _add_to_container(self, op):
        if op == 0x61:
            items = [self.pop()]
        elif op == 0x73:
            value, key = self.pop(), self.pop()
            items = [key, value]
        else:
            items = self.pop_mark()
        target = self.stack[-1] if self.stack else None
        if op in (0x61, 0x65):
            self.append(target, items)
        elif op in (0x73, 0x75):
            self.set_items(target, items)
        else:
            self.add_items(target, items)

    @_opcodes(0x91)  # FROZENSET
    def _frozenset(self, op):
        result = self.track(set(), 1, 1)
        self.add_items(result, self.pop_mark())
        self.stack.append(self.track(frozenset(result), *self.info[id(result)]))

    @_opcodes(0x70, 0x71, 0x72, 0x94)  # PUT, BINPUT, LONG_BINPUT, MEMOIZE
    def _put(self, op):
        if op == 0x70:
            index = self.text_index()
        elif op == 0x94:
            index = len(self.memo)
        else:
            index = self.uint(1 if op == 0x71 else 4)
        if not self.stack:
            raise Refusal("is corrupt: a pickle memoizes an empty stack")
        if index not in self.memo:
            if len(self.memo) >= self.s.limits.max_memo:
                raise Refusal(f"memoizes more than {self.s.limits.max_memo} objects")
            self.s.take(MEMO_BYTES, "the pickle's memo")
        self.memo[index] = self.stack[-1]

    @_opcodes(0x67, 0x68, 0x6A)  # GET, BINGET, LONG_BINGET
    def _get(self, op):
        index = self.text_index() if op == 0x67 else self.uint(1 if op == 0x68 else 4)
        if index not in self.memo:
            raise Refusal(f"is corrupt: a pickle fetches memo entry {index}, never set")
        self.stack.append(self.memo[index])

    @_opcodes(0x63, 0x93)  # GLOBAL, STACK_GLOBAL
    def _global(self, op):
        if op == 0x63:
            module = self.line().decode("utf-8")
            name = self.line().decode("utf-8")
        else:
            name, module = self.pop(), self.pop()
            if not (isinstance(module, str) and isinstance(name, str)):
                raise Refusal("is corrupt: a pickle names a global with non-strings")
        qualified = f"{module}.{name}"
        if qualified not in self.policy.globals:
            raise Refusal(self.policy.refuse_global(qualified[:200]))
        self.stack.append(self.policy.globals[qualified])

    @_opcodes(0x52, 0x81)  # REDUCE, NEWOBJ
    def _reduce(self, op):
        args, function = self.pop(), self.pop()
        self.stack.append(self.construct(function, args, "call" if op == 0x52 else "new"))

    @_opcodes(0x62)  # BUILD
    def _build(self, op):
        state, obj = self.pop(), self.pop()
        self.stack.append(self.build(obj, state))

    @_opcodes(0x50, 0x51)  # PERSID, BINPERSID
    def _persistent(self, op):
        if self.persistent_load is None:
            raise Refusal(f"refers to outside data (opcode at byte {self.at}) where it may not")
        pid = self.line().decode("ascii") if op == 0x50 else self.pop()
        self.stack.append(self.persistent_load(self.child(pid)[0]))

    def text_index(self) -> int:
        """A memo index written as text (PUT, GET): below 2^32, like the binary forms (the
        memo is a dict keyed by these, so arbitrary integers could flood it)."""
        text = self.line()
        if not (0 < len(text) <= 10 and text.isdigit()) or int(text) >= 1 << 32:
            raise Refusal(f"is corrupt: a pickle memo index {describe(text)}")
        return int(text)

    def py2_string(self, raw: bytes):
        if self.policy.encoding == "bytes":
            return raw
        return raw.decode(self.policy.encoding)

    def build(self, obj, state):
        key = id(obj)
        if self.policy.build is None or key not in self.fresh:
            raise Refusal(
                f"sets the state of {describe(obj)} (BUILD), which this format never does"
            )
        self.fresh.discard(key)
        state, size, depth = self.child(state)
        result = self.policy.build(obj, state)
        old_size, old_depth = self.info.get(key, (1, 0))
        self.replaced[key] = result
        if not isinstance(result, _SCALARS):
            self.track(result, old_size + size, max(old_depth, depth + 1))
        return result


_OPCODE_NAMES = {
    0x82: "EXT1",
    0x83: "EXT2",
    0x84: "EXT4",
    0x69: "INST",
    0x6F: "OBJ",
    0x8F: "EMPTY_SET",
    0x90: "ADDITEMS",
    0x91: "FROZENSET",
    0x92: "NEWOBJ_EX",
    0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}

# What a malformed file makes decoding raise; each becomes a one-line CheckpointError.
PARSE_ERRORS = (
    Refusal,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    UnicodeError,
    NotImplementedError,
)

_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class Session:
    """One read of one file: its limits, its allocation budget and its deadline."""

    def __init__(self, path, file_size: int, limits: Limits | None = None):
        self.path = path
        self.limits = limits or DEFAULT_LIMITS
        self.budget = int(self.limits.expansion * file_size) + self.limits.slack
        self.deadline = time.monotonic() + self.limits.max_seconds

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(self.path, message)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise Refusal(f"took longer than {self.limits.max_seconds:g} s to read")

    def take(self, nbytes: int, what: str) -> None:
        """Counts `nbytes` about to be allocated for `what` against the budget."""
        if nbytes > self.budget:
            raise Refusal(
                f"{what} needs {nbytes} bytes, more than the file could honestly hold "
                f"(at most {self.limits.expansion:g} x its size in all; pass a larger "
                "expansion limit if the file is genuine)"
            )
        self.budget -= nbytes

    def guard(self, action: Callable[[], Any]):
        """Runs `action`, turning every decoding failure into a one-line CheckpointError."""
        try:
            return action()
        except CheckpointError:
            raise
        except Refusal as e:
            raise self.error(_one_line(str(e))) from None
        except MemoryError:
            raise self.error("needs more memory than is available to read") from None
        except RecursionError:
            raise self.error("nests too deeply to read") from None
        except PARSE_ERRORS as e:
            detail = _one_line(str(e))
            raise self.error(f"is truncated or corrupt ({type(e).__name__}: {detail})") from None

    def unpickle(
        self,
        data,
        policy: Policy,
        *,
        start: int = 0,
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> tuple[Any, int]:
        """Decodes the pickle at `data[start:]`; returns its value and the byte after STOP."""
        return self.guard(lambda: _Unpickler(self, data, policy, start, persistent_load).load())

    def array(
        self,
        storage: np.ndarray,
        dtype: np.dtype,
        shape,
        strides=None,
        offset: int = 0,
        *,
        what: str = "an array",
    ) -> np.ndarray:
        """A fresh array viewing the bytes `storage` ([N] uint8) as `dtype` elements.

        `shape`, `strides` (in elements; None for C order) and `offset` (in elements) are
        checked before any data is touched: integer entries, rank at most 32, no negative
        entries, no zero stride on a dimension longer than 1, every element inside
        `storage`, and the copy within the session's budget.

        Raises:
          Refusal: naming what is wrong.
        """
        dtype = check_dtype(dtype, what)
        if not (
            isinstance(storage, np.ndarray)
            and storage.dtype == np.uint8
            and storage.ndim == 1
            and storage.flags.c_contiguous
        ):
            raise Refusal(f"{what} is backed by {describe(storage)}, not raw bytes")
        shape = _int_tuple(shape, f"{what}'s shape")
        if strides is None:
            strides, step = [], 1
            for n in reversed(shape):
                strides.append(step)
                step *= max(n, 1)
            strides = tuple(reversed(strides))
        strides = _int_tuple(strides, f"{what}'s strides")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise Refusal(f"{what} has offset {describe(offset)}, not an integer >= 0")
        if len(shape) != len(strides) or len(shape) > 32:
            raise Refusal(f"{what} has {len(shape)} sizes and {len(strides)} strides")
        count = math.prod(shape)
        for n, step in zip(shape, strides, strict=True):
            if step == 0 and n > 1 and count:
                raise Refusal(f"{what} repeats one element {n} times (a zero stride)")
        elements = storage.size // dtype.itemsize
        if count:
            last = offset + sum((n - 1) * step for n, step in zip(shape, strides, strict=True))
            if last >= elements:
                raise Refusal(
                    f"{what} of size {shape}, stride {strides} at offset {offset} runs past "
                    f"the end of its storage ({elements} elements)"
                )
        self.take(count * dtype.itemsize, what)
        if not count:
            return np.zeros(shape, dtype)
        flat = storage[: elements * dtype.itemsize].view(dtype)
        byte_strides = tuple(step * dtype.itemsize for step in strides)
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape, byte_strides, writeable=False)
        return view.copy()

    def zip_entries(self, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
        """The members of an archive by name, refusing duplicates, encryption and unknown
        compression before anything is read."""
        entries: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            name = info.filename[:200]
            if info.filename in entries:
                raise Refusal(f"holds the zip member {name} twice")
            if info.flag_bits & 0x1:
                raise Refusal(f"has an encrypted zip member {name}")
            if info.compress_type not in _ZIP_METHODS:
                raise Refusal(f"zip member {name} uses compression method {info.compress_type}")
            entries[info.filename] = info
        return entries

    def zip_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        """A member's bytes, its declared size counted against the budget and never exceeded."""
        name = info.filename[:200]
        self.take(info.file_size, f"zip member {name}")
        with archive.open(info) as f:
            data = f.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise Refusal(f"zip member {name} holds {len(data)} bytes, not {info.file_size}")
        return data


# Element types an array in a checkpoint may have: numbers and booleans only.
_DTYPE_KINDS = "biufc"


def check_dtype(dtype, what: str = "an array") -> np.dtype:
    """`dtype` if it is a plain number or boolean type (no fields, objects or subarrays)."""
    if not isinstance(dtype, np.dtype):
        raise Refusal(f"{what} has element type {describe(dtype)}")
    if dtype.kind not in _DTYPE_KINDS or dtype.fields or dtype.subdtype or dtype.itemsize > 16:
        raise Refusal(f"{what} has element type {dtype.str[:20]}, not a plain number type")
    return dtype


def _int_tuple(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple):
        raise Refusal(f"{what} is {describe(values)}, not a tuple")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 62:
            raise Refusal(f"{what} holds {describe(v)}, not an integer in [0, 2^62)")
    return values


def _one_line(text: str, width: int = 300) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[:width] + "..."
