"""Writers of NVIDIA's TF network pickles at small sizes (tests only).

`make_case` writes a pickle with exactly the structure of NVIDIA's
`karras2019stylegan-ffhq-1024x1024.pkl` (protocol 4; the tuple (G, D, Gs) of
`dnnlib.tflib.network.Network` objects pickled as their `__getstate__` dicts; numpy arrays
and numpy.float32 scalars under numpy-1 global names). The PULSE-format numbers are drawn
first and the TF variables derived from them by inverting the transforms, so reading the
pickle must give the drawn numbers back exactly. `tf_pickle_from_ada` writes NVIDIA's TF
StyleGAN2 pickle of an ADA state the same way.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types

import numpy as np

NUMPY1 = "numpy.core.multiarray"
NUMPY2 = "numpy._core.multiarray"
DLATENT = 512


# --- the PULSE-format numbers and their TF counterparts -----------------------------------


def nf(stage: int, fmap_base: int, fmap_max: int) -> int:
    return min(int(fmap_base / 2.0**stage), fmap_max)


def pulse_state_dicts(rng, resolution: int, fmap_base: int, fmap_max: int, dlatent=DLATENT):
    """Random PULSE `G_synthesis` / `G_mapping` state dicts, keys in PULSE's module order."""

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def epilogue(prefix, c):
        return {
            f"{prefix}.noise.weight": randn(c),
            f"{prefix}.style_mod.lin.weight": randn(2 * c, dlatent),
            f"{prefix}.style_mod.lin.bias": randn(2 * c),
        }

    log2 = resolution.bit_length() - 1
    blur = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)[None, None] / 16
    c_last = nf(log2 - 1, fmap_base, fmap_max)
    syn = {"torgb.weight": randn(3, c_last, 1, 1), "torgb.bias": randn(3)}
    for r in range(2, log2 + 1):
        c, b = nf(r - 1, fmap_base, fmap_max), f"blocks.{2**r}x{2**r}"
        if r == 2:
            syn |= {f"{b}.const": randn(1, c, 4, 4), f"{b}.bias": randn(c)}
            syn |= epilogue(f"{b}.epi1", c)
            syn |= {f"{b}.conv.weight": randn(c, c, 3, 3), f"{b}.conv.bias": randn(c)}
        else:
            c_in = nf(r - 2, fmap_base, fmap_max)
            syn |= {f"{b}.conv0_up.weight": randn(c, c_in, 3, 3), f"{b}.conv0_up.bias": randn(c)}
            syn[f"{b}.conv0_up.intermediate.kernel"] = blur
            syn |= epilogue(f"{b}.epi1", c)
            syn |= {f"{b}.conv1.weight": randn(c, c, 3, 3), f"{b}.conv1.bias": randn(c)}
        syn |= epilogue(f"{b}.epi2", c)
    mapping = {}
    for i in range(8):
        mapping |= {f"dense{i}.weight": randn(dlatent, dlatent), f"dense{i}.bias": randn(dlatent)}
    return syn, mapping


def tf_variables(syn: dict, mapping: dict, resolution: int, rng, offset: float = 0.0):
    """Inverts the transforms: PULSE state dicts -> the `variables` lists of G_synthesis and
    G_mapping, in TF creation order, with the non-PULSE variables (lod, noise, ToRGB_lod1..)."""

    def conv(w):  # OIHW -> HWIO, inverse of permute(3, 2, 0, 1)
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0)) + offset

    def dense(w):
        return np.ascontiguousarray(w.T) + offset

    def same(w):
        return w + offset

    def epilogue(pulse, tf):
        return [
            (f"{tf}/Noise/weight", same(syn[f"{pulse}.noise.weight"])),
            (f"{tf}/StyleMod/weight", dense(syn[f"{pulse}.style_mod.lin.weight"])),
            (f"{tf}/StyleMod/bias", same(syn[f"{pulse}.style_mod.lin.bias"])),
        ]

    log2 = resolution.bit_length() - 1
    num_layers = 2 * log2 - 2
    synthesis = [("lod", np.float32(0.0))]  # a numpy scalar, as TF's Session.run returns it
    for i in range(num_layers):
        r = 2 ** (i // 2 + 2)
        synthesis.append((f"noise{i}", rng.standard_normal((1, 1, r, r)).astype(np.float32)))
    for r in range(2, log2 + 1):
        s, b = f"{2**r}x{2**r}", f"blocks.{2**r}x{2**r}"
        if r == 2:
            synthesis += [(f"{s}/Const/const", same(syn[f"{b}.const"]))]
            synthesis += epilogue(f"{b}.epi1", f"{s}/Const")[:1]
            synthesis += [(f"{s}/Const/bias", same(syn[f"{b}.bias"]))]
            synthesis += epilogue(f"{b}.epi1", f"{s}/Const")[1:]
            layers = [("conv", "Conv")]
        else:
            layers = [("conv0_up", "Conv0_up"), ("conv1", "Conv1")]
        for i, (pulse, tf) in enumerate(layers):
            epi = f"{b}.epi{2 if r == 2 or i == 1 else 1}"
            synthesis += [(f"{s}/{tf}/weight", conv(syn[f"{b}.{pulse}.weight"]))]
            synthesis += epilogue(epi, f"{s}/{tf}")[:1]
            synthesis += [(f"{s}/{tf}/bias", same(syn[f"{b}.{pulse}.bias"]))]
            synthesis += epilogue(epi, f"{s}/{tf}")[1:]
        lod = log2 - r
        if lod == 0:
            synthesis += [("ToRGB_lod0/weight", conv(syn["torgb.weight"]))]
            synthesis += [("ToRGB_lod0/bias", same(syn["torgb.bias"]))]
        else:
            c = syn[f"{b}.epi2.noise.weight"].shape[0]
            synthesis += [(f"ToRGB_lod{lod}/weight", np.ones((1, 1, c, 3), np.float32))]
            synthesis += [(f"ToRGB_lod{lod}/bias", np.ones(3, np.float32))]
    mapping_vars = []
    for i in range(8):
        mapping_vars += [(f"Dense{i}/weight", dense(mapping[f"dense{i}.weight"]))]
        mapping_vars += [(f"Dense{i}/bias", same(mapping[f"dense{i}.bias"]))]
    return synthesis, mapping_vars


# --- writing the pickle the way NVIDIA's code did ----------------------------------------


class Network:
    """The writing side's `dnnlib.tflib.network.Network`: pickles as its state dict."""

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self):
        return self._state


def network(name, build_func_name, variables, components=None, static_kwargs=None, marker=None):
    # TF's own __setstate__ would exec build_module_src; the reader must not.
    source = f"open({str(marker)!r}, 'w').close()\n" if marker else "# networks_stylegan.py\n"
    return Network(
        {
            "version": 3,
            "name": name,
            "static_kwargs": dict(static_kwargs or {}),
            "components": dict(components or {}),
            "build_module_src": source,
            "build_func_name": build_func_name,
            "variables": list(variables),
        }
    )


def official_tuple(syn, mapping, resolution, rng, marker=None, g_offset=1.0):
    """(G, D, Gs) with NVIDIA's structure; G carries other numbers than Gs."""
    log2 = resolution.bit_length() - 1
    kwargs = {"num_channels": 3, "resolution": resolution, "label_size": 0}

    def generator(name, offset):
        syn_vars, map_vars = tf_variables(syn, mapping, resolution, rng, offset)
        components = {
            "synthesis": network(
                "G_synthesis", "G_synthesis", syn_vars, static_kwargs=kwargs, marker=marker
            ),
            "mapping": network(
                "G_mapping",
                "G_mapping",
                map_vars,
                static_kwargs={"dlatent_broadcast": 2 * log2 - 2, "label_size": 0},
                marker=marker,
            ),
        }
        dlatent_avg = np.zeros(len(mapping["dense0.bias"]), np.float32)
        own = [("lod", np.float32(0.0)), ("dlatent_avg", dlatent_avg)]
        return network(name, "G_style", own, components, kwargs, marker)

    d_vars = [("lod", np.float32(0.0)), ("FromRGB_lod0/weight", np.ones((1, 1, 3, 4), np.float32))]
    d = network("D", "D_basic", d_vars, static_kwargs=kwargs, marker=marker)
    return generator("G", g_offset), d, generator("Gs", 0.0)


@contextlib.contextmanager
def modules_holding(stand_ins: dict[tuple[str, str], object]):
    """Lets the pickler name each stand-in as the global `module.name`: registers fake
    modules in sys.modules for the duration, then restores what was there."""
    saved = {}
    try:
        for (module, name), obj in stand_ins.items():
            parts = module.split(".")
            for parent in (".".join(parts[:i]) for i in range(1, len(parts))):
                if parent not in sys.modules:  # importing a dotted name imports its parents
                    saved[parent] = None
                    sys.modules[parent] = types.ModuleType(parent)
            if module not in saved:
                saved[module] = sys.modules.get(module)
                sys.modules[module] = types.ModuleType(module)
            obj.__module__, obj.__qualname__ = module, name
            setattr(sys.modules[module], name, obj)
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                del sys.modules[module]
            else:
                sys.modules[module] = previous


def _reconstruct_stand_in(*args):
    raise AssertionError("only ever pickled by name")


def _scalar_stand_in(*args):
    raise AssertionError("only ever pickled by name")


# The numpy module this numpy's own pickles name (numpy._core.multiarray on numpy 2).
NATIVE_NUMPY = np.float32(0).__reduce__()[0].__module__


class _NumpyNamesPickler(pickle.Pickler):
    """Pickles numpy arrays and scalars through the stand-in reconstructors."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            _, args, state = obj.__reduce__()
            return _reconstruct_stand_in, args, state
        if isinstance(obj, np.generic):
            return _scalar_stand_in, obj.__reduce__()[1]
        return NotImplemented


class EasyDict(dict):
    """The writing side's `dnnlib.util.EasyDict`."""


def write_pickle(path, obj, numpy_module: str = NUMPY1) -> bytes:
    """Writes `obj` like NVIDIA's `misc.save_pkl` (protocol 4) with the given numpy names."""
    stand_ins = {
        ("dnnlib.tflib.network", "Network"): Network,
        ("dnnlib.util", "EasyDict"): EasyDict,
    }
    pickler = pickle.Pickler
    if numpy_module != NATIVE_NUMPY:  # never shadow the numpy module in use
        stand_ins[(numpy_module, "_reconstruct")] = _reconstruct_stand_in
        stand_ins[(numpy_module, "scalar")] = _scalar_stand_in
        pickler = _NumpyNamesPickler
    buffer = io.BytesIO()
    with modules_holding(stand_ins):
        pickler(buffer, protocol=4).dump(obj)
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def globals_named(data: bytes) -> set[str]:
    """The globals a pickle names, read without building anything it refers to."""
    found = set()

    class Anything(dict):
        """Accepts any call, construction and state, so that every global gets named."""

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add(f"{module}.{name}")
            return Anything

    with contextlib.suppress(Exception):
        Recorder(io.BytesIO(data)).load()
    return found


# --- fixtures -----------------------------------------------------------------------------


def make_case(
    tmp_path, resolution=128, fmap_base=128, fmap_max=16, numpy_module=NUMPY1, dlatent=DLATENT
):
    """Writes an official-structure pickle with `dlatent` wide styles; returns (path, bytes,
    syn, mapping, marker)."""
    rng = np.random.default_rng(resolution)
    syn, mapping = pulse_state_dicts(rng, resolution, fmap_base, fmap_max, dlatent)
    marker = tmp_path / "build_module_src_ran"
    path = tmp_path / f"stylegan-{resolution}.pkl"
    data = write_pickle(path, official_tuple(syn, mapping, resolution, rng, marker), numpy_module)
    return path, data, syn, mapping, marker


# --- NVIDIA TF StyleGAN2 pickles -----------------------------------------------------------


def tf_pickle_from_ada(state: dict, *, label_size: int = 0, marker=None, g_offset: float = 0.0):
    """legacy.py's rules run backwards: the ADA state -> the (G, D, Gs) TF pickle's networks."""

    def synthesis_variables(offset):
        vs = []

        def layer(ada, tf, noise_index, up):
            w = state[f"{ada}.weight"].transpose(2, 3, 1, 0)  # -> [k, k, in, out]
            vs.extend(
                [
                    (f"{tf}/weight", np.ascontiguousarray(w[::-1, ::-1] if up else w) + offset),
                    (f"{tf}/mod_weight", np.ascontiguousarray(state[f"{ada}.affine.weight"].T)),
                    (f"{tf}/mod_bias", state[f"{ada}.affine.bias"] - np.float32(1)),
                    (f"{tf}/noise_strength", np.float32(state[f"{ada}.noise_strength"])),
                    (f"{tf}/bias", state[f"{ada}.bias"]),
                ]
            )
            noises[noise_index] = state[f"{ada}.noise_const"][None, None]

        def torgb(ada, tf):
            vs.extend(
                [
                    (
                        f"{tf}/weight",
                        np.ascontiguousarray(state[f"{ada}.weight"].transpose(2, 3, 1, 0)),
                    ),
                    (f"{tf}/mod_weight", np.ascontiguousarray(state[f"{ada}.affine.weight"].T)),
                    (f"{tf}/mod_bias", state[f"{ada}.affine.bias"] - np.float32(1)),
                    (f"{tf}/bias", state[f"{ada}.bias"]),
                ]
            )

        noises = {}
        vs.append(("4x4/Const/const", state["synthesis.b4.const"][None]))
        layer("synthesis.b4.conv1", "4x4/Conv", 0, False)
        torgb("synthesis.b4.torgb", "4x4/ToRGB")
        for r in (8, 16, 32, 64):
            log2 = r.bit_length() - 1
            layer(f"synthesis.b{r}.conv0", f"{r}x{r}/Conv0_up", 2 * log2 - 5, True)
            layer(f"synthesis.b{r}.conv1", f"{r}x{r}/Conv1", 2 * log2 - 4, False)
            torgb(f"synthesis.b{r}.torgb", f"{r}x{r}/ToRGB")
        return [(f"noise{i}", noises[i]) for i in sorted(noises)] + vs

    mapping_variables = []
    for i in range(2):
        mapping_variables += [
            (f"Dense{i}/weight", np.ascontiguousarray(state[f"mapping.fc{i}.weight"].T)),
            (f"Dense{i}/bias", state[f"mapping.fc{i}.bias"]),
        ]
    kwargs = {
        "resolution": 64,
        "label_size": label_size,
        "mapping_layers": 2,
        "fmap_base": 512,
        "fmap_max": 64,
    }

    def generator(name, offset):
        components = {
            "synthesis": network(
                "G_synthesis", "G_synthesis_stylegan2", synthesis_variables(offset), marker=marker
            ),
            "mapping": network("G_mapping", "G_mapping", mapping_variables, marker=marker),
        }
        net = network(
            name, "G_main", [("dlatent_avg", state["mapping.w_avg"])], components, kwargs, marker
        )
        net._state["version"] = 4
        for component in components.values():
            component._state["version"] = 4
        return net

    d = network("D", "D_stylegan2", [("Output/bias", np.zeros(1, np.float32))], marker=marker)
    d._state["version"] = 4
    return generator("G", g_offset), d, generator("Gs", 0.0)
