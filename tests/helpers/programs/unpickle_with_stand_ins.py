"""Loads a StyleGAN2-ADA pickle with plain `pickle.load`, NVIDIA's modules replaced by
stand-ins whose `_reconstruct_persistent_obj` execs the pickle's module_src as
`torch_utils/persistence.py` does: what loading it the usual way would run
(tests/test_stylegan2_readers.py shows that the hostile pickles it writes are live).

    python tests/helpers/programs/unpickle_with_stand_ins.py FILE.pkl
"""

import pickle
import sys
import types


def _reconstruct_persistent_obj(meta):
    module = types.ModuleType("_imported_module_")
    exec(meta["module_src"], module.__dict__)
    obj = module.__dict__[meta["class_name"]]()
    obj.__dict__.update(meta["state"])
    return obj


def _rebuild_tensor_v2(*args):
    return args


def _rebuild_parameter(*args):
    return args


def _load_from_bytes(data):
    return data


class EasyDict(dict):
    pass


STAND_INS = {
    "torch_utils": {},
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "torch": {},
    "torch._utils": {
        "_rebuild_tensor_v2": _rebuild_tensor_v2,
        "_rebuild_parameter": _rebuild_parameter,
    },
    "torch.storage": {"_load_from_bytes": _load_from_bytes},
    "dnnlib": {},
    "dnnlib.util": {"EasyDict": EasyDict},
}

for name, members in STAND_INS.items():
    module = types.ModuleType(name)
    vars(module).update(members)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)

with open(sys.argv[1], "rb") as f:
    pickle.load(f)
